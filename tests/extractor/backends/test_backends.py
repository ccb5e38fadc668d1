"""Backend pieces without a model: token alignment, endpoint parsing, unreachable servers, secrets."""
from __future__ import annotations

import socket

import pytest

from extractor.backends import OpenAIBackend, normalize_endpoint
from extractor.backends.alignment import AlignmentError, align_tokens
from extractor.errors import TrawlError


def test_align_plain_tokens():
    assert align_tokens(" jumps over", [" jumps", " over"]) == [0, 6]
    assert align_tokens("", []) == []


def test_align_split_characters():
    text = "a🙂b"  # the emoji is 4 bytes, split over 2 byte tokens the server could not decode alone
    assert align_tokens(text, ["a", "", "", "b"]) == [0, 1, 2, 5]
    assert align_tokens(text, ["a", "\ufffd", "\ufffd", "b"]) == [0, 1, 2, 5]
    assert align_tokens(text, ["a", "bytes:\\xf0\\x9f", "bytes:\\x99\\x82", "b"]) == [0, 1, 3, 5]
    assert align_tokens("é", ["", ""]) == [0, 1]


def test_align_rejects_mismatch():
    with pytest.raises(AlignmentError):
        align_tokens("hello", ["help"])
    with pytest.raises(AlignmentError):
        align_tokens("hello world", ["hello"])


def test_normalize_endpoint():
    assert normalize_endpoint("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert normalize_endpoint("http://user:pw@host:1/v1") == "http://host:1"
    with pytest.raises(TrawlError):
        normalize_endpoint("127.0.0.1:8000")


def _dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("TRAWL_UNIT_KEY", "sk-secret-value-123")
    be = OpenAIBackend(f"http://127.0.0.1:{_dead_port()}", "m", api_key_env="TRAWL_UNIT_KEY",
                       max_retries=1, backoff_base=0.01, timeout=2)
    assert "sk-secret" not in repr(be) and "sk-secret" not in str(be.describe())
    with pytest.raises(TrawlError, match="cannot reach the model server") as ei:
        be.probe(use_cache=False)
    assert "sk-secret" not in str(ei.value)


def test_retry_after_forms():
    import email.utils
    import time as _t

    assert OpenAIBackend._retry_after({"Retry-After": "3"}) == 3.0
    assert OpenAIBackend._retry_after({"Retry-After": "0.5"}) == 0.5
    when = email.utils.formatdate(_t.time() + 30, usegmt=True)
    assert 25 <= OpenAIBackend._retry_after({"Retry-After": when}) <= 31
    assert OpenAIBackend._retry_after({"Retry-After": "soon"}) is None
    assert OpenAIBackend._retry_after({}) is None


def test_backoff_is_bounded_full_jitter():
    be = OpenAIBackend("http://127.0.0.1:1", "m", backoff_base=0.5, backoff_max=4.0)
    for attempt in range(10):
        for _ in range(50):
            d = be._backoff(attempt)
            assert 0 <= d <= min(4.0, 0.5 * 2 ** attempt)


def test_bad_token_info_choice():
    with pytest.raises(TrawlError, match="token_info"):
        OpenAIBackend("http://127.0.0.1:1", "m", token_info="magic")


def test_split_ids_on_separator_tokens():
    from extractor.backends.boundaries import _split_ids

    assert _split_ids([5, 6, 1, 2, 7, 1, 2, 8], [1, 2]) == [[5, 6], [7], [8]]
    assert _split_ids([1, 2], [1, 2]) == [[], []]
    assert _split_ids([5], [1, 2]) == [[5]]


def test_shutdown_engines_keeps_only_the_named_model(monkeypatch):
    """Campaigns call shutdown_engines(keep=model) before sampling: the engines of other models
    stop (their memory is given back), the one of this model is reused. No vLLM needed: fake engines."""
    from extractor.backends import vllm_offline

    stopped, closed = [], []

    class Core:
        def __init__(self, name):
            self.name = name

        def shutdown(self):
            stopped.append(self.name)

    class Engine:
        def __init__(self, name):
            self.llm_engine = type("E", (), {"engine_core": Core(name)})()

    class Disp:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    engines = {(m, (("seed", "0"),)): (Engine(m), Disp(m)) for m in ("/m/a", "/m/b", "hub/c")}
    monkeypatch.setattr(vllm_offline, "_ENGINES", dict(engines))
    vllm_offline.shutdown_engines(keep="/m/b")
    assert [k[0] for k in vllm_offline._ENGINES] == ["/m/b"]
    assert sorted(stopped) == sorted(closed) == ["/m/a", "hub/c"]
    vllm_offline.shutdown_engines(keep="/m/b")          # nothing else left: nothing stopped
    assert len(stopped) == 2
    vllm_offline.shutdown_engines()
    assert vllm_offline._ENGINES == {} and sorted(stopped) == ["/m/a", "/m/b", "hub/c"]


def test_every_backend_implements_the_protocol():
    """The sampler and the attacks use the Backend protocol only: every backend has all of it."""
    from extractor.backends import Backend, Capabilities, make_backend
    from extractor.backends.pool import PoolBackend
    from extractor.backends.vllm_offline import VLLMOfflineBackend

    single = make_backend("openai", endpoint="http://127.0.0.1:1", model="m")
    pool = make_backend("openai", endpoint=["http://127.0.0.1:1", "http://127.0.0.1:2"], model="m")
    offline = VLLMOfflineBackend(model="/no/such/model")   # builds no engine before probe
    assert isinstance(pool, PoolBackend)
    for be in (single, pool, offline):
        assert isinstance(be, Backend), type(be).__name__
        assert be.stats() == {} or isinstance(be, PoolBackend)
        assert isinstance(be.endpoints, list) and be.endpoints
    assert single.stats() == {} and offline.stats() == {}
    assert set(pool.stats()) == set(pool.endpoints)
    assert offline.api_key_env is None and single.api_key_env == "OPENAI_API_KEY"
    # deferral is derived from the tokenize endpoint and stays out of run.json's capabilities
    assert not Capabilities().deferred_tokens and Capabilities(tokenize="vllm").deferred_tokens
    assert "deferred_tokens" not in Capabilities(tokenize="vllm").to_dict()


def test_align_fast_path_equals_the_token_walk_on_random_and_adversarial_tokens():
    """align_tokens' running sum of token lengths (tokens that spell the text) gives the offsets of
    the token-by-token walk, and everything else (unknown bytes, bytes: names, mismatches, tokens
    that are not strings) takes the walk: same offsets or the same AlignmentError."""
    import random

    from extractor.backends.alignment import _walk, exact_offsets

    rng = random.Random(1616)
    alphabet = ["a", "b", " ", "é", "🙂", "\n", "\ufffd", "bytes:", "\\x41", "", "ß", "\u200b"]

    def walk(text, toks):
        try:
            return _walk(text, [t if isinstance(t, str) else "" for t in toks])
        except AlignmentError:
            return "error"

    def fast(text, toks):
        try:
            return align_tokens(text, toks)
        except AlignmentError:
            return "error"

    fast_hits = 0
    for _ in range(4000):
        toks = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(0, 12))]
        text = "".join(toks)
        if rng.random() < 0.3:   # damage: drop, change or insert a character, or a non-string token
            kind = rng.randrange(4)
            if kind == 0 and text:
                i = rng.randrange(len(text))
                text = text[:i] + text[i + 1:]
            elif kind == 1:
                text = text + rng.choice(alphabet)
            elif kind == 2 and toks:
                toks[rng.randrange(len(toks))] = rng.choice([None, 5, ["x"]])
            else:
                toks = toks[::-1]
        fast_hits += exact_offsets(text, toks) is not None
        assert fast(text, toks) == walk(text, toks), (text, toks)
    assert fast_hits > 400       # the fast path was exercised
    long = [" memorized"] * 256 + ["é", "🙂"]
    assert align_tokens("".join(long), long) == _walk("".join(long), long)


