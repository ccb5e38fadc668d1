"""A sweep over two real local model servers (the same GGUF served twice, as two versions).

End to end and unmocked: two ``EmbeddedServer`` instances (llama.cpp) on free loopback
ports, a real index, the real ``trawl sweep`` command in a subprocess as cron would run
it. Generation is kept tiny (a few 16-token completions).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from campaign_helpers import make_index, q, qlist, trawl
from extractor.serving.embedded import EmbeddedServer
from extractor.campaigns.ledger import LEDGER_SCHEMA, read_ledger, write_ledger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("servers")
    with EmbeddedServer(log_path=logs / "a.log") as a, EmbeddedServer(log_path=logs / "b.log") as b:
        yield a, b


@pytest.fixture(scope="module")
def sweep(servers, tmp_path_factory):
    a, b = servers
    root = tmp_path_factory.mktemp("sweep")
    index = make_index(root / "ix")
    text = f"""
[sweep]
name = "nightly"
out = "out"

[history]
tolerance = 0.10

[defaults.target]
concurrency = 2
api_key_env = ""

[defaults.index]
path = {q(index)}
min_tokens = 10

[[attacks]]
name = "divergence"
label = "div-poem"
words = ["poem"]
samples = 2
repetitions = 20
max_tokens = 16

[[targets]]
model = {q(a.model)}
version = "v1"
endpoints = {qlist([a.base_url])}

