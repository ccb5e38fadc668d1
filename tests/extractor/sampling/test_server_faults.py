"""The sampler against a real but unreliable local HTTP server (tests/flaky_server.py).

Proves that 5xx, 429 with Retry-After, garbage JSON, malformed answers, dropped
connections, stalls and trickled bodies lose no generation and duplicate none,
that a kill -9 followed by --resume gives the same generations as an
uninterrupted run, and that the API key never leaks.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from extractor.attacks import AttackSpec
from extractor.sampling.budget import Budget, Pricing
from extractor.errors import TrawlError
from extractor.sampling.run_folder import RunDir
from extractor.sampling import run_attacks
from flaky_server import FAULTS, PROBE_PROMPTS, FlakyServer, expected_completion
from repo import REPO
from sampler_helpers import stored_count

FAST = dict(timeout=1.0, max_retries=8, backoff_base=0.01, backoff_max=0.05, progress=False)


def _spec(words="a,b,c,d,e,f,g,h", samples=5, max_tokens=10):
    return [AttackSpec("divergence", {"words": words, "samples": samples, "repetitions": 3,
                                      "max_tokens": max_tokens})]


def _check_against_model(run_dir, planned):
    rows = RunDir(str(run_dir)).read_generations().to_pylist()
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids)) == planned, "lost or duplicated generations"
    for r in rows:
        p = json.loads(r["params"])
        extra = json.loads(r["extra"])
        want = expected_completion(r["prompt"], r["seed"], p["temperature"], p["max_tokens"],
                                   extra.get("n_choice", 0))
        assert r["completion"] == want, "a generation was stored under the wrong request"
        data = want.encode()
        assert r["completion_tokens"] == len(r["token_offsets"]) > 0
        assert r["token_offsets"][0] == 0 and all(a < b for a, b in zip(r["token_offsets"], r["token_offsets"][1:]))
        assert r["token_offsets"][-1] < len(data)
    return rows


@pytest.mark.parametrize("token_path", ["logprobs", "tokenize"])
def test_faults_lose_and_duplicate_nothing(tmp_path, token_path):
    with FlakyServer(max_failures=2, tokenize=(token_path == "tokenize"), stall_s=2.0) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec(),
                        concurrency=8, **FAST)
        seen = {outcome for _, _, outcome in srv.log}
    assert s.status == "finished" and s.finished == s.planned == 40 and s.failed_requests == 0
    rows = _check_against_model(tmp_path / "run", 40)
    assert {json.loads(r["extra"])["token_source"] for r in rows} == {token_path}
    assert set(FAULTS) <= seen, f"fault kinds not exercised: {set(FAULTS) - seen}"
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["retries"] >= 10


def test_retry_after_is_honoured(tmp_path):
    with FlakyServer(faults=("429", "503"), max_failures=1, retry_after="1") as srv:
        run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model,
                    attacks=_spec("a,b,c,d", samples=2), concurrency=4, **FAST)
        by_key = defaultdict(list)
        for t, key, outcome in srv.log:
            by_key[key].append((t, outcome))
    waited = 0
    for events in by_key.values():
        for (t0, o0), (t1, _) in zip(events, events[1:]):
            if o0 in ("429", "503"):
                assert t1 - t0 >= 0.95, "retried before Retry-After"
                waited += 1
    assert waited >= 1
    _check_against_model(tmp_path / "run", 8)


def test_gives_up_cleanly_and_resume_finishes(tmp_path):
    # every request fails 3 times; with 1 retry the run ends "incomplete"; --resume with more retries finishes
    with FlakyServer(faults=("500",), max_failures=3) as srv:
        srv.max_failures = 3
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b", samples=3), concurrency=2,
                        **{**FAST, "max_retries": 0}, max_consecutive_failures=1000)
        assert s.status == "incomplete" and s.failed_requests > 0 and s.finished < 6
        st = json.loads((tmp_path / "run" / "run.json").read_text())
        assert st["stopped_early"] is True and st["stop_reason"] == "failed_requests"
        assert st["sessions"][-1]["errors"]
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b", samples=3), concurrency=2, resume=True, **FAST)
        assert s.status == "finished" and s.finished == 6
    _check_against_model(tmp_path / "run", 6)


def test_server_without_token_information_is_refused(tmp_path):
    with FlakyServer(faults=(), logprobs=False, tokenize=False) as srv:
        with pytest.raises(TrawlError, match="returns no token information"):
            run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec(), **FAST)
    assert not (tmp_path / "run" / "config.json").exists()


def test_api_key_is_sent_and_never_stored(tmp_path, monkeypatch):
    key = "sk-flaky-0123456789-secret"
    monkeypatch.setenv("FLAKY_KEY", key)
    with FlakyServer(faults=(), require_key=key) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a", samples=2), api_key_env="FLAKY_KEY", **FAST)
        assert s.status == "finished" and srv.auth_headers == {"Bearer " + key}
        monkeypatch.setenv("FLAKY_KEY", "sk-wrong-key-value")
        with pytest.raises(TrawlError, match=r"HTTP 401.*\$FLAKY_KEY") as ei:
            run_attacks(str(tmp_path / "run2"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a", samples=2), api_key_env="FLAKY_KEY", **FAST)
        assert "sk-wrong" not in str(ei.value)
    for root, _, files in os.walk(tmp_path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert key.encode() not in fh.read(), f"API key leaked into {f}"


def test_wall_time_and_dollar_caps(tmp_path):
    with FlakyServer(faults=(), delay=0.3) as srv:
        # 20 generations one per request, 2 at a time, 0.3 s each: at least 3 s of answers, so a 2 s cap
        # stops the run early; 2 s (not 1 s) leaves a loaded machine time for the probe and first answers
        s = run_attacks(str(tmp_path / "t"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b,c,d", samples=5), budget=Budget(max_seconds=2.0), concurrency=2, **FAST)
        assert s.status == "stopped" and s.stop_reason == "max_seconds" and 0 < s.finished < 20
        st = json.loads((tmp_path / "t" / "run.json").read_text())
        assert st["stopped_early"] and st["stop_reason"] == "max_seconds"
        # per-token prices: 10 completion tokens at $1000/M = $0.01 per generation; cap $0.05
        pricing = Pricing(input_per_mtok=0.0, output_per_mtok=1000.0)
        s = run_attacks(str(tmp_path / "d"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b,c,d", samples=5), budget=Budget(max_dollars=0.05), pricing=pricing,
                        concurrency=3, **FAST)
        assert s.status == "stopped" and s.stop_reason == "max_dollars"
        assert s.cost_usd <= 0.05 + 1e-12 and s.finished == 5
        # resume of the time-capped run without a cap completes it, with the same ids as a fresh run
        s = run_attacks(str(tmp_path / "t"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b,c,d", samples=5), concurrency=4, resume=True, **FAST)
        assert s.status == "finished" and s.finished == 20
    _check_against_model(tmp_path / "t", 20)


def test_n_batching_when_the_server_honours_n(tmp_path):
    with FlakyServer(faults=("500", "drop"), max_failures=1, support_n=True, tokenize=False) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b,c", samples=4), concurrency=2, **FAST)
        assert s.capabilities["n"] is True
        requests_ok = sum(1 for _, k, o in srv.log
                          if o == "ok" and json.loads(k)[4] > 1 and not json.loads(k)[0].startswith(PROBE_PROMPTS))
    assert s.finished == 12 and requests_ok == 3
    rows = _check_against_model(tmp_path / "run", 12)
    assert all(json.loads(r["params"])["n"] == 4 for r in rows)


def test_kill9_then_resume_equals_uninterrupted_run(tmp_path):
    args = ["--model", FlakyServer.model, "--attack", "divergence", "--param", "words=a,b,c,d,e,f",
            "--param", "samples=5", "--param", "repetitions=3", "--param", "max_tokens=10",
            "--concurrency", "3", "--timeout", "1", "--max-retries", "8", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with FlakyServer(faults=("500", "drop", "garbage"), max_failures=1, delay=0.15) as srv:
        killed = tmp_path / "killed"
        cmd = [sys.executable, "-m", "extractor.cli", "sample", "--endpoint", srv.base_url, "--out", str(killed)]
        proc = subprocess.Popen(cmd + args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while stored_count(killed) < 8:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sampler made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = stored_count(killed)
        assert 8 <= partial < 30
        st = json.loads((killed / "run.json").read_text())
        assert st["status"] == "running"  # it never got to say otherwise
        r = subprocess.run(cmd + args + ["--resume"], env=env, cwd=REPO, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        clean = tmp_path / "clean"
        r = subprocess.run([sys.executable, "-m", "extractor.cli", "sample", "--endpoint", srv.base_url,
                            "--out", str(clean)] + args, env=env, cwd=REPO, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
    a = _check_against_model(killed, 30)
    b = _check_against_model(clean, 30)
    key = lambda r: (r["request_id"], r["prompt"], r["completion"], tuple(r["token_offsets"]))  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))
    st = json.loads((killed / "run.json").read_text())
    assert st["status"] == "finished" and len(st["sessions"]) == 2 and st["sessions"][1]["resumed"]


def test_replicas_through_the_pool_lose_and_duplicate_nothing(tmp_path):
    """Several endpoints go through extractor/backends/pool.py; the sampler's guarantees hold."""
    import socket
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with FlakyServer(faults=("500", "drop"), max_failures=2, delay=0.05) as a, \
            FlakyServer(faults=(), delay=0.05) as b:
        # replica a goes away for good in the middle of the run
        killer = threading.Timer(0.8, a.__exit__, args=(None, None, None))
        killer.start()
        s = run_attacks(str(tmp_path / "run"), endpoint=[a.base_url, dead, b.base_url], model=a.model,
                        attacks=_spec(samples=5), concurrency=4, **FAST)
        killer.join()
    assert s.status == "finished" and s.finished == 40
    rows = _check_against_model(tmp_path / "run", 40)
    served = {r["endpoint"] for r in rows}
    assert b.base_url in served and served <= {a.base_url, b.base_url}
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["endpoints"] == [a.base_url, dead, b.base_url]
    assert st["endpoint_stats"][b.base_url]["served"] > 0 and st["endpoint_stats"][dead]["served"] == 0


