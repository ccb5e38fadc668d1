"""The `trawl` console command (``trawl = "extractor.cli:main"``; ``python -m extractor.cli``).

Each command is defined by a module with a ``register(subparsers)`` function: the
extractor's in this package, named after the commands they define (``demo``,
``sample``, ``attacks``, ``run``, ``sweep``, ``history``, ``serve``), the other
packages' in their own ``cli`` module (``corpus``, ``index``, ``report``). This
module only wires them together and turns user errors (see :mod:`extractor.errors`)
into one clear line on stderr and a non-zero exit code (never a traceback).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from corpora.hygiene import visible
from extractor.errors import is_user_error

# Packages whose cli module provides register(subparsers). Order = order in --help.
_COMMAND_MODULES = [
    "extractor.cli.demo",
    "corpora.cli",
    "suffix_index.cli",
    "extractor.cli.sample",
    "extractor.cli.attacks",
    "extractor.cli.run",
    "extractor.cli.sweep",
    "extractor.cli.history",
    "extractor.cli.serve",
    "reports.cli",
]


class TrawlParser(argparse.ArgumentParser):
    """argparse without prefix abbreviations (``--api`` is not ``--api-key-env``): a mistyped or
    future flag is an error, never another flag. Subcommand parsers (``add_subparsers`` makes
    them of the parent's class) inherit it, at every level."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.set_defaults(_usage_prog=self.prog)   # the deepest (sub)command parsed sets it last

    def parse_args(self, args=None, namespace=None):
        """As argparse's, with leftover arguments blamed on the subcommand that was parsed
        (``see trawl sample --help``, not the top level's help)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            usage_error(getattr(ns, "_usage_prog", self.prog), "unrecognized arguments: " + " ".join(extras))
        return ns

    def error(self, message):
        """Every usage error is one line, ``trawl: error: ...`` (exit 2), on every parser and
        subparser: no usage block (``--help`` shows it). argparse quotes what the user typed, so
        the message is shown without raw control characters."""
        usage_error(self.prog, message)


def usage_error(prog: str, message: str):
    """Print a usage error as the one line every trawl error is and exit 2 (what argparse's
    ``error`` does, without the usage block). ``prog`` (``trawl sample``) names the command."""
    where = prog[len("trawl"):].strip() if prog.startswith("trawl") else prog
    hint = f" (see trawl {where} --help)" if where else " (see trawl --help)"
    sys.stderr.write(f"trawl: error: {visible(message)}{hint}\n")
    sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = TrawlParser(
        prog="trawl",
        description=(
            "Audit a language model for memorized training data: drive it with extraction "
            "attacks, find verbatim copies of a reference corpus in what it says, and report "
            "how much training data an outsider can extract per dollar."
        ),
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part not built yet must not break the rest
            if exc.name == name:
                continue
            raise
        mod.register(sub)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: looks the installed version up only when asked (importlib.metadata costs
    more start-up time than the rest of ``trawl --help``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(message=_version() + "\n")


def _version() -> str:
    try:
        from importlib.metadata import version

        return "trawl " + version("trawl")
    except Exception:
        return "trawl (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except Exception as exc:
        if not is_user_error(exc):
            from corpora.storage import NO_ROOM, os_errno, write_error   # here: --help stays free of pyarrow
            if isinstance(exc, OSError) and os_errno(exc) in NO_ROOM:
                # a write that no writer named (each of trawl's writers raises a WriteError naming its
                # file): still the one line of a full disk, never a traceback
                exc = write_error(exc.filename or "a file", exc)
            else:
                raise
        # one line, whatever the message carries (a server's or a file's text): control and format
        # characters, newlines included, are shown as escapes and never reach the terminal raw
        print(f"trawl: error: {visible(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("trawl: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    return int(rc or 0)
