"""A campaign's ``rank`` step (``[rank]``): scores the run before the report, the report and the
gates see the rankings; without ``[rank]`` the step is skipped; a bad ``[rank]`` is one line."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from campaign_helpers import make_index, q, trawl
from tests.echo_server import EchoServer


def _toml(url, index, rank: str, gate: str = "ranking.generations_scored > 100") -> str:
    return f"""
[campaign]
name = "ranked"
out = "out"
[target]
model = "m"
version = "v1"
endpoints = [{q(url)}]
concurrency = 1
max_retries = 0
api_key_env = ""
[[attacks]]
name = "divergence"
words = ["poem", "book"]
samples = 2
repetitions = 10
max_tokens = 8
[index]
path = {q(index)}
[report]
fail_if = [{q(gate)}]
{rank}
"""


def test_rank_step_feeds_the_report_and_gates(tmp_path):
    index = make_index(tmp_path / "ix")
    with EchoServer() as srv:
        (tmp_path / "c.toml").write_text(_toml(srv.base_url, index, "[rank]\nk = 50\nlowercase = false\n"))
        r = trawl("run", str(tmp_path / "c.toml"), "--no-progress", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        scored = sum(len(x["prompt"]) if isinstance(x["prompt"], list) else 1 for x in srv.requests if x.get("echo"))
    out = tmp_path / "out"
    st = json.loads((out / "campaign.json").read_text())
    assert list(st["steps"]) == ["sample", "match", "rank", "report", "history"]
    rank = st["steps"]["rank"]
    assert rank["status"] == "done" and rank["result"]["rows"] == 4 and scored == 4
    assert st["sessions"][-1]["steps_run"] == ["sample", "match", "rank", "report", "history"]
    t = pq.read_table(out / "run" / "scores.parquet")
    assert t.num_rows == 4 and t.schema.metadata[b"k"] == b"0.5"
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert m["ranking"]["generations_scored"] == 4 and m["metrics"]["ranking_best_auc"] is None   # nothing memorized: n/a
    assert st["status"] == "finished" and st["steps"]["report"]["result"]["gates_crossed"] == []
    assert "Top candidates by each ranking" in (out / "report" / "report.html").read_text()
    # the ledger (format 2) carries the ranking figures of metrics.json on the campaign's "all" row
    from extractor.campaigns.ledger import read_ledger
    led = {r["attack"]: r for r in read_ledger(tmp_path / "ledger.parquet")}
    assert led["all"]["ranking_best_auc"] == m["metrics"]["ranking_best_auc"]
    assert led["all"]["ranking_best_precision_at_100"] == m["metrics"]["ranking_best_precision_at_100"]
    assert pq.read_schema(tmp_path / "ledger.parquet").metadata[b"format_version"] == b"2"


def test_without_rank_table_the_step_is_skipped_and_bad_tables_are_one_line(tmp_path):
    index = make_index(tmp_path / "ix")
    with EchoServer() as srv:
        (tmp_path / "c.toml").write_text(_toml(srv.base_url, index, ""))
        r = trawl("run", str(tmp_path / "c.toml"), "--no-progress", "--check", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        for bad, msg in (('[rank]\nk = 0\n', "rank.k"), ('[rank]\nreference_model = "x"\n', "reference_endpoint"),
                         ('[rank]\nbogus = 1\n', "bogus")):
            (tmp_path / "c.toml").write_text(_toml(srv.base_url, index, bad))
            r = trawl("run", str(tmp_path / "c.toml"), "--check", cwd=tmp_path)
            assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
        (tmp_path / "c.toml").write_text(_toml(srv.base_url, index, "", gate="generations > 100"))
        r = trawl("run", str(tmp_path / "c.toml"), "--no-progress", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert not any(x.get("echo") for x in srv.requests)
    st = json.loads((tmp_path / "out" / "campaign.json").read_text())
    assert st["steps"]["rank"]["result"] == {"skipped": True}
    assert st["sessions"][-1]["steps_run"] == ["sample", "match", "report", "history"]
    assert "finished (sample, match, report, history)" in r.stdout + r.stderr
    assert not (tmp_path / "out" / "run" / "scores.parquet").exists()
