"""Sweeps end to end against the deterministic HTTP model of tests/flaky_server.py (fast).

Because that model's completion is a known function of (prompt, seed), the test can
compute what version v2 will say before the sweep runs and put exactly that text in
the reference corpus: v2 then memorizes 100% of its tokens, v1 none, and the whole
pipeline (sampler -> matcher -> report -> ledger -> history) must flag v1 -> v2.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from campaign_helpers import q
from extractor.attacks import PlanContext, get_attack
from extractor.attacks.base import draw_seed
from extractor.serving.embedded import free_port
from extractor.campaigns.ledger import read_ledger
from extractor.campaigns.sweep import FAILED_EXIT_CODE, REGRESSION_EXIT_CODE, load_sweep, run_sweep
from flaky_server import FlakyServer, expected_completion


def build_index(folder: Path, docs: list[str]) -> Path:
    from corpora.ingest import ingest_records
    from corpora.readers import Record
    from suffix_index import build_index as build

    shutil.rmtree(folder, ignore_errors=True)
    ingest_records([Record(source=f"doc{i}", text=t, metadata={}) for i, t in enumerate(docs)], folder / "corpus")
    build(folder / "corpus", folder / "index")
    return folder / "index"


def sweep_text(index, targets, *, tolerance=0.10) -> str:
    t = "".join(f'[[targets]]\nmodel = "fake"\nversion = "{v}"\nendpoints = ["{url}"]\n\n' for v, url in targets)
    return (f'[sweep]\nname = "ci"\nout = "out"\n\n[history]\ntolerance = {tolerance}\n\n'
            f'[defaults.target]\nconcurrency = 4\napi_key_env = ""\nmax_retries = 1\ntimeout = 5.0\n\n'
            f'[defaults.index]\npath = {q(index)}\nmin_tokens = 10\n\n'
            '[[attacks]]\nname = "divergence"\nwords = ["poem", "data"]\nsamples = 2\nrepetitions = 3\n'
            f'max_tokens = 100\n\n{t}')   # >= 50 tokens even after the server's re-tokenization merges some


def planned_completions(campaign) -> list[str]:
    """What the fake model will answer to each request of ``campaign`` (ids and seeds as the sampler makes them)."""
    a = campaign.config["attacks"][0]
    cls = get_attack(a["name"])
    params = cls.resolve(a["params"])
    out = []
    for g, job in enumerate(cls().plan(params, PlanContext(run_id=campaign.run_id, backend=None))):
        seed = draw_seed(campaign.run_id, g)   # generation g of the plan (one attack: plan order)
        out.append(expected_completion(job.prompt, seed, params["temperature"], params["max_tokens"]))
    return out


def quiet(_msg):
    pass


def test_memorization_regression_between_two_versions_end_to_end(tmp_path):
    with FlakyServer(faults=()) as s1, FlakyServer(faults=()) as s2:
        ix = build_index(tmp_path / "ix", ["placeholder text"])
        cfg = tmp_path / "ci.toml"
        cfg.write_text(sweep_text(ix, [("v1", s1.base_url), ("v2", s2.base_url)]))
        sw = load_sweep(cfg)
        v1, v2 = sw.campaigns
        docs = planned_completions(v2)
        assert len(docs) == 4 and not set(docs) & set(planned_completions(v1))   # the versions differ
        build_index(tmp_path / "ix", docs + ["some unrelated reference text"])     # v2's output is "training data"
        lines: list[str] = []
        res = run_sweep(load_sweep(cfg), progress=False, log=quiet, echo=lines.append)
    assert [r.status for r in res.results] == ["finished", "finished"], [r.error for r in res.results]
    rows = {(r["version"], r["attack"]): r for r in read_ledger(tmp_path / "out" / "ledger.parquet")}
    assert rows[("v1", "all")]["memorized_token_fraction"] == 0.0
    assert rows[("v2", "all")]["memorized_token_fraction"] == 1.0
    from extractor.sampling.run_folder import RunDir

    gens = RunDir(str(tmp_path / "out" / "campaigns" / "fake-v2-divergence" / "run")).read_generations().to_pylist()
    toks = [g["completion_tokens"] for g in gens]
    assert len(toks) == 4 and min(toks) >= 50
    # every 50-token window of every v2 completion is in the corpus, and they are all distinct
    assert rows[("v2", "all")]["unique_memorized_windows"] == sum(t - 50 + 1 for t in toks)
    assert rows[("v2", "all")]["spans_ge_50"] == 4 and rows[("v2", "all")]["longest_run_tokens"] == max(toks)
    assert rows[("v1", "all")]["unique_memorized_windows"] == 0 and rows[("v1", "all")]["spans_ge_50"] == 0
    assert res.exit_code == REGRESSION_EXIT_CODE
    assert {(c.attack, c.prev_version, c.version) for c in res.regressions} == {("all", "v1", "v2"),
                                                                             ("divergence", "v1", "v2")}
    assert any(line.startswith("REGRESSION fake [divergence] (ci/divergence) v1 -> v2") for line in lines)
    html = (tmp_path / "out" / "history.html").read_text()
    assert "REGRESSION" in html and "<svg" in html
    sj = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert sj["exit_code"] == 3 and len(sj["regressions"]) == 2


def test_a_failed_campaign_does_not_stop_the_others_and_resumes_next_time(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with FlakyServer(faults=()) as s1, FlakyServer(faults=()) as s2:
        ix = build_index(tmp_path / "ix", ["nothing the fake model says"])
        cfg = tmp_path / "ci.toml"
        cfg.write_text(sweep_text(ix, [("v1", dead), ("v2", s2.base_url)]))
        res = run_sweep(load_sweep(cfg), progress=False, log=quiet, echo=quiet)
        assert [r.status for r in res.results] == ["failed", "finished"]
        assert "cannot reach the model server" in res.results[0].error
        assert res.exit_code == FAILED_EXIT_CODE
        st = json.loads((tmp_path / "out" / "campaigns" / "fake-v1-divergence" / "campaign.json").read_text())
        assert st["status"] == "failed" and st["steps"]["sample"]["status"] == "failed"
        # the endpoint moved (endpoints are not part of a campaign's identity): the next call resumes v1 only
        cfg.write_text(sweep_text(ix, [("v1", s1.base_url), ("v2", s2.base_url)]))
        res = run_sweep(load_sweep(cfg), progress=False, log=quiet, echo=quiet)
        assert [(r.status, r.skipped) for r in res.results] == [("finished", False), ("finished", True)]
        assert res.exit_code == 0
        # changing what a campaign *is* in place is refused, naming the way out
        cfg.write_text(sweep_text(ix, [("v1", s1.base_url), ("v2", s2.base_url)]).replace("samples = 2",
                                                                                         "samples = 3"))
        res = run_sweep(load_sweep(cfg), progress=False, log=quiet, echo=quiet)
        assert all(r.status == "failed" and "--rerun" in r.error for r in res.results)
        assert len(read_ledger(tmp_path / "out" / "ledger.parquet")) == 4


def test_sweep_list_shows_status(tmp_path):
    from campaign_helpers import trawl

    ix = build_index(tmp_path / "ix", ["text"])
    (tmp_path / "ci.toml").write_text(sweep_text(ix, [("v1", "http://127.0.0.1:9"), ("v2", "http://127.0.0.1:9")]))
    proc = trawl("sweep", "ci.toml", "--list", cwd=tmp_path)
    assert proc.returncode == 0
    assert [l.split("\t")[:2] for l in proc.stdout.splitlines()] == [["fake-v1-divergence", "new"],
                                                                    ["fake-v2-divergence", "new"]]
    proc = trawl("sweep", "ci.toml", "--only", "nope-*", cwd=tmp_path)
    assert proc.returncode == 2 and "selects none of the campaigns" in proc.stderr
