"""The ``harness`` command line. Each subcommand lives in its own ``harness/cmd_*.py`` module
exposing ``add_parser(subparsers)`` and ``run(args) -> int``.

User mistakes (:class:`HarnessError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness import __version__
from harness.errors import HarnessError
from harness.progress import quiet_transformers

# Subcommand modules, in the order ``--help`` lists them. A module that is not there yet is
# skipped, so the CLI works while the project grows.
COMMANDS = ("run", "eval", "score", "sweep", "leaderboard", "publish", "claims", "list", "data",
            "pretrain")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad flags already; keep its one-line message."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness",
        description="Benchmark harness for token-level credit assignment in RLVR.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"harness.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"harness.cmd_{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_transformers()
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print(f"harness {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"harness {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
