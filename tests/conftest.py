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