def test_parse_json_gives_the_standard_librarys_values_with_or_without_orjson():
    """orjson parses what it accepts to json.loads' values (an int past 64 bits becomes a float,
    which the completion check refuses as a count); what it refuses (NaN literals, a BOM, invalid
    UTF-8, lone surrogate escapes, deep nesting) goes the standard way."""
    import json
    import random

    from extractor.backends.http import parse_json

    def std(raw, **kw):
        try:
            return json.loads(raw.decode("utf-8-sig", "replace"), **kw)
        except (ValueError, RecursionError):
            return None

    def _int64_or_float(text):
        v = int(text)
        return v if -2**63 <= v < 2**64 else float(v)

    rng = random.Random(3)

    def value(depth=0):
        k = rng.randrange(8 if depth < 3 else 5)
        return [lambda: rng.randint(-2**70, 2**70), lambda: rng.uniform(-1e6, 1e6), lambda: None,
                lambda: rng.choice([True, False]), lambda: "".join(rng.choice("aé🙂\"\\\n\u2028") for _ in range(4)),
                lambda: [value(depth + 1) for _ in range(rng.randrange(3))],
                lambda: {str(rng.randrange(5)): value(depth + 1) for _ in range(rng.randrange(3))},
                lambda: rng.choice([float("nan"), float("inf"), -0.0])][k]()

    cases = [b"", b"{", b"\xef\xbb\xbf{\"a\": 1}", b"{\"a\": NaN}", b"[\"\\ud800\"]", b"{\"a\": \"\xff\"}",
             b"[" * 5000 + b"]" * 5000, b"123456789012345678901234567890", b"{\"a\": 1, \"a\": 2}"]
    from extractor.backends.openai import check_completion
    from extractor.backends.http import MalformedResponse

    with pytest.raises(MalformedResponse):   # a count past 64 bits: refused, never stored as another number
        check_completion(parse_json(b'{"choices": [{"text": "x", "finish_reason": null}], '
                                    b'"usage": {"prompt_tokens": 123456789012345678901234567890}}'), 1)
    cases += [json.dumps(value()).encode() for _ in range(500)]
    for raw in cases:
        got = json.dumps(parse_json(raw), sort_keys=True)
        assert got in (json.dumps(std(raw), sort_keys=True),     # exact (the standard library's way)
                       json.dumps(std(raw, parse_int=_int64_or_float), sort_keys=True)), raw[:60]
