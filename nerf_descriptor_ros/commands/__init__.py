"""Subcommands of `nerf-descriptor` (see cli.py)."""
