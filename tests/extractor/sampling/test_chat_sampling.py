"""The sampler through the Chat Completions API (issue 13), against the deterministic chat server:
injected 5xx and stalls lose and repeat nothing; sample -> match -> report figures equal a brute-force
count; kill -9 + --resume stores exactly what an uninterrupted run stores; corrupted chat answers give
correct rows or one line."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from draw_server import DrawServer, chat_expected_text
from extractor.errors import TrawlError
from extractor.attacks import AttackSpec
from extractor.sampling import run_attacks
from extractor.sampling.run_folder import RunDir
from json_mutations import put, walk
from repo import REPO, one_line_error, trawl
from sampler_helpers import stored_count
from synthetic_runs import Corpus, covered_tokens, maximal_spans

ARGS = ["--api", "chat", "--attack", "divergence", "--param", "words=a,b,c,d,e,f", "--param", "samples=12",
        "--param", "repetitions=3", "--param", "max_tokens=12", "--param", "system=assistant",
        "--attack", "divergence", "--param", "words=x,y", "--param", "samples=6", "--param", "repetitions=2",
        "--param", "max_tokens=12", "--param", "turns=fed_back", "--concurrency", "2", "--timeout", "1",
        "--max-retries", "8", "--no-progress"]
PLANNED = 6 * 12 + 2 * 6


def _rows(run_dir) -> list[dict]:
    return sorted(RunDir(str(run_dir)).read_generations().to_pylist(), key=lambda r: r["request_id"])


def _check_draws(run_dir, planned: int) -> list[dict]:
    """Every planned generation stored once, each the server's draw for its conversation, seed and choice."""
    rows = _rows(run_dir)
    st = json.loads((run_dir / "run.json").read_text())
    convs, neutral = st["chat"]["messages"], st["capabilities"]["sampling_defaults"]
    assert len(rows) == planned == len({r["request_id"] for r in rows})
    assert not [t for t, c in Counter(r["completion"] for r in rows).items() if c > 1]
    for r in rows:
        e = json.loads(r["extra"])
        params = {**neutral, **json.loads(r["params"])}
        # choice k of a request with seed s is drawn with s + k: the row's seed is the request's
        assert r["completion"] == chat_expected_text(convs[e["messages_id"]], params, r["seed"], e.get("n_choice", 0))
        offs, data = r["token_offsets"], r["completion"].encode()
        assert e["token_source"] == "logprobs" and offs[0] == 0 and len(offs) == r["completion_tokens"] == 12
        assert all(a < b for a, b in zip(offs, offs[1:])) and offs[-1] < len(data)
    return rows


def _sample(url, out, *extra):
    return subprocess.run([sys.executable, "-m", "extractor.cli", "sample", "--endpoint", url, "--model",
                           DrawServer.model, "--out", str(out), *ARGS, *extra], env={**os.environ, "PYTHONPATH": REPO},
                          cwd=REPO, capture_output=True, text=True, timeout=240)


