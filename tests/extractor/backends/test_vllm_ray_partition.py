"""The Ray vLLM backend's routing, without vLLM or Ray (in-process stand-ins for the actors): the
request with seed s runs on engine s mod N, whatever the order or threads it comes from; tokens go
to one engine; the backend keeps the name ``vllm`` (run ids do not depend on the engine count)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from corpora.executor import LocalExecutor
from extractor.backends import make_backend
from extractor.backends import vllm_ray
from extractor.backends.base import Capabilities
from extractor.errors import TrawlError


class FakeWorker:
    made: list = []

    def __init__(self, endpoint, model, engine_args, want_logprobs, api):
        self.seen: list = []
        FakeWorker.made.append(self)

    def probe(self):
        return Capabilities(server="vllm-offline", server_version="0.0", seed=True)

    def complete(self, prompt, params, n, seed, kwargs):
        self.seen.append(seed)
        return f"{prompt}:{seed}"

    def call(self, method, args, kwargs):
        return (method, FakeWorker.made.index(self))


@pytest.fixture
def backend(monkeypatch):
    FakeWorker.made = []
    monkeypatch.setattr(vllm_ray, "EngineWorker", FakeWorker)
    be = vllm_ray.VLLMRayBackend(model="m", ray={"kind": "ray", "workers": 3}, executor=LocalExecutor())
    be.probe()
    yield be
    be.close()


def test_seed_mod_engines(backend):
    seeds = list(range(30))
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda s: backend.complete("p", {}, seed=s), reversed(seeds)))
    assert out == [f"p:{s}" for s in reversed(seeds)]
    assert [sorted(w.seen) for w in FakeWorker.made] == [[s for s in seeds if s % 3 == i] for i in range(3)]
    assert backend.tokenize("x") == ("tokenize", 0) and backend.name == "vllm"
    assert "s mod 3" in backend.capabilities.notes[-1]


def test_make_backend_picks_ray_only_when_asked(monkeypatch):
    monkeypatch.setattr(vllm_ray, "EngineWorker", FakeWorker)
    be = make_backend("vllm", model="m", ray={"kind": "ray", "workers": 2})
    assert isinstance(be, vllm_ray.VLLMRayBackend) and be.endpoint == "vllm://m"
    with pytest.raises(TrawlError, match="unknown key 'engines'"):
        make_backend("vllm", model="m", ray={"kind": "ray", "engines": 2})
    assert vllm_ray.engine_for(None, ["a", "b"], 4) == vllm_ray.engine_for(None, ["a", "b"], 4)
    assert vllm_ray.engine_for(12345, "x", 1) == 0
