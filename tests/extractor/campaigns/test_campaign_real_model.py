"""Campaigns against real local model servers: a replica dying mid-campaign, and resuming.

Unmocked: ``EmbeddedServer`` instances (llama.cpp serving the embedded GGUF), a real
index, the real sampler, matcher and report.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from campaign_helpers import ROOT, make_index, q, qlist, trawl
from repo import ctrl_c_ready
from extractor.campaigns.config import load_campaign
from extractor.campaigns.pipeline import run_campaign
from extractor.sampling.run_folder import RunDir
from extractor.serving.embedded import EmbeddedServer

pytestmark = pytest.mark.slow

WORDS = ["poem", "company", "book", "the", "one", "two", "data", "city", "water", "light"]


def stored(run_dir: Path) -> list[dict]:
    """Every stored generation: Parquet parts plus journal rows not yet in a part."""
    rows = []
    parts = sorted((run_dir / "generations").glob("*.parquet"))
    if parts:
        rows += pq.read_table(parts, columns=["request_id", "endpoint", "completion_tokens"]).to_pylist()
    rows += RunDir(str(run_dir)).read_journal().select(["request_id", "endpoint", "completion_tokens"]).to_pylist()
    return list({r["request_id"]: r for r in rows}.values())


def test_one_endpoint_killed_mid_campaign(tmp_path, capfd):
    index = make_index(tmp_path / "ix")
    with EmbeddedServer(log_path=tmp_path / "a.log") as a, EmbeddedServer(log_path=tmp_path / "b.log") as b:
        cfg = tmp_path / "replicas.toml"
        cfg.write_text(f"""
[campaign]
name = "replicas"
out = "out"
[target]
model = {q(a.model)}
version = "v1"
endpoints = {qlist([a.base_url, b.base_url])}
concurrency = 2
max_retries = 3
api_key_env = ""
[[attacks]]
name = "divergence"
words = {qlist(WORDS)}
samples = 1
repetitions = 10
max_tokens = 12
[index]
path = {q(index)}
""")
        c = load_campaign(cfg)
        run_dir = c.out / "run"
        killed = {}

        def killer():
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                rows = stored(run_dir) if run_dir.exists() else []
                if any(r.get("endpoint") == b.base_url for r in rows):
                    killed["after"] = len(rows)
                    # kill -9 the server's process group mid-campaign (its request in flight is cut)
                    os.killpg(b._proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.05)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        logs: list[str] = []
        r = run_campaign(c, progress=False, log=logs.append)
        t.join(5)
        assert killed, "endpoint b was never used"
        assert killed["after"] < len(WORDS), "the campaign ended before b was killed"
        assert r.status == "finished", r.error
        gens = pq.read_table(sorted((run_dir / "generations").glob("*.parquet"))).to_pylist()
        ids = [g["request_id"] for g in gens]
        run = json.loads((run_dir / "run.json").read_text())
        assert run["planned"] == len(WORDS) == len(ids) == len(set(ids))      # every planned one, exactly once
        assert {g["variant"] for g in gens} == set(WORDS)
        by = {e: sum(g["endpoint"] == e for g in gens) for e in (a.base_url, b.base_url)}
        assert by[b.base_url] >= 1 and by[a.base_url] >= 1 and sum(by.values()) == len(WORDS)
        assert all(g["token_offsets"] is not None and len(g["token_offsets"]) == g["completion_tokens"] > 0
                   for g in gens)
        # said once, through the campaign's log (the replica pool logs through the run's log)
        assert sum(f"endpoint {b.base_url} failed" in m for m in logs) == 1
        assert (c.out / "report" / "report.html").is_file()


def test_interrupted_campaign_resumes_the_unfinished_step(tmp_path):
    """SIGINT in the middle of sampling (embedded target), then the same command again."""
    index = make_index(tmp_path / "ix")
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f"""
[campaign]
name = "audit"
[target]
embedded = true
version = "2026-11"
concurrency = 1
[[attacks]]
name = "divergence"
words = {qlist(WORDS[:6])}
samples = 1
repetitions = 10
max_tokens = 12
[index]
path = {q(index)}
[report]
fail_if = ["generations > 1000"]
""")
    out = tmp_path / "trawl-out" / "audit"
    p = subprocess.Popen([sys.executable, "-m", "extractor.cli", "run", "audit.toml", "--no-progress"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, preexec_fn=ctrl_c_ready)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            if (out / "run").exists() and len(stored(out / "run")) >= 2:
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    st = json.loads((out / "campaign.json").read_text())
    assert st["status"] == "interrupted" and st["steps"]["sample"]["status"] == "interrupted"
    assert st["steps"]["match"]["status"] == "pending"
    first = {r["request_id"] for r in stored(out / "run")}
    assert 2 <= len(first) < 6

    proc = trawl("run", "audit.toml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = out / "report" / "report.html"
    assert proc.stdout.strip().splitlines()[-1] == f"report: {html}" and html.is_file()
    gens = pq.read_table(sorted((out / "run" / "generations").glob("*.parquet"))).to_pylist()
    ids = [g["request_id"] for g in gens]
    assert len(ids) == len(set(ids)) == 6 and first <= set(ids)
    st = json.loads((out / "campaign.json").read_text())
    assert st["status"] == "finished" and len(st["sessions"]) == 2
    assert st["sessions"][1]["steps_run"] == ["sample", "match", "report", "history"]
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["sessions"][-1]["resumed"] and run["sessions"][-1]["skipped_done"] == len(first)

    # a step that failed is the one resumed: the report step fails once (index moved away) ...
    st["status"], st["steps"]["report"]["status"], st["steps"]["history"]["status"] = "failed", "failed", "pending"
    (out / "campaign.json").write_text(json.dumps(st))
    c = load_campaign(cfg)
    r = run_campaign(c, progress=False, log=lambda m: None)
    assert r.status == "finished" and r.steps_run == ["report", "history"]
    # ... and a finished campaign is skipped, its gate outcome kept
    proc = trawl("run", "audit.toml", "--no-progress", "--json", cwd=tmp_path)
    assert proc.returncode == 0
    j = json.loads(proc.stdout)
    assert j["skipped"] and j["steps_run"] == [] and j["report"] == str(html)
    from extractor.campaigns.ledger import read_ledger

    rows = read_ledger(tmp_path / "trawl-out" / "ledger.parquet")
    assert sorted(r["attack"] for r in rows) == ["all", "divergence"]     # recorded once
    assert rows[0]["model"] == "gemma-3-270m" and rows[0]["version"] == "2026-11"
    # a release gate changed after the fact is evaluated on the stored metrics, without new work
    cfg.write_text(cfg.read_text().replace("generations > 1000", "generations > 1"))
    proc = trawl("run", "audit.toml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "release gate crossed: generations > 1" in proc.stderr and "already finished" in proc.stderr