def test_faults_then_match_and_report_equal_a_brute_force_count(tmp_path):
    with DrawServer(chat=True, faults=("500", "503", "stall"), max_failures=2, stall_s=1.5) as srv:
        r = _sample(srv.base_url, tmp_path / "run")
        assert r.returncode == 0, r.stderr
        attempts = sum(srv.attempts.values())
    assert attempts > len(srv.attempts)   # faults were injected and retried
    rows = _check_draws(tmp_path / "run", PLANNED)
    # a corpus holding a 6-token piece of every third reply, plus text the replies never contain
    rng = random.Random(7)
    docs = []
    for i, row in enumerate(rows[::3]):
        offs, data = row["token_offsets"], row["completion"].encode()
        a = rng.randrange(0, 4)
        docs.append("lorem ipsum " + data[offs[a]:offs[a + 6]].decode() + f" dolor{i}")
    docs.append("nothing of the model here " * 20)
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for i, d in enumerate(docs):
        (corpus_dir / f"d{i}.txt").write_text(d)
    for args in (("corpus", "ingest", corpus_dir, "--out", tmp_path / "c", "--quiet"),
                 ("index", "build", tmp_path / "c", "--out", tmp_path / "i", "--quiet"),
                 ("match", tmp_path / "run", "--index", tmp_path / "i", "--min-tokens", "5", "--quiet"),
                 ("report", tmp_path / "run", "-q", "--window-tokens", "5")):
        r = trawl(*args)
        assert r.returncode == 0, (args, r.stderr)
    m = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())["metrics"]
    # brute force: maximal spans of >= 5 whole tokens; windows of 5 tokens found verbatim
    corpus = Corpus(docs)
    blobs = [d.encode() for d in docs]
    memorized, spans, mem_tokens = 0, 0, 0
    for row in rows:
        data, offs = row["completion"].encode(), row["token_offsets"]
        ok = [(s, e) for s, e in maximal_spans(data, corpus) if covered_tokens(offs, len(data), s, e) >= 5]
        spans += len(ok)
        memorized += bool(ok)
        ends = offs[1:] + [len(data)]
        mem = set()
        for i in range(len(offs) - 5 + 1):
            if any(data[offs[i]:ends[i + 4]] in b for b in blobs):
                mem.update(range(i, i + 5))
        mem_tokens += len(mem)
    assert memorized == len(rows[::3]) and spans >= memorized
    assert m["memorized_generations"] == memorized and m["memorized_tokens"] == mem_tokens


