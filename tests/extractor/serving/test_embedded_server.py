"""The embedded model, served by the real llama.cpp server, answers over HTTP."""
from __future__ import annotations

import requests

from extractor.serving.embedded import EmbeddedServer, default_model_path


def test_model_is_assembled_once_and_reused():
    first = default_model_path()
    mtime = first.stat().st_mtime_ns
    second = default_model_path()
    assert first == second
    assert second.stat().st_mtime_ns == mtime  # not re-joined
    with open(first, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_greedy_continuation_of_a_famous_text(local_server):
    # A base model continues the US Constitution's preamble verbatim for a while:
    # this is the memorization trawl measures, seen through the real server.
    r = requests.post(
        local_server.base_url + "/v1/completions",
        json={
            "model": local_server.model,
            "prompt": "We the People of the United States, in Order to form a more perfect Union,",
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=120,
    )
    r.raise_for_status()
    body = r.json()
    assert body["usage"]["completion_tokens"] == 12
    assert body["choices"][0]["text"].startswith(" establish Justice, insure domestic Tranquility")


def test_server_is_stopped_on_exit(tmp_path):
    srv = EmbeddedServer(log_path=tmp_path / "log.txt")
    with srv:
        url = srv.base_url
        assert requests.get(url + "/v1/models", timeout=5).status_code == 200
    try:
        requests.get(url + "/v1/models", timeout=2)
    except requests.ConnectionError:
        return
    raise AssertionError("server still answering after stop()")
