"""``python -m plugin <command>``: argument parsing and error reporting for all commands."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from plugin.commands import COMMANDS
from plugin.errors import PluginError

ENVIRONMENT_HELP = """\
environment:
  LABEL_STUDIO_URL      Label Studio's address, e.g. http://localhost:8080
  LABEL_STUDIO_API_KEY  a personal access token or a legacy token (Account & Settings)
"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command module."""
    parser = argparse.ArgumentParser(
        prog="python -m plugin",
        description="Set up Label Studio projects for the segmentation backend and export their annotations.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.DESCRIPTION,
            epilog=ENVIRONMENT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a `PluginError` is printed as ``error: ...`` with exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
