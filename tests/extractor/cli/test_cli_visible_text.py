"""Issue 17, item 3: untrusted text (a server's error, a corpus's sources, JSONL field names, ledger
model names, memorized text) reaches a terminal or a page with every control and format character
(Unicode Cc, Cf, Zl, Zp) made visible: no raw ESC sequence, bidi control, U+061C, U+2028/2029 or tag
character (U+E0000-E007F) in what trawl prints or writes."""
from __future__ import annotations

import json
import re
import sys
import unicodedata

import pytest

from corpora.hygiene import visible
from repo import one_line_error, trawl

HOSTILE = "a\x1b[2J\x1b]0;owned\x07b\u202eevil\u202c\u061c\u2028\u2029\U000e0041\U000e007f\u200b\x85\ufeffz"


def raw_invisible(s: str) -> list[str]:
    """The Cc/Cf/Zl/Zp characters of ``s`` other than tab, newline (and CR, for text files)."""
    return [f"U+{ord(c):04X}" for c in s
            if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in "\t\n\r"]


def test_visible_escapes_every_control_and_format_character():
    cats = ("Cc", "Cf", "Zl", "Zp")
    every = "".join(chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) in cats)
    assert len(every) > 200
    out = visible(every)
    assert raw_invisible(out) == [] and "\n" not in out and "\t" not in out
    assert visible(HOSTILE) == ("a\\x1b[2J\\x1b]0;owned\\x07b\\u202eevil\\u202c\\u061c\\u2028\\u2029"
                                "\\U000e0041\\U000e007f\\u200b\\x85\\ufeffz")
    assert visible("ok é 漢字 😀\tx\ny", keep="\t\n") == "ok é 漢字 😀\tx\ny"
    assert visible(None) == ""


def test_error_line_shows_control_characters_escaped(tmp_path, capsys):
    from extractor.cli import main

    rc = main(["run", str(tmp_path / f"{HOSTILE}\nsecond line.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("trawl: error: ") and err.count("\n") == 1, err
    assert raw_invisible(err) == [] and "\\x1b[2J" in err and "\\u2028" in err


def test_ingest_error_naming_a_hostile_field_is_one_visible_line(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({f"body{HOSTILE}": "hello world"}) + "\n", encoding="utf-8")
    r = trawl("corpus", "ingest", str(src), "-o", str(tmp_path / "c"), "-q")
    one_line_error(r, "no field 'text'")
    assert raw_invisible(r.stderr) == [], r.stderr


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory):
    from corpora.ingest import ingest_records
    from corpora.readers import Record
    from suffix_index import build_index

    d = tmp_path_factory.mktemp("hostile-index")
    ingest_records([Record(source=f"evil{HOSTILE}.txt", text="the quick brown fox jumps", metadata={})],
                   d / "corpus")
    build_index(d / "corpus", d / "index")
    return d / "index"


def test_index_find_shows_sources_escaped(hostile_index):
    r = trawl("index", "find", str(hostile_index), "quick brown")
    assert r.returncode == 0, r.stderr
    assert "evil" in r.stdout and raw_invisible(r.stdout) == [], r.stdout
    assert "\\x1b[2J" in r.stdout


def test_history_page_and_lines_show_model_names_escaped(tmp_path):
    from extractor.campaigns.ledger import LEDGER_SCHEMA, write_ledger

    def row(version, value, date):
        r = {f.name: None for f in LEDGER_SCHEMA}
        r.update({"campaign": "c", "campaign_uid": f"u-{version}", "suite": f"s{HOSTILE}", "model": f"m{HOSTILE}",
                  "version": version, "attack": f"divergence{HOSTILE}", "date": date, "run_id": "r",
                  "generations": 100, "generated_tokens": 1000, "memorized_token_fraction": value,
                  "report_path": f"/x/{HOSTILE}/report.html"})
        return r

    write_ledger(tmp_path / "ledger.parquet", [row("v1", 0.01, "2026-01-01T00:00:00Z"),
                                               row(f"v2{HOSTILE}", 0.02, "2026-01-02T00:00:00Z")])
    r = trawl("history", str(tmp_path / "ledger.parquet"))
    assert r.returncode == 3, r.stderr
    assert "REGRESSION" in r.stdout and raw_invisible(r.stdout + r.stderr) == [], r.stdout
    page = (tmp_path / "history.html").read_text(encoding="utf-8")
    assert raw_invisible(page) == [], sorted(set(raw_invisible(page)))
    assert "\\u202e" in page


def test_reports_show_format_characters_escaped(tmp_path):
    from reports import write_report
    from synthetic_runs import Corpus, Gen, write_run

    text = " ".join(f"w{i}" for i in range(30)) + f" {HOSTILE} " + " ".join(f"v{i}" for i in range(40))
    toks = re.findall(r"\s*\S+|\s+", text)
    write_run(str(tmp_path / "run"), Corpus([text], sources=[f"src{HOSTILE}"]),
              [Gen([" q1", " q2"] + toks + [" q3"], "divergence", f"poem{HOSTILE}")], min_tokens=10)
    paths = write_report(str(tmp_path / "run"), out_dir=str(tmp_path / "rep"))
    for p in (paths.html, paths.md):
        body = open(p, encoding="utf-8").read()
        assert "w29" in body and raw_invisible(body) == [], (p, sorted(set(raw_invisible(body))))
        assert "\\u2028" in body and "\\U000e0041" in body and "\\u061c" in body, p
