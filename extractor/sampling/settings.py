"""How a sampler run behaves, apart from what it plans: :class:`SamplerSettings`.

Guarantees: a :class:`SamplerSettings` that exists is valid. The numeric settings
are checked once, in ``__post_init__``, before anything is written (a bad one used
to surface mid-run); a bad value is a :class:`extractor.errors.TrawlError` with a
one-line message naming the setting (``concurrency must be an integer from 1 to 4096, got 0``).
``concurrency`` is at most :data:`MAX_CONCURRENCY` (4096): each request in flight is a
thread of this process, and no server batches more.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from corpora.hygiene import visible
from extractor.errors import TrawlError

MAX_CONCURRENCY = 4096   # requests in flight: one worker thread each (see engine.py)


def _stderr_log(msg: str) -> None:
    print(f"trawl: {visible(msg)}", file=sys.stderr)   # log lines carry server text: no raw control characters


DTYPES = ("auto", "float32", "bfloat16", "float16")   # vLLM's --dtype values trawl passes on


@dataclass(frozen=True)
class SamplerSettings:
    """The keyword arguments of :func:`extractor.sampling.run_attacks` beyond the plan and the budget.

    ``concurrency`` requests in flight at most (1 to :data:`MAX_CONCURRENCY`); ``timeout``/``max_retries``/``backoff_*`` per
    request (see the backend); ``run_id`` (default: a hash of the plan) and ``seed`` fix request
    ids and seeds; ``use_n``/``max_n`` and ``use_prompt_lists``/``max_prompts`` let one request
    serve several generations; ``flush_rows``/``flush_seconds`` roll Parquet parts;
    ``drain_seconds`` is how long a stopping run waits for the requests in flight;
    ``max_consecutive_failures`` (default ``max(10, 2 * concurrency)``) stops a run whose
    requests keep failing; ``backend``, ``api``, ``api_key_env``, ``token_info`` and ``tokenizer_file``
    choose and configure the backend (``dtype``: the in-process vLLM engine's, default its own choice); ``log`` receives one-line messages (default: stderr,
    prefixed ``trawl: ``).
    """

    concurrency: int = 64
    resume: bool = False
    progress: bool = True
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 300.0
    max_retries: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    run_id: str | None = None
    seed: int = 0
    use_n: bool = True
    max_n: int = 16
    use_prompt_lists: bool = True
    max_prompts: int = 8
    flush_rows: int = 4096
    flush_seconds: float = 30.0
    drain_seconds: float = 60.0
    max_consecutive_failures: int | None = None
    backend: str = "openai"
    token_info: str = "auto"
    tokenizer_file: str | None = None
    api: str = "completions"   # "completions", "chat" or "auto" (backend openai; see backends/chat.py)
    ray: dict | None = None    # backend vllm: an [executor] table with kind = "ray" (backends/vllm_ray.py)
    dtype: str = "auto"        # backend vllm: the engine's dtype (float32 for exact (n,p), see discoverable_np)
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        def _num(name, ok, what):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not ok(v):
                raise TrawlError(f"{name} must be {what}, got {v!r}")

        _num("concurrency", lambda v: 1 <= v <= MAX_CONCURRENCY and v == int(v),
             f"an integer from 1 to {MAX_CONCURRENCY}")
        _num("timeout", lambda v: 0 < v < float("inf"), "a number of seconds > 0")
        _num("max_retries", lambda v: v >= 0 and v == int(v), "an integer >= 0")
        _num("drain_seconds", lambda v: 0 <= v < float("inf"), "a finite number of seconds >= 0")
        _num("max_n", lambda v: 1 <= v < float("inf") and v == int(v), "an integer >= 1")
        _num("max_prompts", lambda v: 1 <= v < float("inf") and v == int(v), "an integer >= 1")
        _num("flush_rows", lambda v: 1 <= v < float("inf") and v == int(v), "an integer >= 1")
        _num("flush_seconds", lambda v: 0 <= v < float("inf"), "a finite number >= 0")
        _num("backoff_base", lambda v: 0 <= v < float("inf"), "a finite number of seconds >= 0")
        _num("backoff_max", lambda v: 0 <= v < float("inf"), "a finite number of seconds >= 0")
        _num("seed", lambda v: abs(v) < float("inf") and v == int(v), "an integer")
        if self.max_consecutive_failures is not None:
            _num("max_consecutive_failures", lambda v: 1 <= v < float("inf") and v == int(v), "an integer >= 1")
        if self.api not in ("completions", "chat", "auto"):
            raise TrawlError(f"api must be completions, chat or auto, got {self.api!r}")
        if self.dtype not in DTYPES:
            raise TrawlError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.dtype != "auto" and self.backend != "vllm":
            raise TrawlError("dtype is for the in-process vllm backend; a server's dtype is set where it is started "
                             "(trawl serve MODEL --vllm-arg=--dtype --vllm-arg=float32)")

    @property
    def logger(self) -> Callable[[str], None]:
        """``log``, or one line on stderr per message."""
        return self.log or _stderr_log

    @property
    def failure_limit(self) -> int:
        """Requests failing in a row that stop the run."""
        return self.max_consecutive_failures or max(10, 2 * self.concurrency)
