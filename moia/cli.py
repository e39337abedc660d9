"""The ``moia`` command line: ``python -m moia --help`` or ``moia --help``.

Each subcommand lives beside the code it drives; this module only wires them together.
"""

import argparse
import importlib
import sys

# modules with ``add_parser(subparsers)``; the parser's ``func`` runs the subcommand
SUBCOMMANDS = ["moia.cli_reproduce", "moia.demo", "moia.cli_directions", "moia.cli_train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moia",
        description="Mechanistic interventions for TransformerLens; reproduces 'Mechanisms of "
        "Introspective Awareness' (Macar et al. 2026).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
