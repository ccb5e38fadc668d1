"""Every command's --help text, nested commands included, is written for a person: it renders, and
argparse's escapes (a doubled percent sign in a description, which argparse does not format) never
reach the page."""
from __future__ import annotations

import argparse

from extractor.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path=("trawl",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_help_text_renders_without_escapes():
    seen = 0
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, (" ".join(path), text)
        assert text.startswith("usage: "), " ".join(path)
        seen += 1
    assert seen >= 15   # trawl, its commands and the corpus/index sub-commands
