"""What every subcommand's parser shares: the help layout and the options that mean the same everywhere."""

from __future__ import annotations

import argparse


def command_parser(subparsers, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its module docstring as written (paragraphs and lists kept)."""
    return subparsers.add_parser(
        name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