def test_pool_refuses_endpoints_that_are_not_replicas(tmp_path):
    """Two endpoints whose servers differ (vLLM vs llama-cpp-python) are not replicas: one line, no run."""
    with FlakyServer(faults=()) as a, FlakyServer(faults=(), version="0.32.0") as b:
        with pytest.raises(TrawlError, match=r"differ \(server: 'llama_cpp' vs 'vllm'\).*replicas"):
            run_attacks(str(tmp_path / "run"), endpoint=[a.base_url, b.base_url], model=a.model,
                        attacks=_spec(samples=1), concurrency=2, **FAST)
    assert not (tmp_path / "run" / "generations").exists() or not any((tmp_path / "run" / "generations").iterdir())


def test_pool_keeps_a_late_endpoint_out_when_it_is_not_a_replica(tmp_path):
    """An endpoint that was down at the probe and comes up as another kind of server is never used:
    every generation comes from the replica that matches, and the run says why the other was left out."""
    import socket
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late = FlakyServer(faults=(), version="0.32.0", port=port)
    logs: list[str] = []
    started = threading.Event()

    def log(msg):  # the late server comes up as soon as the probe has found it down
        logs.append(msg)
        if "is unusable now" in msg and not started.is_set():
            late.__enter__()
            started.set()

    with FlakyServer(faults=(), delay=0.4) as a:
        try:
            s = run_attacks(str(tmp_path / "run"), endpoint=[a.base_url, f"http://127.0.0.1:{port}"], model=a.model,
                            attacks=_spec(samples=5), concurrency=4, log=log, **FAST)
        finally:
            if started.is_set():
                late.__exit__(None, None, None)
    assert started.is_set()
    assert s.status == "finished" and s.finished == 40
    rows = _check_against_model(tmp_path / "run", 40)
    assert {r["endpoint"] for r in rows} == {a.base_url}
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    late_stats = st["endpoint_stats"][f"http://127.0.0.1:{port}"]
    assert late_stats["served"] == 0
    assert late_stats["excluded"]  # 40 x 0.4 s on 4 workers outlast its 2 s cool-down
    assert "not a replica" in late_stats["last_error"] and "server: 'llama_cpp' vs 'vllm'" in late_stats["last_error"]
    assert any("is not used: it is not a replica" in m for m in logs)


def test_ignore_eos_is_refused_for_a_server_that_cannot_honour_it(tmp_path):
    """llama-cpp-python (and OpenAI) would silently ignore the field: trawl refuses to plan it."""
    with FlakyServer(faults=()) as a:
        with pytest.raises(TrawlError, match=r"attack divergence: ignore_eos needs a server that honours it "
                                             r"\(vLLM\); the server at .* \(llama_cpp\) does not"):
            run_attacks(str(tmp_path / "run"), endpoint=a.base_url, model=a.model,
                        attacks=[AttackSpec("divergence", {"words": ["a"], "ignore_eos": True})], **FAST)
    assert not (tmp_path / "run" / "run.json").exists()
