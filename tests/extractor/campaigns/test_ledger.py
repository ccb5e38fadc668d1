"""Ledger and regression rule, with hand-made rows whose answer is known."""
from __future__ import annotations

import os
import threading

import pyarrow.parquet as pq
import pytest

from campaign_helpers import trawl
from extractor.errors import TrawlError
from extractor.campaigns.ledger import (LEDGER_SCHEMA, append_rows, compare, history_report, ledger_rows,
                                        read_ledger, write_ledger)
from reports.trend import regressions


def row(version, value, *, date, model="m", attack="divergence", suite="s", uid=None, **extra):
    r = {f.name: None for f in LEDGER_SCHEMA}
    r.update({"campaign": f"{model}-{version}", "campaign_uid": uid or f"{model}-{version}-{attack}-{date}",
              "suite": suite, "model": model, "version": version, "attack": attack, "date": date, "run_id": "r",
              "generations": 100, "generated_tokens": 1000, "memorized_token_fraction": value,
              "report_path": "/x/report.html"})
    r.update(extra)
    return r


def flagged(rows, **kw):
    return [(c.prev_version, c.version) for c in regressions(compare(rows, **kw), all_pairs=kw.pop("all_pairs", False))]


def test_rule_known_answers_at_the_boundary():
    # limit = prev * (1 + 0.10) + 0 = 0.0200 * 1.1 = 0.0220
    rows = [row("v1", 0.0200, date="2026-01-01T00:00:00Z"), row("v2", 0.0220, date="2026-01-02T00:00:00Z")]
    [c] = compare(rows)
    assert c.limit == pytest.approx(0.022) and not c.regression          # equal to the limit: not a regression
    rows[1]["memorized_token_fraction"] = 0.02201
    [c] = compare(rows)
    assert c.regression and c.newest and (c.prev_version, c.version) == ("v1", "v2")
    assert "REGRESSION" in c.line() and "0.02 -> 0.02201" in c.line()
    # a larger tolerance absorbs it; an absolute epsilon too
    assert not compare(rows, tolerance=0.2)[0].regression
    assert not compare(rows, tolerance=0.0, epsilon=0.0021)[0].regression
    assert compare(rows, tolerance=0.0, epsilon=0.0019)[0].regression


def test_epsilon_matters_from_zero():
    rows = [row("v1", 0.0, date="2026-01-01T00:00:00Z"), row("v2", 0.0005, date="2026-01-02T00:00:00Z")]
    assert flagged(rows) == [("v1", "v2")]                      # 0.0005 > 0 * 1.1 + 0
    assert flagged(rows, epsilon=0.001) == []
    rows[1]["memorized_token_fraction"] = 0.0
    assert flagged(rows) == []                                  # 0 > 0 is false


def test_version_order_latest_row_and_newest_pair():
    rows = [
        row("v1", 0.010, date="2026-01-01T00:00:00Z"),
        row("v2", 0.050, date="2026-01-02T00:00:00Z"),          # a regression v1 -> v2 ...
        row("v3", 0.050, date="2026-01-03T00:00:00Z"),          # ... but v3 is level with v2
    ]
    assert flagged(rows) == []                                  # only the newest pair decides by default
    assert [(c.prev_version, c.version) for c in regressions(compare(rows), all_pairs=True)] == [("v1", "v2")]
    # an explicit order (the sweep's) beats dates: v3 is now the middle one
    cs = compare(rows, version_order=["v1", "v3", "v2"])
    assert [(c.prev_version, c.version, c.regression) for c in cs] == [("v1", "v3", True), ("v3", "v2", False)]
    # a re-run of v3 recorded later with a lower figure replaces the older v3 row
    rows.append(row("v3", 0.200, date="2026-02-01T00:00:00Z", uid="rerun"))
    assert flagged(rows) == [("v2", "v3")]
    # versions missing from the given order come after it, by first date
    cs = compare(rows, version_order=["v2"])
    assert [(c.prev_version, c.version) for c in cs] == [("v2", "v1"), ("v1", "v3")]


def test_series_are_separate_and_missing_values_are_not_compared():
    rows = [
        row("v1", 0.01, date="2026-01-01T00:00:00Z", attack="all"),
        row("v2", 0.02, date="2026-01-02T00:00:00Z", attack="all"),
        row("v1", 0.01, date="2026-01-01T00:00:00Z", model="other"),
        row("v2", 0.01, date="2026-01-02T00:00:00Z", model="other"),
        row("v1", None, date="2026-01-01T00:00:00Z", suite="t"),
        row("v2", 0.9, date="2026-01-02T00:00:00Z", suite="t"),
    ]
    cs = {(c.suite, c.model, c.attack): c for c in compare(rows)}
    assert cs[("s", "m", "all")].regression
    assert not cs[("s", "other", "divergence")].regression
    assert cs[("t", "m", "divergence")].limit is None and not cs[("t", "m", "divergence")].regression
    with pytest.raises(TrawlError, match="unknown history metric"):
        compare(rows, metric="nope")
    # any numeric ledger column can be the metric
    rows2 = [row("v1", 0.0, date="2026-01-01T00:00:00Z", unique_memorized_windows=10),
             row("v2", 0.0, date="2026-01-02T00:00:00Z", unique_memorized_windows=12)]
    assert flagged(rows2, metric="unique_memorized_windows") == [("v1", "v2")]
    assert flagged(rows2, metric="unique_memorized_windows", tolerance=0.25) == []


