"""The base of every error that is the user's to fix (bad input, missing files, refused requests).

The command line prints these as one clear line instead of a traceback; anything else is a bug.
"""


class NerfDescriptorError(Exception):
    """An error whose message tells the user what is wrong and what to do."""
