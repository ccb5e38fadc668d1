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
