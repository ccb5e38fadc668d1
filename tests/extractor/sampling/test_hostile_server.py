"""The sampler against hostile or broken model servers and a broken API key (issue 17).

A key with a control character, an error body that echoes the key, invalid UTF-8, malformed
JSON of every kind, a server that hangs during the start-up probe, an absurd concurrency and
an oversized answer: each ends in a correct result or a one-line error, never a traceback,
never the key on the terminal or in a file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from extractor.attacks import AttackSpec
from extractor.errors import TrawlError
from extractor.sampling import run_attacks
from extractor.sampling.run_folder import RunDir
from flaky_server import FlakyServer, expected_completion
from repo import one_line_error, trawl

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = dict(timeout=2.0, max_retries=1, backoff_base=0.01, backoff_max=0.05, progress=False)


def _spec(words="a,b", samples=2, max_tokens=10):
    return [AttackSpec("divergence", {"words": words, "samples": samples, "repetitions": 3,
                                      "max_tokens": max_tokens})]


def _files_hold(folder: Path, secret: str) -> list[str]:
    """Files under ``folder`` holding ``secret`` or a prefix of it of 8+ characters."""
    probe = secret[:8].encode()
    hits = []
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                if probe in fh.read():
                    hits.append(os.path.join(root, f))
    return hits


def _sample_args(url, out, *extra):
    return ("sample", "--endpoint", url, "--model", "flaky-model", "--attack", "divergence",
            "--param", "words=a", "--param", "samples=2", "--param", "repetitions=3", "--param", "max_tokens=6",
            "--out", str(out), "--no-progress", "--max-retries", "1", *extra)


# -- 1. the API key: validated when read, never printed ------------------------------------------

@pytest.mark.parametrize("bad", [KEY + "\n", KEY + "\r\n", " " + KEY + "\t"])
def test_key_with_surrounding_whitespace_is_stripped(tmp_path, monkeypatch, bad):
    monkeypatch.setenv("HOSTILE_KEY", bad)
    with FlakyServer(faults=(), require_key=KEY) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec(),
                        api_key_env="HOSTILE_KEY", **FAST)
        assert s.status == "finished" and srv.auth_headers == {"Bearer " + KEY}


def test_key_with_a_control_character_is_one_line_without_the_key(tmp_path):
    with FlakyServer(faults=()) as srv:
        os.environ["HOSTILE_KEY_CLI"] = KEY[:10] + "\n" + KEY[10:]
        try:
            r = trawl(*_sample_args(srv.base_url, tmp_path / "run", "--api-key-env", "HOSTILE_KEY_CLI"))
        finally:
            del os.environ["HOSTILE_KEY_CLI"]
    one_line_error(r, "$HOSTILE_KEY_CLI")
    assert "control character" in r.stderr
    assert KEY[:8] not in r.stderr + r.stdout and KEY[10:18] not in r.stderr + r.stdout
    assert not _files_hold(tmp_path, KEY[:10]) and not _files_hold(tmp_path, KEY[10:])


def test_campaign_json_never_holds_the_key(tmp_path):
    from campaign_helpers import make_index, q

    idx = make_index(tmp_path / "ix")
    with FlakyServer(faults=()) as srv:
        toml = tmp_path / "c.toml"
        toml.write_text(f"""
