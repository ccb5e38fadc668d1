"""Ledger format 2 (issue 14): the ranking figures of `trawl rank` in the ledger. A version-1 ledger
(written here with the old schema, column by column) is read, and the next append writes it back as
version 2 with both rows and the right figures; a later or unknown version is one line; `trawl
history` compares and plots `ranking_best_auc`."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from campaign_helpers import trawl
from extractor.campaigns.ledger import LEDGER_SCHEMA, append_rows, ledger_rows, read_ledger, write_ledger
from extractor.errors import TrawlError
from test_ledger import row

# The version-1 schema exactly as trawl wrote it before the ranking figures (no code imported for it).
V1_SCHEMA = pa.schema(
    [(n, pa.string()) for n in ("campaign", "campaign_uid", "suite", "model", "version", "attack", "date", "run_id")]
    + [("generations", pa.int64()), ("generated_tokens", pa.int64()), ("memorized_token_fraction", pa.float64()),
       ("memorized_generation_fraction", pa.float64()), ("unique_memorized_windows", pa.int64())]
    + [(f"spans_ge_{t}", pa.int64()) for t in (10, 20, 30, 40, 50)]
    + [("longest_run_tokens", pa.int64()), ("total_cost_usd", pa.float64()), ("mb_per_dollar", pa.float64()),
       ("window_tokens", pa.int64()), ("report_path", pa.string())])
RANKING = ("ranking_best_auc", "ranking_best_precision_at_10", "ranking_best_precision_at_100",
           "ranking_best_precision_at_1000")


def write_v1(path, meta=None):
    old = {"campaign": "m-v1", "campaign_uid": "old-1", "suite": "s", "model": "m", "version": "v1",
           "attack": "all", "date": "2026-01-01T00:00:00Z", "run_id": "r0", "generations": 100,
           "generated_tokens": 1000, "memorized_token_fraction": 0.02, "spans_ge_10": 4, "longest_run_tokens": 61,
           "total_cost_usd": 1.5, "window_tokens": 50, "report_path": "/a/report.html"}
    t = pa.table({f.name: pa.array([old.get(f.name)], type=f.type) for f in V1_SCHEMA}, schema=V1_SCHEMA)
    pq.write_table(t.replace_schema_metadata(meta if meta is not None else
                                             {"format": "trawl-ledger", "format_version": "1"}), path)
    return old


def test_spans_thresholds_of_the_v1_schema_are_the_code_s():
    # the literal V1 schema above is the current one minus the ranking columns (if the thresholds moved,
    # this test's version-1 file would not be one trawl wrote)
    assert [f for f in LEDGER_SCHEMA if f.name not in RANKING] == list(V1_SCHEMA)


def test_version_1_ledger_is_read_then_migrated_by_the_next_append(tmp_path):
    ledger = tmp_path / "ledger.parquet"
    old = write_v1(ledger)
    [r] = read_ledger(ledger)
    assert all(r[k] is None for k in RANKING) and r["memorized_token_fraction"] == 0.02 and r["spans_ge_10"] == 4
    cfg = {"campaign": {"name": "c", "suite": "s"}, "target": {"model": "m", "version": "v2"},
           "attacks": [{"name": "divergence", "label": "div", "params": {}}]}
    ranking = {"rankings": {                      # metrics.json's ranking section (two rankings)
        "perplexity": {"auc": 0.71, "precision_at": {"10": 0.6, "100": 0.25, "1000": None}},
        "min_k": {"auc": 0.83, "precision_at": {"10": 0.4, "100": 0.31, "1000": None}},
        "zlib": {"auc": None, "precision_at": {"10": None, "100": None, "1000": None}}}}
    metrics = {"metrics": {"generations": 300, "memorized_token_fraction": 0.03, "ranking_best_auc": 0.83},
               "per_attack": {"divergence": {"generations": 300, "memorized_token_fraction": 0.03}},
               "run": {"run_ids": ["r1"]}, "parameters": {"window_tokens": 50}, "ranking": ranking}
    rows = ledger_rows(cfg, metrics, uid="new-1", report_path="/b/report.html", date="2026-01-02T00:00:00Z")
    assert append_rows(ledger, rows) == 2
    meta = pq.read_schema(ledger).metadata
    assert meta[b"format_version"] == b"2" and set(RANKING) <= set(pq.read_schema(ledger).names)
    got = read_ledger(ledger)
    assert [(r["campaign_uid"], r["attack"]) for r in got] == [("old-1", "all"), ("new-1", "all"), ("new-1", "div")]
    first = got[0]
    assert {k: first[k] for k in old} == old and all(first[k] is None for k in RANKING)
    new_all, new_div = got[1], got[2]
    assert (new_all["ranking_best_auc"], new_all["ranking_best_precision_at_10"],
            new_all["ranking_best_precision_at_100"], new_all["ranking_best_precision_at_1000"]) == (0.83, 0.6, 0.31, None)
    assert all(new_div[k] is None for k in RANKING)          # a ranking is run-wide: the "all" row only
    assert new_all["memorized_token_fraction"] == 0.03


@pytest.mark.parametrize("meta, message", [
    ({"format": "trawl-ledger", "format_version": "3"}, "ledger format version 3 was written by a newer trawl"),
    ({"format": "trawl-ledger", "format_version": "two"}, "unknown ledger format version 'two'"),
    ({"format": "trawl-ledger", "format_version": "0"}, "unknown ledger format version '0'"),
    ({"format": "trawl-ledger"}, "unknown ledger format version ''"),
    ({"format": "other", "format_version": "1"}, "not a trawl ledger (format 'other')"),
])
def test_later_or_unknown_versions_are_refused_in_one_line(tmp_path, meta, message):
    ledger = tmp_path / "ledger.parquet"
    write_v1(ledger, meta)
    before = ledger.read_bytes()
    with pytest.raises(TrawlError) as exc:
        read_ledger(ledger)
    assert message in str(exc.value) and str(ledger) in str(exc.value)
    with pytest.raises(TrawlError):
        append_rows(ledger, [row("v2", 0.1, date="2026-01-03T00:00:00Z", uid="z")])
    assert ledger.read_bytes() == before                         # the refused ledger is left as it was
    if meta.get("format_version") == "3":
        proc = trawl("history", str(ledger), cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_a_version_2_ledger_missing_a_ranking_column_is_not_a_ledger(tmp_path):
    ledger = tmp_path / "ledger.parquet"
    write_ledger(ledger, [row("v1", 0.1, date="2026-01-01T00:00:00Z")])
    t = pq.read_table(ledger)
    pq.write_table(t.drop(["ranking_best_auc"]), ledger)       # its metadata still says version 2
    with pytest.raises(TrawlError, match="no column 'ranking_best_auc'"):
        read_ledger(ledger)


def test_history_compares_and_plots_the_ranking_figures(tmp_path):
    rows = [row("v1", 0.01, date="2026-01-01T00:00:00Z", attack="all", ranking_best_auc=0.60),
            row("v2", 0.01, date="2026-01-02T00:00:00Z", attack="all", ranking_best_auc=0.80)]
    write_ledger(tmp_path / "ledger.parquet", rows)
    proc = trawl("history", "ledger.parquet", "--metric", "ranking_best_auc", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr                 # 0.80 > 0.60 * 1.1
    assert "v1 -> v2: ranking_best_auc 0.6 -> 0.8" in proc.stdout
    html = (tmp_path / "history.html").read_text()
    assert "ranking_best_auc by version" in html and "best ranking AUC" in html
    assert trawl("history", "ledger.parquet", "--metric", "ranking_best_auc", "--tolerance", "0.5",
                 cwd=tmp_path).returncode == 0
    # a ledger with no ranking figure: no empty ranking chart
    write_ledger(tmp_path / "ledger.parquet", [row("v1", 0.01, date="2026-01-01T00:00:00Z"),
                                               row("v2", 0.01, date="2026-01-02T00:00:00Z")])
    assert trawl("history", "ledger.parquet", cwd=tmp_path).returncode == 0
    assert "ranking_best_auc by version" not in (tmp_path / "history.html").read_text()
