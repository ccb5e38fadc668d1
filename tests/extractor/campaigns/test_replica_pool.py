"""Several endpoints (replicas) behind one backend, against real unreliable HTTP servers.

``tests/flaky_server.py`` serves a deterministic fake model over real HTTP and injects
faults (5xx, 429, garbage JSON, dropped connections, stalls, trickled bodies); the
completion of a request depends only on (prompt, seed, ...), so whichever replica
answered, the stored text can be checked exactly.
"""
from __future__ import annotations

import json
import time

import pytest

from extractor.attacks import AttackSpec
from extractor.backends import make_backend
from extractor.backends.pool import PoolBackend
from extractor.errors import TrawlError
from extractor.sampling.run_folder import RunDir
from extractor.sampling import run_attacks
from flaky_server import FlakyServer, expected_completion

FAST = dict(timeout=1.0, max_retries=8, backoff_base=0.01, backoff_max=0.05, progress=False)


def spec(words="a,b,c,d,e,f,g,h", samples=4, max_tokens=8):
    return [AttackSpec("divergence", {"words": words, "samples": samples, "repetitions": 3,
                                      "max_tokens": max_tokens})]


def check(run_dir, planned) -> list[dict]:
    rows = RunDir(str(run_dir)).read_generations().to_pylist()
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids)) == planned, "lost or duplicated generations"
    for r in rows:
        p = json.loads(r["params"])
        want = expected_completion(r["prompt"], r["seed"], p["temperature"], p["max_tokens"],
                                   json.loads(r["extra"]).get("n_choice", 0))
        assert r["completion"] == want
        assert r["completion_tokens"] == len(r["token_offsets"]) > 0
    return rows


def test_make_backend_builds_a_pool_only_for_several_endpoints():
    be = make_backend("openai", endpoint=["http://127.0.0.1:1/v1", "http://127.0.0.1:2"], model="m")
    assert isinstance(be, PoolBackend) and be.endpoints == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert be.endpoint == "http://127.0.0.1:1,http://127.0.0.1:2"
    assert be.describe()["backend"] == "pool" and be.describe()["endpoints"] == be.endpoints
    assert not isinstance(make_backend("openai", endpoint=["http://127.0.0.1:1"], model="m"), PoolBackend)
    with pytest.raises(TrawlError, match="listed twice"):
        make_backend("openai", endpoint=["http://h:1", "http://h:1/v1"], model="m")


def test_faulty_replicas_lose_and_duplicate_nothing(tmp_path):
    with FlakyServer(max_failures=2, stall_s=2.0) as s1, FlakyServer(max_failures=2, stall_s=2.0) as s2:
        s = run_attacks(str(tmp_path / "run"), endpoint=[s1.base_url, s2.base_url], model=s1.model,
                        attacks=spec(), concurrency=6, **FAST)
        served = [sum(o == "ok" for _, _, o in srv.log) for srv in (s1, s2)]
    assert s.status == "finished" and s.finished == s.planned == 32 and s.failed_requests == 0
    rows = check(tmp_path / "run", 32)
    by = {e: sum(r["endpoint"] == e for r in rows) for e in (s1.base_url, s2.base_url)}
    assert sum(by.values()) == 32 and min(by.values()) >= 4, by          # the load is spread
    assert min(served) > 0
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["endpoint"] == f"{s1.base_url},{s2.base_url}"
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["backend"]["backend"] == "pool" and cfg["backend"]["endpoints"] == [s1.base_url, s2.base_url]


def test_a_dead_replica_is_routed_around_and_tried_again_later(tmp_path, capfd):
    """(kill -9 of a real llama.cpp replica mid-campaign: tests/extractor/campaigns/test_campaign_real_model.py)"""
    from extractor.serving.embedded import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with FlakyServer(faults=(), delay=0.02) as s1:
        be = make_backend("openai", endpoint=[dead, s1.base_url], model=s1.model, timeout=1.0, max_retries=2,
                          backoff_base=0.01, backoff_max=0.05, api_key_env=None)
        be.revive_after = 0.05
        be._log = lambda msg: None
        be.probe()
        for i in range(20):
            r = be.complete(f"p{i}", {"max_tokens": 4, "temperature": 1.0}, seed=i)
            assert r.choices[0].text == expected_completion(f"p{i}", i, 1.0, 4)
            assert be.endpoint == s1.base_url
            time.sleep(0.01)
        st = be.stats()
        assert st[s1.base_url]["served"] == 20 and st[dead]["served"] == 0
        assert st[dead]["failures"] >= 2          # tried again after its cool-down, still dead
        s = run_attacks(str(tmp_path / "run"), endpoint=[dead, s1.base_url], model=s1.model,
                        attacks=spec(samples=2), concurrency=4, **FAST)
    assert s.status == "finished" and s.finished == s.planned == 16
    rows = check(tmp_path / "run", 16)
    assert {r["endpoint"] for r in rows} == {s1.base_url}
    assert f"endpoint {dead} is unusable now" in capfd.readouterr().err


def test_a_refusal_is_not_retried_on_the_other_replicas(tmp_path, monkeypatch):
    monkeypatch.setenv("POOL_TEST_KEY", "wrong")
    with FlakyServer(require_key="right") as s1, FlakyServer(require_key="right") as s2:
        with pytest.raises(TrawlError, match="HTTP 401"):
            run_attacks(str(tmp_path / "run"), endpoint=[s1.base_url, s2.base_url], model=s1.model,
                        attacks=spec(), api_key_env="POOL_TEST_KEY", concurrency=2, **FAST)