[campaign]
name = "leak"
out = {q(tmp_path / "out")}
[target]
model = "flaky-model"
version = "v1"
endpoints = [{q(srv.base_url)}]
api_key_env = "HOSTILE_KEY_RUN"
max_retries = 1
timeout = 5
[[attacks]]
name = "divergence"
words = ["a"]
samples = 2
repetitions = 3
max_tokens = 6
[index]
path = {q(idx)}
[history]
record = false
""")
        os.environ["HOSTILE_KEY_RUN"] = KEY[:10] + "\n" + KEY[10:]
        try:
            r = trawl("run", str(toml), "--no-progress")
        finally:
            del os.environ["HOSTILE_KEY_RUN"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert KEY[:8] not in r.stderr + r.stdout
    st = json.loads((tmp_path / "out" / "campaign.json").read_text())
    assert st["status"] == "failed" and "control character" in st["steps"]["sample"]["error"]
    assert not _files_hold(tmp_path / "out", KEY)


# -- 2. scrub first, then cut -------------------------------------------------------------------

def test_error_body_echoing_the_key_at_the_cut_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    with FlakyServer(faults=("echo_key",), max_failures=50) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec(),
                        api_key_env="HOSTILE_KEY", max_consecutive_failures=100, **FAST)
    assert s.status == "incomplete" and s.failed_requests > 0
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    errors = st["sessions"][-1]["errors"]
    assert errors and all("invalid token" in e for e in errors), errors
    assert not any("sk-test" in e for e in errors), errors
    assert not _files_hold(tmp_path / "run", KEY)


def test_scrub_cuts_after_scrubbing_and_hides_a_cut_prefix(monkeypatch):
    from extractor.backends.http import HTTPClient

    monkeypatch.setenv("HOSTILE_KEY", KEY)
    h = HTTPClient("http://127.0.0.1:9", api_key_env="HOSTILE_KEY")
    cut = h.scrub("a" * 190 + " Bearer " + KEY + " tail", limit=200)
    assert len(cut) <= 200 and "sk-test" not in cut, cut
    assert h.scrub("a" * 100 + " Bearer " + KEY[:12], limit=200) == "a" * 100 + " Bearer ***"   # cut by the server
    assert h.scrub("x" * 50 + KEY, limit=60) == "x" * 50 + "***"
    assert h.scrub("prefix sk-t", limit=200) == "prefix sk-t"   # short tails that happen to match stay


def _sampled(req) -> bool:
    """A request of the run (the divergence attack's prompt), not of the start-up probe."""
    return isinstance(req, dict) and str(req.get("prompt", "")).startswith("Repeat")


# -- 3. invalid UTF-8 becomes U+FFFD --------------------------------------------------------------

def _invalid_utf8(path, req, body):
    if path == "/v1/completions" and _sampled(req):
        data = json.loads(body)
        for c in data["choices"]:
            c["text"] = c["text"] + "\udcff"   # placeholder, replaced by a raw 0xff byte below
            c["logprobs"] = None
        return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass").replace(
            "\udcff".encode("utf-8", "surrogatepass"), b"\xff")
    return body


def test_invalid_utf8_in_an_answer_becomes_u_fffd(tmp_path):
    with FlakyServer(faults=(), mutate=_invalid_utf8) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec("a"),
                        **FAST)
    assert s.status == "finished" and s.finished == 2, s
    rows = RunDir(str(tmp_path / "run")).read_generations().to_pylist()
    for r in rows:
        p = json.loads(r["params"])
        assert r["completion"] == expected_completion(r["prompt"], r["seed"], p["temperature"],
                                                      p["max_tokens"]) + "\ufffd"


# -- 4. malformed answers: one line, retried, run.json says why -----------------------------------

def _swap(field, value):
    def mutate(path, req, body):
        if path != "/v1/completions" or not _sampled(req):
            return body
        data = json.loads(body)
        if field == "body":
            return json.dumps(value).encode()
        if field.startswith("usage."):
            data["usage"][field[6:]] = value
        elif field == "choices.0":
            data["choices"][0] = value
        elif field.startswith("choice."):
            data["choices"][0][field[7:]] = value
        else:
            data[field] = value
        return json.dumps(data).encode()
    return mutate


REFUSED = [("usage", "lots"), ("usage.prompt_tokens", "abc"), ("usage.completion_tokens", -5),
           ("usage.prompt_tokens", 1.5), ("usage.completion_tokens", [1]), ("usage.prompt_tokens", True),
           ("body", [1, 2]), ("body", "text"), ("body", None), ("choices.0", "text"), ("choices.0", [1]),
           ("choice.index", "zero"), ("choice.index", 7), ("choice.finish_reason", {"a": 1})]
# malformed token information only costs the logprobs path: boundaries come from the tokenizer
READ_RIGHT = [("choice.logprobs", {"tokens": "abc", "token_logprobs": 5}),
              ("choice.logprobs", {"tokens": [1, 2], "token_logprobs": ["x", 10 ** 400]}),
              ("choice.logprobs", [1, 2]), ("usage", None)]
MALFORMED = [(f, v, True) for f, v in REFUSED] + [(f, v, False) for f, v in READ_RIGHT]


