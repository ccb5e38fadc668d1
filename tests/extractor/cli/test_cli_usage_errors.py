"""Every usage error of every parser and subparser is the single line ``trawl: error: ...`` (exit 2),
never argparse's usage block followed by the error (issue 17)."""
from __future__ import annotations

import argparse

import pytest

from extractor.cli import build_parser
from repo import trawl


def _parsers(p: argparse.ArgumentParser, path=()):
    yield path, p
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sub in act.choices.items():
                yield from _parsers(sub, path + (name,))


def _one_line(err: str) -> None:
    assert err.startswith("trawl: error: ") and err.count("\n") == 1, err
    assert "usage:" not in err and "Traceback" not in err, err


def test_an_unknown_flag_on_every_parser_is_one_line(capsys):
    seen = 0
    for path, _ in _parsers(build_parser()):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*path, "--no-such-flag-17"])
        assert e.value.code == 2, path
        err = capsys.readouterr().err
        _one_line(err)
        seen += 1
    assert seen > 15


@pytest.mark.parametrize("argv,message", [
    ([], "COMMAND"),
    (["index"], "SUBCOMMAND"),
    (["corpus"], "SUBCOMMAND"),
    (["no-such-command"], "invalid choice"),
    (["index", "count", "i"], "TEXT"),
    (["index", "find", "i", "t", "--limit", "abc"], "--limit"),
    (["sample", "--endpoint", "http://x", "--model", "m"], "--out"),
    (["report"], "RUN"),
    (["history", "l.parquet", "--tolerance", "\x1b[31mred"], "\\x1b"),
    (["sample", "--endpoint", "http://x", "--model", "m", "--out", "o", "--flush-rows", "3"],
     "unrecognized arguments: --flush-rows 3 (see trawl sample --help)"),
    (["index", "count", "i", "t", "--zz"], "(see trawl index count --help)"),
])
def test_usage_errors_through_the_real_cli(argv, message):
    r = trawl(*argv)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    _one_line(r.stderr)
    assert message in r.stderr and "\x1b" not in r.stderr
    assert r.stdout == ""


def test_the_reports_standalone_parser_too(capsys):
    from reports.cli import main

    for argv in (["report", "RUN", "--red"], [], ["report"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        _one_line(capsys.readouterr().err)
