"""The ``moia`` command line: ``python -m moia --help`` or ``moia --help``.

Each subcommand lives beside the code it drives; this module only wires them together.
"""

import argparse
import importlib
import sys

# subcommand -> module with ``add_parser(subparsers)``; the parser's ``func`` runs it
SUBCOMMANDS = {
    "demo": "moia.demo",
    "directions": "moia.cli_directions",
    "reproduce": "moia.cli_reproduce",
    "train-bias": "moia.cli_train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moia",
        description="Mechanistic interventions for TransformerLens; reproduces 'Mechanisms of "
        "Introspective Awareness' (Macar et al. 2026).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # not built yet
        mod.add_parser(sub)
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