[[targets]]
model = {q(b.model)}
version = "v2"
endpoints = {qlist([b.base_url])}
"""
    (root / "nightly.toml").write_text(text)
    proc = trawl("sweep", "nightly.toml", "--no-progress", cwd=root)
    return root, proc


def completions_served(srv) -> int:
    return Path(srv.log_path).read_text(errors="replace").count("POST /v1/completions")


def test_sweep_runs_every_campaign_on_its_server(sweep, servers):
    root, proc = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "out"
    names = ["gemma-3-270m-v1-div-poem", "gemma-3-270m-v2-div-poem"]
    for name, srv in zip(names, servers):
        c = out / "campaigns" / name
        st = json.loads((c / "campaign.json").read_text())
        assert st["status"] == "finished" and all(s["status"] == "done" for s in st["steps"].values())
        assert (c / "campaign.toml").is_file() and (c / "run" / "matches.parquet").is_file()
        assert (c / "report" / "report.html").is_file()
        gens = pq.read_table(sorted((c / "run" / "generations").glob("*.parquet"))).to_pylist()
        assert len(gens) == 2 and {g["endpoint"] for g in gens} == {srv.base_url}
        assert f"{name}: finished (sample, match, report, history)" in proc.stdout
    rows = read_ledger(out / "ledger.parquet")
    assert sorted((r["version"], r["attack"]) for r in rows) == [("v1", "all"), ("v1", "div-poem"),
                                                                  ("v2", "all"), ("v2", "div-poem")]
    assert all(r["suite"] == "nightly/div-poem" and r["generations"] == 2 and r["generated_tokens"] > 0
               for r in rows)
    assert (out / "history.html").is_file() and "history: " in proc.stdout
    sj = json.loads((out / "sweep.json").read_text())
    assert sj["exit_code"] == 0 and [c["status"] for c in sj["campaigns"]] == ["finished", "finished"]


def test_repeated_sweep_does_nothing_new(sweep, servers):
    root, first = sweep
    assert first.returncode == 0
    out = root / "out"
    before_served = [completions_served(s) for s in servers]
    before_ledger = (out / "ledger.parquet").stat().st_mtime_ns
    before_status = [(p, p.read_text()) for p in sorted(out.glob("campaigns/*/campaign.json"))]
    proc = trawl("sweep", "nightly.toml", "--no-progress", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("already finished, skipped") == 2
    assert "0 campaign(s) run, 2 already finished, 0 failed" in proc.stderr
    assert [completions_served(s) for s in servers] == before_served       # not even a probe
    assert (out / "ledger.parquet").stat().st_mtime_ns == before_ledger
    assert [(p, p.read_text()) for p in sorted(out.glob("campaigns/*/campaign.json"))] == before_status


def test_rerun_redoes_only_the_selected_campaign(sweep, servers):
    root, first = sweep
    out = root / "out"
    n_rows = len(read_ledger(out / "ledger.parquet"))
    proc = trawl("sweep", "nightly.toml", "--rerun", "--only", "*-v2-*", "--no-progress", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 campaign(s) run, 0 already finished" in proc.stderr
    rows = read_ledger(out / "ledger.parquet")
    assert len(rows) == n_rows + 2 and sum(r["version"] == "v2" for r in rows) == 4
    assert len(list((out / "campaigns").glob("gemma-3-270m-v2-div-poem.old-*"))) == 1


def test_regression_between_versions_fails_the_history_check(sweep, servers):
    """The real ledger plus a v3 whose memorization is up by more than the tolerance."""
    root, first = sweep
    out = root / "out"
    rows = read_ledger(out / "ledger.parquet")
    v2 = max((r for r in rows if r["version"] == "v2" and r["attack"] == "div-poem"), key=lambda r: r["date"])
    v3 = dict(v2, version="v3", campaign_uid="made-up-v3", date="2999-01-01T00:00:00Z",
              memorized_token_fraction=(v2["memorized_token_fraction"] or 0.0) * 1.5 + 0.01)
    assert set(v3) == set(LEDGER_SCHEMA.names)
    write_ledger(out / "ledger.parquet", rows + [v3])
    proc = trawl("history", "nightly.toml", "--versions", "v1,v2,v3", cwd=root)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "REGRESSION gemma-3-270m [div-poem] (nightly/div-poem) v2 -> v3" in proc.stdout
    # v1 -> v2 (same weights, tiny sample) is compared and reported, with its verdict
    assert "v1 -> v2: memorized_token_fraction" in proc.stdout
    html = (out / "history.html").read_text()
    assert "<svg" in html and "REGRESSION" in html
    # the sweep itself reports it too, with the distinct exit code, after doing no new work
    proc = trawl("sweep", "nightly.toml", "--no-progress", cwd=root)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "REGRESSION gemma-3-270m [div-poem] (nightly/div-poem) v2 -> v3" in proc.stdout
    assert "0 campaign(s) run, 2 already finished, 0 failed, 1 regression(s)" in proc.stderr
    write_ledger(out / "ledger.parquet", rows)
    # a campaign file names its ledger too
    frozen = out / "campaigns" / "gemma-3-270m-v1-div-poem" / "campaign.toml"
    proc = trawl("history", str(frozen), "--json", cwd=root)
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"] == len(rows)


def test_a_replica_down_from_the_start_is_routed_around(servers, tmp_path, capfd):
    from extractor.campaigns.config import load_campaign
    from extractor.campaigns.pipeline import run_campaign
    from extractor.serving.embedded import free_port

    a, _ = servers
    dead = f"http://127.0.0.1:{free_port()}"
    index = make_index(tmp_path / "ix")
    (tmp_path / "c.toml").write_text(f"""
[target]
model = {q(a.model)}
version = "v1"
endpoints = {qlist([dead, a.base_url])}
concurrency = 2
api_key_env = ""
[[attacks]]
name = "divergence"
words = ["poem", "book", "city"]
samples = 1
repetitions = 10
max_tokens = 8
[index]
path = {q(index)}
""")
    c = load_campaign(tmp_path / "c.toml")
    logs: list[str] = []
    r = run_campaign(c, progress=False, log=logs.append)
    assert r.status == "finished"
    gens = pq.read_table(sorted((c.out / "run" / "generations").glob("*.parquet"))).to_pylist()
    assert len(gens) == 3 and {g["endpoint"] for g in gens} == {a.base_url}
    assert any(f"endpoint {dead} is unusable now" in m for m in logs)  # through the campaign's log
