"""The probe cache of a long-lived process cannot take a different server on a reused port for the
one it probed (issue 17): entries are keyed by the server's identity (its model list and version),
live at most PROBE_CACHE_SECONDS, and a failed probe forgets the endpoint."""
from __future__ import annotations

from http.server import ThreadingHTTPServer

import pytest

from draw_server import VOCAB, DrawServer
from extractor.backends import OpenAIBackend, openai
from extractor.errors import TrawlError


def _backend(url, **kw):
    return OpenAIBackend(url, DrawServer.model, api_key_env=None, max_retries=0, timeout=5, **kw)


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


def _rot(i: int, k: int) -> int:
    """A vocabulary id (10 ... 10 + len - 1) rotated by k; other ids (characters) as they are."""
    return 10 + (i - 10 + k) % len(VOCAB) if 10 <= i < 10 + len(VOCAB) else i


class _ShiftedServer(DrawServer):
    """The same API with another tokenizer: each token id is one more (the vocabulary rotated)."""

    def tokenize(self, text):
        return [_rot(i, 1) for i in DrawServer.tokenize(text)]

    def detokenize(self, ids):
        return DrawServer.detokenize([_rot(i, -1) for i in ids])


def test_decoded_pieces_are_not_shared_with_a_different_server_on_the_same_port():
    """Neighbour of the probe cache: the decoded token pieces were cached per (endpoint, model), so a
    server with another tokenizer on a reused port got the earlier server's pieces (wrong token
    boundaries, silently). Now they are shared per server identity."""
    ids = DrawServer.tokenize(" poem data the poem")
    with DrawServer(version="0.32.0") as a:
        url = a.base_url
        be = _backend(url)
        be.probe()
        assert be.boundaries.pieces(ids) == [VOCAB[i - 10] for i in ids]
    port = int(url.rsplit(":", 1)[1])
    with _on_port(_ShiftedServer(version="9.9.9"), port):
        be2 = _backend(url)
        be2.probe()
        assert be2.boundaries.pieces(ids) == [VOCAB[(i - 11) % len(VOCAB)] for i in ids]