@pytest.mark.parametrize("field,value,refused", MALFORMED, ids=[f"{f}={v!r}"[:40] for f, v, _ in MALFORMED])
def test_malformed_completion_is_refused_or_read_right(tmp_path, field, value, refused):
    with FlakyServer(faults=(), mutate=_swap(field, value)) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec("a"),
                        max_consecutive_failures=100, **FAST)
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    rows = RunDir(str(tmp_path / "run")).read_generations().to_pylist() if st["finished"] else []
    for r in rows:   # anything stored is what the model said, with sane numbers
        p = json.loads(r["params"])
        assert r["completion"] == expected_completion(r["prompt"], r["seed"], p["temperature"], p["max_tokens"])
        assert r["completion_tokens"] == len(r["token_offsets"]) > 0
    assert st["prompt_tokens"] >= 0 and st["completion_tokens"] >= 0
    errors = st["sessions"][-1]["errors"]
    if refused:
        assert s.status == st["status"] == "incomplete" and not rows and s.failed_requests == 2, st
        assert errors and all("\n" not in e and ("malformed" in e or "unparseable" in e) for e in errors), errors
    else:
        assert s.status == st["status"] == "finished" and len(rows) == 2 and not errors, st


def test_malformed_tokenize_answer_is_one_line(tmp_path):
    def mutate(path, req, body):
        if path == "/extras/tokenize" and "Repeat" not in str((req or {}).get("input", "")) and \
                "quick" not in str((req or {}).get("input", "")) and len(str((req or {}).get("input"))) > 8:
            return b"[1, 2, 3]"
        if path == "/extras/detokenize" and len((req or {}).get("tokens", [])) > 40:
            return b'{"text": 5}'
        return body
    with FlakyServer(faults=(), logprobs=False, mutate=mutate) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec("a"),
                        **FAST)
    assert s.status == "finished"
    for r in RunDir(str(tmp_path / "run")).read_generations().to_pylist():
        assert r["token_offsets"] is None or r["token_offsets"][0] == 0


def test_a_crash_mid_run_is_recorded_in_run_json(tmp_path, monkeypatch):
    from extractor.sampling import requests as sender_mod

    def boom(self, unit):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(sender_mod.Sender, "execute", boom)
    with FlakyServer(faults=()) as srv:
        with pytest.raises(RuntimeError):
            run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec("a"), **FAST)
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["status"] == "failed" and "simulated bug" in st["error"], st


# -- 5. the start-up probe honours --timeout -------------------------------------------------------

def test_probe_honours_the_timeout(tmp_path):
    with FlakyServer(faults=(), delay=60) as srv:
        t0 = time.monotonic()
        r = trawl(*_sample_args(srv.base_url, tmp_path / "run", "--timeout", "2"))
        took = time.monotonic() - t0
    one_line_error(r, srv.base_url)
    assert took < 20, f"the probe took {took:.0f} s with --timeout 2"


# -- 6. concurrency is bounded ------------------------------------------------------------------

def test_concurrency_above_the_maximum_is_one_line(tmp_path):
    r = trawl(*_sample_args("http://127.0.0.1:9", tmp_path / "run", "--concurrency", "99999999999999999"))
    one_line_error(r, "concurrency")
    assert "4096" in r.stderr


def test_large_concurrency_costs_nothing_for_small_work(tmp_path):
    with FlakyServer(faults=()) as srv:
        t0 = time.monotonic()
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=_spec("a"),
                        concurrency=4096, **FAST)
        assert s.status == "finished" and time.monotonic() - t0 < 10


# -- 7. the size of an answer is capped --------------------------------------------------------------

def test_oversized_answer_fails_the_request_and_is_not_stored(tmp_path):
    with FlakyServer(faults=("huge",), max_failures=1, huge_bytes=8 << 20) as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model,
                        attacks=_spec("a,b,c,d"), max_consecutive_failures=100, **FAST)
    rows = RunDir(str(tmp_path / "run")).read_generations().to_pylist()
    assert all(len(r["completion"]) < 1000 for r in rows)
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    errors = st["sessions"][-1]["errors"]
    assert s.failed_requests > 0 and errors and all("bytes" in e and "\n" not in e for e in errors), errors


# -- fuzz: random corruptions of good answers ---------------------------------------------------

_ODD = [None, True, False, -1, 0, 1.5, 10 ** 30, "abc", "", [], {}, [1, "x"], {"a": 1}, "\udcff"]