def test_kill9_and_resume_store_exactly_what_an_uninterrupted_run_stores(tmp_path):
    with DrawServer(chat=True, faults=("500", "503", "stall"), max_failures=1, stall_s=1.5, delay=0.15) as srv:
        killed, clean = tmp_path / "killed", tmp_path / "clean"
        cmd = [sys.executable, "-m", "extractor.cli", "sample", "--endpoint", srv.base_url, "--model", srv.model]
        proc = subprocess.Popen(cmd + ["--out", str(killed)] + ARGS, env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while stored_count(killed) < 20:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sampler made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 20 <= stored_count(killed) < PLANNED
        r = _sample(srv.base_url, killed, "--resume")
        assert r.returncode == 0, r.stderr
        r = _sample(srv.base_url, clean)
        assert r.returncode == 0, r.stderr
    key = lambda r: (r["request_id"], r["prompt"], r["completion"], r["seed"], tuple(r["token_offsets"]))  # noqa: E731
    assert [key(r) for r in _rows(killed)] == [key(r) for r in _rows(clean)]
    _check_draws(killed, PLANNED)


class _Corrupt:
    """Corrupts the chat answers to sampled requests (not the probe's) with probability ``rate``:
    one JSON value swapped for one of another type, or the bytes cut or flipped."""

    ODD = [None, True, -1, 1.5, "x", "", [], {}, [1, "x"], {"a": 1}]

    def __init__(self, seed, rate):
        self.rng, self.rate = random.Random(seed), rate
        self.delivered: set[str] = set()   # every reply text sent in a readable answer (what the model "said")

    def __call__(self, path, req, body):
        out = self.corrupt(req, body)
        try:
            for c in json.loads(out.decode("utf-8", "replace"))["choices"]:
                self.delivered.add(c["message"]["content"])
        except (ValueError, KeyError, TypeError, IndexError):
            pass
        return out

    def corrupt(self, req, body):
        if "The quick brown fox" in json.dumps(req) or self.rng.random() >= self.rate:
            return body
        kind = self.rng.choice(["swap", "swap", "swap", "cut", "flip"])
        if kind == "cut":
            return body[:self.rng.randrange(len(body))]
        if kind == "flip":
            b = bytearray(body)
            b[self.rng.randrange(len(b))] = self.rng.randrange(256)
            return bytes(b)
        data = json.loads(body)
        paths = list(walk(data, list_items=3))
        return json.dumps(put(data, self.rng.choice(paths), self.rng.choice(self.ODD))).encode()


def test_fuzz_corrupted_chat_answers_give_correct_rows_or_one_line(tmp_path):
    for seed in range(6):
        run = tmp_path / f"run{seed}"
        corrupt = _Corrupt(seed, 0.4)
        with DrawServer(chat=True, mutate=corrupt) as srv:
            s = run_attacks(str(run), endpoint=srv.base_url, model=srv.model, api="chat", api_key_env=None,
                            attacks=[AttackSpec("divergence", {"words": "a,b", "samples": 3, "repetitions": 2,
                                                               "max_tokens": 6})],
                            concurrency=2, timeout=2.0, max_retries=3, backoff_base=0.01, backoff_max=0.02,
                            progress=False, log=lambda m: None, max_consecutive_failures=100)
        st = json.loads((run / "run.json").read_text())
        assert st["status"] in ("finished", "incomplete") and s.status == st["status"]
        assert all("\n" not in e for e in st["sessions"][-1]["errors"])
        rows = RunDir(str(run)).read_generations().to_pylist() if st["finished"] else []
        convs, neutral = st["chat"]["messages"], st["capabilities"]["sampling_defaults"]
        for r in rows:   # what is stored is what the model said, or marked without boundaries
            e = json.loads(r["extra"])
            params = {**neutral, **json.loads(r["params"])}
            want = chat_expected_text(convs[e["messages_id"]], params, r["seed"], e.get("n_choice", 0))
            # else a corrupted answer that still reads as a chat answer: its text is what was sent
            assert r["completion"] == want or r["completion"] in corrupt.delivered | {""}, (seed, r["completion"])
            offs = r["token_offsets"]
            if offs is None:
                assert e["token_source"] == "none" and e["token_error"]
            elif r["completion"]:
                data = r["completion"].encode()
                assert offs[0] == 0 and all(a < b for a, b in zip(offs, offs[1:])) and offs[-1] < len(data)


def test_malformed_chat_answer_fails_the_run_with_one_line(tmp_path):
    def bad(path, req, body):
        return body if "The quick brown fox" in json.dumps(req) else b'{"choices": [{"message": 7}]}'

    with DrawServer(chat=True, mutate=bad) as srv:
        r = trawl("sample", "--endpoint", srv.base_url, "--model", srv.model, "--api", "chat", "--attack",
                  "divergence", "--param", "words=a", "--param", "samples=2", "--param", "max_tokens=4",
                  "--out", tmp_path / "run", "--no-progress", "--max-retries", "1")
    assert "Traceback" not in r.stderr and r.returncode == 3, (r.returncode, r.stderr)
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["status"] == "incomplete" and st["finished"] == 0
    assert st["sessions"][-1]["errors"] and all("malformed chat JSON" in e and "\n" not in e
                                                for e in st["sessions"][-1]["errors"])


def test_a_server_without_chat_is_one_line(tmp_path):
    with DrawServer(chat=False) as srv:
        r = trawl("sample", "--endpoint", srv.base_url, "--model", srv.model, "--api", "chat", "--attack",
                  "divergence", "--param", "words=a", "--out", tmp_path / "run", "--no-progress")
    one_line_error(r, "/v1/chat/completions not found")
    try:
        run_attacks(str(tmp_path / "r2"), endpoint="http://127.0.0.1:9", model="m", api="nope",
                    attacks=[AttackSpec("divergence", {})])
    except TrawlError as exc:
        assert "api must be" in str(exc)
    else:
        raise AssertionError("an unknown api was accepted")


def test_replica_pool_speaks_chat_and_every_sample_is_its_own_draw(tmp_path):
    with DrawServer(chat=True, faults=("503",), max_failures=1) as a, DrawServer(chat=True) as b:
        s = run_attacks(str(tmp_path / "run"), endpoint=[a.base_url, b.base_url], model=a.model, api="chat",
                        api_key_env=None, progress=False, log=lambda m: None, timeout=5.0, backoff_base=0.01,
                        backoff_max=0.05, max_retries=6, concurrency=4,
                        attacks=[AttackSpec("divergence", {"words": "a,b,c", "samples": 5, "repetitions": 2,
                                                           "max_tokens": 12, "system": "assistant"})])
        served = {p["messages"][-1]["content"] for p in a.payloads + b.payloads if "messages" in p}
    assert s.status == "finished" and s.finished == 15
    rows = _check_draws(tmp_path / "run", 15)
    assert {r["prompt"] for r in rows} <= served and {r["endpoint"] for r in rows} <= {a.base_url, b.base_url}
