"""argparse's prefix abbreviations are off on every parser and subparser of `trawl`: a mistyped or
future flag is an error (exit 2), never silently another flag (`--api chat` was `--api-key-env chat` before
`--api` existed)."""
from __future__ import annotations

import argparse

import pytest

from extractor.cli import build_parser

# (command line, the abbreviated flag): each abbreviation is a unique prefix of a real flag
ABBREVIATED = [
    (["sample", "--endpoint", "http://x", "--model", "m", "--out", "o", "--api-key", "K"], "--api-key"),
    (["sample", "--endpoint", "http://x", "--model", "m", "--out", "o", "--max-gen", "5"], "--max-gen"),
    (["sample", "--endpoint", "http://x", "--mod", "m", "--out", "o"], "--mod"),
    (["sample", "--endpoint", "http://x", "--model", "m", "--out", "o", "--token-i", "auto"], "--token-i"),
    (["run", "c.toml", "--che"], "--che"),
    (["run", "c.toml", "--rer"], "--rer"),
    (["sweep", "s.toml", "--on", "x"], "--on"),
    (["sweep", "s.toml", "--li"], "--li"),
    (["history", "l.parquet", "--tol", "0.1"], "--tol"),
    (["history", "l.parquet", "--all"], "--all"),
    (["report", "RUN", "--red"], "--red"),
    (["report", "RUN", "--fail", "x > 1"], "--fail"),
    (["report", "RUN", "--window", "10"], "--window"),
    (["corpus", "ingest", "a.jsonl", "-o", "c", "--text", "body"], "--text"),
    (["corpus", "ingest", "a.jsonl", "-o", "c", "--keep"], "--keep"),
    (["corpus", "builtin", "-o", "c", "--max", "1MB"], "--max"),
    (["index", "build", "c", "-o", "i", "--fs"], "--fs"),
    (["index", "verify", "i", "--qui"], "--qui"),
    (["index", "find", "i", "text", "--lim", "3"], "--lim"),
    (["match", "run", "--ind", "i"], "--ind"),
    (["match", "run", "--index", "i", "--min-t", "5"], "--min-t"),
    (["demo", "--min", "1"], "--min"),
    (["serve", "m.gguf", "--startup", "5"], "--startup"),
    (["serve", "m.gguf", "--max-model", "5"], "--max-model"),
]


@pytest.mark.parametrize("argv,flag", ABBREVIATED, ids=[" ".join(a[:1] + [f]) for a, f in ABBREVIATED])
def test_abbreviated_flag_is_an_error(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_full_flags_still_parse():
    a = build_parser().parse_args(["sample", "--endpoint", "http://x", "--model", "m", "--out", "o",
                                   "--api-key-env", "chat", "--max-generations", "5"])
    assert a.api_key_env == "chat" and a.max_generations == 5 and a.api == "completions"
    a = build_parser().parse_args(["sample", "--endpoint", "http://x", "--model", "m", "--out", "o", "--api", "chat"])
    assert a.api == "chat" and a.api_key_env == "OPENAI_API_KEY"
    assert build_parser().parse_args(["history", "l.parquet", "--tolerance", "0.2"]).tolerance == 0.2


def _parsers(p: argparse.ArgumentParser):
    yield p
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for sub in act.choices.values():
                yield from _parsers(sub)


def test_every_parser_has_abbreviations_off():
    ps = list(_parsers(build_parser()))
    assert len(ps) > 15
    assert [p.prog for p in ps if p.allow_abbrev] == []


def test_reports_standalone_parser_has_abbreviations_off(capsys):
    from reports.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", "RUN", "--red"])
    assert e.value.code == 2
