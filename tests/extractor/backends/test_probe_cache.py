"""The probe cache of a long-lived process cannot take a different server on a reused port for the
one it probed (issue 17): entries are keyed by the server's identity (its model list and version),
live at most PROBE_CACHE_SECONDS, and a failed probe forgets the endpoint."""
from __future__ import annotations

from http.server import ThreadingHTTPServer

import pytest

from draw_server import DrawServer
from extractor.backends import OpenAIBackend, openai
from extractor.errors import TrawlError


def _backend(url):
    return OpenAIBackend(url, DrawServer.model, api_key_env=None, max_retries=0, timeout=5)


def _on_port(srv: DrawServer, port: int) -> DrawServer:
    """``srv`` moved to ``port`` (a port another test server has just left)."""
    handler = srv.httpd.RequestHandlerClass
    srv.httpd.server_close()
    srv.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.httpd.daemon_threads = True
    srv.base_url = f"http://127.0.0.1:{port}"
    return srv


def _probes(srv: DrawServer) -> int:
    return sum(1 for p in srv.payloads if p.get("prompt") == "The quick brown fox")


def test_a_different_server_on_the_same_port_is_probed_afresh():
    with DrawServer(version="0.32.0") as a:
        url = a.base_url
        assert _backend(url).probe().server == "vllm"
        first = _probes(a)
        assert first >= 1
        assert _backend(url).probe().server == "vllm"          # same server: the cache answers
        assert _probes(a) == first
    port = int(url.rsplit(":", 1)[1])
    b = _on_port(DrawServer(version=""), port)                 # no /version: not vLLM
    with b:
        caps = _backend(url).probe()
        assert caps.server != "vllm" and _probes(b) >= 1       # probed, not the cached vLLM answer


def test_an_entry_older_than_the_ttl_is_probed_again(monkeypatch):
    with DrawServer() as a:
        _backend(a.base_url).probe()
        first = _probes(a)
        monkeypatch.setattr(openai, "PROBE_CACHE_SECONDS", 0.0)
        _backend(a.base_url).probe()
        assert _probes(a) > first


def test_a_failed_probe_forgets_the_endpoint():
    with DrawServer() as a:
        url = a.base_url
        _backend(url).probe()
        assert any(k[0] == url for k in openai._PROBE_CACHE)
    with pytest.raises(TrawlError, match="cannot reach"):
        _backend(url).probe()
    assert not any(k[0] == url for k in openai._PROBE_CACHE)
