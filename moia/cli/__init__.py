"""The ``moia`` command line: ``python -m moia --help`` or ``moia --help``.

Each subcommand is a module here with ``add_parser(subparsers)``; this module wires them together
and owns the one error path: a user error (a bad argument, a missing or unwritable file, a full
disk, an unreachable judge) ends with one line on stderr and exit status 2; anything else is a bug
and keeps its traceback. ``MOIA_DEBUG=1`` shows tracebacks for user errors too.
"""

import argparse
import errno
import importlib
import os
import sys

from ..eval.judge import JudgeError

SUBCOMMANDS = ["reproduce", "demo", "directions", "train", "emotions", "moodring", "patch"]
USER_ERRNOS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EFBIG,  # a file-size limit (ulimit -f) or a full quota
    errno.EDQUOT,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moia",
        description="Mechanistic interventions for TransformerLens; reproduces 'Mechanisms of "
        "Introspective Awareness' (Macar et al. 2026).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def is_user_error(error: BaseException) -> bool:
    """Errors a user causes and can fix from the message alone."""
    if isinstance(error, (ValueError, JudgeError, FileNotFoundError)):
        return True
    return isinstance(error, OSError) and error.errno in USER_ERRNOS


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if not is_user_error(e) or os.environ.get("MOIA_DEBUG") == "1":
            raise
        print(f"moia {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
