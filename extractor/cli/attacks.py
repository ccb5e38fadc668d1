"""``trawl attacks [NAME]``: list the extraction attacks, their parameters and defaults.

Registered by :mod:`extractor.cli` through :func:`register`.
"""
from __future__ import annotations

import importlib
import json
import textwrap


def register(subparsers) -> None:
    q = subparsers.add_parser("attacks", help="list the extraction attacks, their parameters and defaults",
                              description="List the extraction attacks with their parameters and literature "
                                          "defaults; name one for its full description.")
    q.add_argument("name", nargs="?", help="show one attack in detail")
    q.set_defaults(func=cmd_attacks)


def describe_attack(name: str) -> str:
    from extractor.attacks import get_attack

    cls = get_attack(name)
    lines = [f"{cls.name}: {cls.summary}", f"  reference: {cls.reference}", "  parameters:"]
    for prm in cls.all_params():
        default = prm.default
        if prm.kind == "list" and isinstance(default, list) and len(default) > 8:
            shown = ",".join(repr(x)[1:-1] for x in default[:8]) + f",... ({len(default)} entries)"
        else:
            shown = json.dumps(default, ensure_ascii=False) if not isinstance(default, str) else repr(default)
        lines.append(f"    {prm.name} ({prm.kind}, default {shown})")
        lines.extend(textwrap.wrap(prm.help, 88, initial_indent="        ", subsequent_indent="        "))
    return "\n".join(lines)


def cmd_attacks(args) -> int:
    from extractor.attacks import ATTACKS

    if args.name:
        print(describe_attack(args.name))
        doc = importlib.import_module(ATTACKS[args.name].__module__).__doc__ or ""
        print("\n" + doc.strip())
        return 0
    for name in ATTACKS:
        print(describe_attack(name))
        print()
    return 0