class Corrupter:
    """``mutate`` for FlakyServer: each answer (probe, completions, tokenize, detokenize) is corrupted
    with probability ``rate``: bytes flipped, cut short, a JSON value swapped for one of another type,
    a key dropped, the body wrapped in a list, invalid UTF-8 inserted. Deterministic per (seed, path,
    request, attempt)."""

    def __init__(self, seed: int, rate: float):
        import threading

        self.seed, self.rate = seed, rate
        self.attempts: dict = {}
        self.lock = threading.Lock()

    def __call__(self, path, req, body):
        import random

        key = (path, json.dumps(req, sort_keys=True))
        with self.lock:
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
        rng = random.Random(f"{self.seed}|{key}|{n}")
        if rng.random() >= self.rate:
            return body
        kind = rng.choice(["flip", "cut", "swap", "swap", "swap", "drop", "wrap", "utf8"])
        if kind == "flip":
            b = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            return bytes(b)
        if kind == "cut":
            return body[:rng.randrange(len(body))]
        if kind == "utf8":
            i = rng.randrange(len(body))
            return body[:i] + rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80"]) + body[i:]
        data = json.loads(body)
        if kind == "wrap":
            return json.dumps([data]).encode()
        nodes = []   # (container, key) of every value in the document

        def walk(v):
            if isinstance(v, dict):
                for k in v:
                    nodes.append((v, k))
                    walk(v[k])
            elif isinstance(v, list):
                for k in range(len(v)):
                    nodes.append((v, k))
                    walk(v[k])
        walk(data)
        if not nodes:
            return json.dumps(rng.choice(_ODD)).encode("utf-8", "surrogatepass")
        parent, k = rng.choice(nodes)
        if kind == "drop" and isinstance(parent, dict):
            del parent[k]
        else:
            parent[k] = rng.choice(_ODD)
        return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _delivered_texts(srv) -> set[str]:
    """Every choice text the server sent in an answer trawl could read (what the model 'said')."""
    from extractor.backends import clean_text

    out = set()
    for path, _, body in srv.sent:
        if path != "/v1/completions":
            continue
        try:
            data = json.loads(body.decode("utf-8", "replace"))
        except ValueError:
            continue
        for c in data.get("choices", []) if isinstance(data, dict) and isinstance(data.get("choices"), list) else []:
            if isinstance(c, dict) and isinstance(c.get("text"), str):
                out.add(clean_text(c["text"]))
    return out


@pytest.mark.parametrize("token_path", ["logprobs", "tokenize"])
def test_fuzz_corrupted_answers_give_correct_rows_or_one_line(tmp_path, token_path):
    outcomes = {"finished": 0, "incomplete": 0, "refused": 0}
    for seed in range(10):
        run = tmp_path / f"run{seed}"
        with FlakyServer(faults=(), logprobs=token_path == "logprobs", mutate=Corrupter(seed, 0.3)) as srv:
            try:
                s = run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=_spec("a,b"),
                                concurrency=2, timeout=2.0, max_retries=3, backoff_base=0.01, backoff_max=0.02,
                                progress=False, max_consecutive_failures=100)
                outcomes[s.status] = outcomes.get(s.status, 0) + 1
            except TrawlError as exc:   # the probe saw a broken server: one line, and nothing was run
                assert "\n" not in str(exc), str(exc)
                outcomes["refused"] += 1
                s = None
            delivered = _delivered_texts(srv)
        if not (run / "run.json").exists():
            assert s is None
            continue
        st = json.loads((run / "run.json").read_text())
        assert st["status"] in ("finished", "incomplete"), (seed, st["status"], st.get("error"))
        assert all("\n" not in e for e in st["sessions"][-1]["errors"])
        assert isinstance(st["prompt_tokens"], int) and st["prompt_tokens"] >= 0
        assert isinstance(st["completion_tokens"], int) and st["completion_tokens"] >= 0
        rows = RunDir(str(run)).read_generations().to_pylist() if st["finished"] else []
        assert len(rows) == st["finished"] == s.finished
        for r in rows:
            p = json.loads(r["params"])
            want = expected_completion(r["prompt"], r["seed"], p["temperature"], p["max_tokens"])
            assert r["completion"] == want or r["completion"] in delivered, (seed, r["completion"])
            offs, data = r["token_offsets"], r["completion"].encode()
            if offs is None:
                assert json.loads(r["extra"])["token_source"] == "none"
            elif data:
                assert offs[0] == 0 and all(a < b for a, b in zip(offs, offs[1:])) and offs[-1] < len(data)
                assert r["completion_tokens"] == len(offs)
    assert outcomes["finished"] >= 3, outcomes   # the corruption rate leaves most runs whole


def test_fuzz_cli_is_one_line_or_a_result(tmp_path):
    for seed in range(3):
        with FlakyServer(faults=(), mutate=Corrupter(100 + seed, 0.6)) as srv:
            r = trawl(*_sample_args(srv.base_url, tmp_path / f"run{seed}", "--timeout", "2"))
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode in (0, 2, 3), (r.returncode, r.stderr)
        if r.returncode == 2:
            one_line_error(r, "trawl: error: ")
