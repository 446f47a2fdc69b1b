"""`nerf-descriptor`: the command-line entry point; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from nerf_descriptor_ros.errors import NerfDescriptorError

# Modules under nerf_descriptor_ros.commands, each exposing register(subparsers).
COMMANDS = [
    "demo",
    "train_nerf",
    "train_descriptors",
    "evaluate",
    "poses",
    "convert",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerf-descriptor",
        description="Capture, NeRF training, descriptor training and evaluation for nerf_descriptor_ros.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"nerf_descriptor_ros.commands.{name}").register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same ``with`` blocks end the node processes a
    command started in their own process groups, which a signal to this process never reaches."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # handlers are set from there only
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except NerfDescriptorError as exc:  # the user's to fix: one line, no traceback
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread and previous is not None:  # None: a handler not set from Python
            signal.signal(signal.SIGTERM, previous)
