"""``Backend.score``: the echo path over HTTP (a hand-made server, hostile answers) and the
embedded model's llama.cpp server checked against llama.cpp in process (extractor/backends/llama_inprocess.py).

What the real comparison found (llama-cpp-python 0.3.x, Gemma-3-270m Q4_K_M): the server's echo
logprobs equal the in-process log-softmax to < 1e-5 at every position but the first, which the
server leaves null (it does not score the first prompt token given BOS); the top-k alternatives
agree too; token boundaries are identical.
"""
from __future__ import annotations

import json
import math
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from extractor.backends import make_backend
from extractor.backends.base import BackendError, Capabilities
from extractor.backends.scoring_http import parse_echo, vocab_stats_from_top
from tests.draw_server import send_body
from tests.json_mutations import put, walk

TEXT = "We the People"
ECHO = {"text": TEXT + ",", "finish_reason": "length", "index": 0,
        "logprobs": {"tokens": ["We", " the", " People", ","], "text_offset": [0, 2, 6, 13],
                     "token_logprobs": [None, -9.5, -3.25, -0.5],
                     "top_logprobs": [None, {" are": -1.5, " the": -9.5}, {" people": -1.0, " People": -3.25},
                                      {",": -0.5}]}}


class CannedServer:
    """Answers every POST /v1/completions with the next canned body (bytes), and records requests."""

    def __init__(self, bodies):
        self.bodies = list(bodies)
        self.requests = []

    def __enter__(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                srv.requests.append(json.loads(self.rfile.read(n)))
                body = srv.bodies.pop(0) if len(srv.bodies) > 1 else srv.bodies[0]
                send_body(self, 200, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _backend(url):
    be = make_backend("openai", endpoint=url, model="m", api_key_env=None, max_retries=0)
    be.capabilities = Capabilities(score="echo", logprobs_values=True)
    return be


def test_parse_echo_known_answer():
    s = parse_echo(ECHO, TEXT, "", top_k=1, vocab_stats=True)
    assert s.token_offsets == [0, 2, 6]
    assert math.isnan(s.logprobs[0]) and s.logprobs[1:] == [-9.5, -3.25]
    assert s.top_logprobs[1:] == [{" are": -1.5}, {" people": -1.0}]
    # renormalised top-k: weights e^-1.5, e^-9.5 over their sum
    w = np.exp([-1.5, -9.5]) / np.exp([-1.5, -9.5]).sum()
    mu = float(w @ [-1.5, -9.5])
    assert s.vocab_mean[1] == pytest.approx(mu) and s.vocab_var[1] == pytest.approx(float(w @ (np.array([-1.5, -9.5]) - mu) ** 2))
    assert not s.exact_vocab_stats and "top-k" in s.note
    # with a context: only the text's tokens, offsets relative to the text
    s2 = parse_echo(ECHO, TEXT, "We", top_k=0, vocab_stats=False)
    assert s2.token_offsets == [0, 4] and s2.logprobs == [-9.5, -3.25] and s2.top_logprobs is None


def test_vocab_stats_from_top_single_and_empty():
    assert vocab_stats_from_top({"a": -0.1}) == (-0.1, 0.0)
    assert all(math.isnan(x) for x in vocab_stats_from_top({}))


def test_bos_token_without_value_is_dropped():
    vllm_like = json.loads(json.dumps(ECHO))
    lp = vllm_like["logprobs"]
    lp["tokens"] = ["<bos>"] + lp["tokens"]
    lp["token_logprobs"] = [None, -4.0, -9.5, -3.25, -0.5]
    lp["top_logprobs"] = [None] + lp["top_logprobs"]
    s = parse_echo(vllm_like, TEXT, "", top_k=0, vocab_stats=False)
    assert s.token_offsets == [0, 2, 6] and s.logprobs == [-4.0, -9.5, -3.25]


def test_context_inside_a_token_is_refused_without_retry():
    with CannedServer([json.dumps({"choices": [ECHO]}).encode()]) as srv:
        be = _backend(srv.url)
        with pytest.raises(BackendError, match="share a token") as ei:
            be.score(["e People"], contexts=["We th"])   # the boundary falls inside " the"
        assert not ei.value.retryable


def test_score_over_http_sends_echo_and_reads_answers():
    with CannedServer([json.dumps({"choices": [ECHO]}).encode()]) as srv:
        out = _backend(srv.url).score([TEXT], top_k=2)
        req = srv.requests[0]
    assert req["echo"] is True and req["logprobs"] == 2 and req["max_tokens"] == 1 and req["prompt"] == TEXT
    assert out[0].logprobs[1:] == [-9.5, -3.25] and out[0].top_logprobs[1] == {" are": -1.5, " the": -9.5}


def test_hostile_answers_give_one_line_or_a_consistent_score():
    """Fuzz: every value of a good answer replaced by hostile ones, and random truncations: the
    result is a BackendError with one line, or a score whose shape is sound."""
    body = {"choices": [ECHO], "usage": {"prompt_tokens": 3}}
    hostile = [None, True, -1, 1e308, "x", "", [], {}, [None], {"a": 1}, "\ud800", float("nan")]
    cases = []
    for path in walk(body, list_items=4):
        for v in hostile:
            cases.append(json.dumps(put(body, path, v)).encode())
    raw = json.dumps(body).encode()
    rng = random.Random(14)
    for _ in range(40):
        cut = rng.randrange(len(raw))
        cases.append(raw[:cut])
        b = bytearray(raw)
        b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(bytes(b))
    rng.shuffle(cases)
    cases = cases[:300]
    with CannedServer(cases + [b"{}"]) as srv:
        be = _backend(srv.url)
        ok = bad = 0
        for _ in cases:
            try:
                out = be.score([TEXT], top_k=1, vocab_stats=True)
            except BackendError as exc:
                assert "\n" not in str(exc) and "Traceback" not in str(exc)
                bad += 1
                continue
            s = out[0]
            assert len(s.logprobs) == len(s.token_offsets) == len(s.top_logprobs) == len(s.vocab_mean)
            assert s.token_offsets == sorted(s.token_offsets) and all(0 <= o < len(TEXT.encode()) for o in s.token_offsets)
            assert all(isinstance(x, float) for x in s.logprobs)
            ok += 1
    assert ok and bad


@pytest.mark.slow
def test_embedded_server_echo_matches_llama_in_process(local_server):
    """The llama.cpp server's echo logprobs against llama.cpp in process on the same GGUF."""
    from extractor.backends.llama_inprocess import LlamaScorer

    texts = ["We the People of the United States, in Order to form a more perfect Union",
             " The Lord is my shepherd; I shall not want.", "héllo wörld ✓ 日本語"]
    ctxs = ["", "Psalm 23:", ""]
    be = make_backend("openai", endpoint=local_server.base_url, model=local_server.model, api_key_env=None)
    caps = be.probe()
    assert caps.score == "echo" and not caps.full_distribution
    http = be.score(texts, contexts=ctxs, top_k=3, vocab_stats=True)
    sc = LlamaScorer(local_server.model_path, n_ctx=512, n_threads=1)
    try:
        assert sc.capabilities.full_distribution
        local = sc.score(texts, contexts=ctxs, top_k=3, vocab_stats=True, full=True)
    finally:
        sc.close()
    for text, ctx, h, l in zip(texts, ctxs, http, local):
        assert h.token_offsets == l.token_offsets and l.token_offsets[0] == 0
        assert len(l.token_ids) == len(l.logprobs) == l.full_logprobs.shape[0]
        # the server leaves the first prompt token unscored; every other position agrees
        assert math.isnan(h.logprobs[0]) == (ctx == "") and not math.isnan(l.logprobs[0])
        for a, b in zip(h.logprobs, l.logprobs):
            assert math.isnan(a) or abs(a - b) < 1e-4
        for a, b in zip(h.top_logprobs[1:], l.top_logprobs[1:]):
            assert list(a) == list(b) and all(abs(a[k] - b[k]) < 1e-4 for k in a)
        # exact statistics from the full rows, by brute force
        rows = l.full_logprobs.astype(np.float64)
        p = np.exp(rows)
        assert np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
        assert np.allclose(l.vocab_mean, (p * rows).sum(axis=1), atol=1e-3)
        assert l.exact_vocab_stats and not h.exact_vocab_stats
        assert [float(rows[i, t]) for i, t in enumerate(l.token_ids)] == pytest.approx(l.logprobs, abs=1e-5)
