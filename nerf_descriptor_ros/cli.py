"""`nerf-descriptor`: the command-line entry point; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NerfDescriptorError as exc:  # the user's to fix: one line, no traceback
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
