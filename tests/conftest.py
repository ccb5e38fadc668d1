"""Shared fixtures.

``local_server``: the real embedded model (Gemma-3-270m GGUF) served by the
real llama.cpp OpenAI-compatible server on a free loopback port, started once
per test session. Tests that need it are end-to-end tests: they talk HTTP to a
real model, nothing is mocked.
"""
from __future__ import annotations

import pytest

from extractor.serving.embedded import EmbeddedServer


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with EmbeddedServer(log_path=log) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    """Each test probes its own servers: the backend caches a probe per (endpoint, model, ...) for the
    life of the process, and test servers reuse freed loopback ports, so a later test's server could
    otherwise be taken for an earlier one on the same port (seen: a server without token information
    accepted because a server with logprobs had had its port)."""
    from extractor.backends import openai

    openai._PROBE_CACHE.clear()
    yield
