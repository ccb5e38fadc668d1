"""`trawl demo` end to end: real corpus, real suffix array, real model server, real report.

Runs the installed console command in a subprocess, exactly as a user would,
with a short budget, then checks the outputs against independent computations:
every reported verbatim span is searched for with plain Python in the corpus
documents, and the report's counts are recounted from the Parquet files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from repo import ROOT

pytestmark = pytest.mark.slow


def _trawl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "extractor.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = _trawl("demo", "--out", str(out), "--minutes", "0.75", "--corpus-mb", "4", cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_prints_report_paths_that_exist(demo):
    out, proc = demo
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    html = Path(next(l.split("report:", 1)[1].strip() for l in lines if l.startswith("report:")))
    assert html.is_file() and html.suffix == ".html"
    assert html.parent == out / "run" / "report"
    for name in ("report.md",):
        assert (html.parent / name).is_file()
    text = html.read_text()
    assert "<script>" not in text.lower().replace("<script>//", "")  # no script needed to read it
    assert "Memorized tokens" in text


def test_demo_report_counts_match_the_parquet_files(demo):
    out, _ = demo
    run = out / "run"
    gens = pq.read_table(run / "generations").to_pylist()
    assert gens, "no generations stored"
    attacks = {g["attack"] for g in gens}
    assert "discoverable" in attacks
    ids = [g["request_id"] for g in gens]
    assert len(ids) == len(set(ids)), "duplicated generations"
    metrics_path = next((run / "report").glob("*.json"))
    m = json.loads(metrics_path.read_text())
    t = m["metrics"]
    assert t["generations"] == len(gens)
    assert t["generated_tokens"] == sum(g["completion_tokens"] for g in gens)
    matches = pq.read_table(run / "matches.parquet").to_pylist()
    for T in (10, 20, 30, 40, 50):
        assert t[f"spans_ge_{T}"] == sum(1 for s in matches if s["tokens"] >= T)
    longest = max((s["tokens"] for s in matches), default=0)
    assert t["longest_run_tokens"] == longest


def test_every_reported_span_is_really_in_the_corpus(demo):
    out, _ = demo
    docs = {}
    for shard in sorted((out / "corpus").glob("shard-*.arrow")):
        import pyarrow as pa

        table = pa.ipc.open_file(pa.memory_map(str(shard))).read_all()
        for d in table.select(["doc_id", "text"]).to_pylist():
            docs[d["doc_id"]] = d["text"].encode("utf-8")
    gens = {g["request_id"]: g["completion"].encode("utf-8")
            for g in pq.read_table(out / "run" / "generations").to_pylist()}
    matches = pq.read_table(out / "run" / "matches.parquet").to_pylist()
    for s in matches:
        span = gens[s["request_id"]][s["span_start"]:s["span_end"]]
        doc = docs[s["doc_id"]]
        assert doc[s["doc_offset"]:s["doc_offset"] + len(span)] == span
        assert s["tokens"] >= 10


def test_longest_run_names_its_source_document(demo):
    out, proc = demo
    run = out / "run"
    m = json.loads((run / "report" / "metrics.json").read_text())
    matches = pq.read_table(run / "matches.parquet").to_pylist()
    if not matches:
        assert m["longest_run"] is None
        return
    best = max(s["tokens"] for s in matches)
    lr = m["longest_run"]
    assert lr["tokens"] == best == m["metrics"]["longest_run_tokens"]
    same = [s for s in matches if s["tokens"] == best and s["span_end"] - s["span_start"] == lr["bytes"]]
    assert same and lr["source"] in {s["source"] for s in same}
    assert f"longest verbatim run: {best} tokens" in proc.stdout
    assert lr["source"] in proc.stdout