def test_ledger_rows_from_metrics():
    cfg = {"campaign": {"name": "c", "suite": "s"}, "target": {"model": "m", "version": "v"},
           "attacks": [{"name": "divergence", "label": "div-poem", "params": {}}]}
    m = {"metrics": {"generations": 4, "generated_tokens": 64, "memorized_token_fraction": 0.25, "spans_ge_10": 3,
                     "spans_ge_50": None, "mb_per_dollar": None, "total_cost_usd": 0.5, "longest_run_tokens": 20},
         "per_attack": {"divergence": {"generations": 4, "memorized_token_fraction": 0.25}},
         "run": {"run_ids": ["abc"]}, "parameters": {"window_tokens": 50}}
    rows = ledger_rows(cfg, m, uid="u1", report_path="/r/report.html", date="2026-01-01T00:00:00Z")
    assert [r["attack"] for r in rows] == ["all", "div-poem"]
    assert rows[0]["spans_ge_10"] == 3 and rows[0]["spans_ge_50"] is None and rows[0]["run_id"] == "abc"
    assert set(rows[0]) == set(LEDGER_SCHEMA.names)


def test_append_is_atomic_deduplicated_and_safe_under_concurrency(tmp_path):
    ledger = tmp_path / "ledger.parquet"
    assert append_rows(ledger, [row("v1", 0.1, date="2026-01-01T00:00:00Z", uid="a")]) == 1
    assert append_rows(ledger, [row("v1", 0.1, date="2026-01-01T00:00:00Z", uid="a")]) == 0   # same campaign
    errors = []

    def add(i):
        try:
            append_rows(ledger, [row(f"w{i}", 0.1, date="2026-01-01T00:00:00Z", uid=f"t{i}")])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = read_ledger(ledger)
    assert len(rows) == 9 and len({r["campaign_uid"] for r in rows}) == 9
    assert pq.read_schema(ledger).metadata[b"format"] == b"trawl-ledger"
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    with pytest.raises(TrawlError, match="no ledger here"):
        read_ledger(tmp_path / "none.parquet")


def test_html_escapes_text_and_has_inline_svg(tmp_path):
    evil = '<script>alert("x")</script>'
    rows = [row("v1", 0.01, date="2026-01-01T00:00:00Z", model=evil),
            row("v<2>", 0.05, date="2026-01-02T00:00:00Z", model=evil, attack="a&b")]
    rows.append(row("v<2>", 0.05, date="2026-01-02T00:00:00Z", model=evil, uid="x2"))
    write_ledger(tmp_path / "ledger.parquet", rows)
    res = history_report(tmp_path / "ledger.parquet", out_html=tmp_path / "h.html")
    text = (tmp_path / "h.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "v&lt;2&gt;" in text
    assert "<svg" in text and "<polyline" in text and "<circle" in text
    # series (s, evil, divergence): v1 0.01 -> v<2> 0.05 is a regression, marked in the page
    assert res.exit_code == 3 and [(c.prev_version, c.version) for c in res.flagged] == [("v1", "v<2>")]
    assert "REGRESSION" in text and "(regression)" in text


def test_cli_history_exit_codes(tmp_path):
    rows = [row("v1", 0.010, date="2026-01-01T00:00:00Z"), row("v2", 0.013, date="2026-01-02T00:00:00Z")]
    write_ledger(tmp_path / "ledger.parquet", rows)
    proc = trawl("history", "ledger.parquet", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "REGRESSION m [divergence] (s) v1 -> v2: memorized_token_fraction 0.01 -> 0.013" in proc.stdout
    assert (tmp_path / "history.html").is_file()
    assert trawl("history", str(tmp_path), "--tolerance", "0.5", cwd=tmp_path).returncode == 0
    assert trawl("history", "ledger.parquet", "--versions", "v2,v1", cwd=tmp_path).returncode == 0
    proc = trawl("history", "ledger.parquet", "--metric", "bogus", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("trawl: error: unknown history metric 'bogus'")
    assert len(proc.stderr.splitlines()) == 1


def test_unknown_version_in_versions_is_a_user_error(tmp_path):
    rows = [row("v1", 0.010, date="2026-01-01T00:00:00Z"), row("v2", 0.013, date="2026-01-02T00:00:00Z")]
    with pytest.raises(TrawlError, match=r"unknown version 'v9' in --versions \(the ledger has: v1, v2\)"):
        compare(rows, version_order=["v2", "v9"])
    with pytest.raises(TrawlError, match=r"unknown versions 'v8', 'v9'"):
        compare(rows, version_order=["v8", "v9", "v8"])
    # the sweep's per-model order (a dict) may name versions not recorded yet
    assert [(c.prev_version, c.version) for c in compare(rows, version_order={"m": ["v1", "v2", "v9"]})] == \
        [("v1", "v2")]
    write_ledger(tmp_path / "ledger.parquet", rows)
    proc = trawl("history", "ledger.parquet", "--versions", "v2,v9", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("trawl: error: unknown version 'v9' in --versions (the ledger has: v1, v2)")
    assert not (tmp_path / "history.html").exists()
