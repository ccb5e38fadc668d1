"""Backend ``vllm``: vLLM's offline engine (``vllm.LLM``) in this process.

The highest-throughput path on a GPU host: no HTTP, no JSON, token-id prompts
(``TokensPrompt``), ``SamplingParams`` with ``seed``, ``n`` and ``logprobs``, and
token boundaries computed exactly from the generated token ids (no
re-tokenization). The temperature-decay attack runs exactly, one token at a time,
through the :class:`extractor.backends.vllm_logits.TemperatureDecay` logits
processor (``Capabilities.temperature_decay``; the attack then plans one call per
sample instead of the HTTP approximation).

Threads: the sampler calls :meth:`complete` from many worker threads; the calls are
queued and one dispatcher thread hands everything waiting to ``LLM.generate`` as
one batch (vLLM batches continuously inside it), so ``concurrency`` sets the batch
size. One engine per (model, engine options) per process is kept and shared.

Sampling is audit-neutral: fields an attack leaves out get ``top_p=1``, no top-k,
``min_p=0`` and no penalties, and ``generation_config="vllm"`` keeps the model's
``generation_config.json`` out (both recorded in ``capabilities.sampling_defaults``).

Use: ``make_backend("vllm", model="/path/to/hf-folder")`` or
``run_attacks(..., backend="vllm", endpoint="vllm://local", model=PATH)``.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from extractor.backends.base import BackendError, Capabilities, Choice, CompletionResult
from extractor.backends.vllm_http import VLLM_NEUTRAL
from extractor.errors import TrawlError

_ENGINES: dict = {}
_ENGINES_LOCK = threading.Lock()
DEFAULT_ENGINE_ARGS = {"generation_config": "vllm", "max_model_len": 2048, "seed": 0}


def get_engine(model: str, **engine_args):
    """One shared ``vllm.LLM`` per (model, engine_args), with trawl's logits processor."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise TrawlError(f"backend vllm needs vLLM installed in this Python ({exc})") from None
    from extractor.backends.vllm_logits import TemperatureDecay

    args = {**DEFAULT_ENGINE_ARGS, **engine_args}
    from extractor.serve import cpu_env, vllm_is_cpu_build
    if vllm_is_cpu_build():  # bind OpenMP to this process's cores; small KV cache; no compilation
        import os
        for k, v in cpu_env().items():
            os.environ.setdefault(k, v)
        args.setdefault("enforce_eager", True)
    key = (model, tuple(sorted((k, repr(v)) for k, v in args.items())))
    with _ENGINES_LOCK:
        llm = _ENGINES.get(key)
        if llm is None:
            llm = LLM(model=model, logits_processors=[TemperatureDecay], **args)
            _ENGINES[key] = llm
    return llm


def shutdown_engines() -> None:
    """Drop the shared engines (frees the model's memory once nothing else holds them)."""
    import gc
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for llm in engines:
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:
            pass
    del engines
    gc.collect()


class VLLMOfflineBackend:
    name = "vllm"

    def __init__(self, endpoint: str | None = None, model: str = "", *, engine_args: dict | None = None,
                 want_logprobs: bool = False, max_batch: int = 1024, batch_wait: float = 0.005, **_ignored) -> None:
        if not model:
            raise TrawlError("backend vllm needs a model (an HF folder or hub name)")
        self.model = model
        self.endpoint = endpoint if isinstance(endpoint, str) and endpoint else f"vllm://{model}"
        self.endpoints = [self.endpoint]
        self.engine_args = dict(engine_args or {})
        self.want_logprobs = bool(want_logprobs)
        self.max_batch = int(max_batch)
        self.batch_wait = float(batch_wait)
        self.capabilities = Capabilities()
        self.retries = 0
        self._llm = None
        self._tok = None
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLLMOfflineBackend(model={self.model!r})"

    def describe(self) -> dict:
        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model,
                "engine_args": {**DEFAULT_ENGINE_ARGS, **self.engine_args}}

    # -- engine ---------------------------------------------------------------------------
    def _ensure(self):
        with self._lock:
            if self._llm is None:
                self._llm = get_engine(self.model, **self.engine_args)
                self._tok = self._llm.get_tokenizer()
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._dispatch, name="trawl-vllm", daemon=True)
                self._thread.start()
        return self._llm

    def probe(self, use_cache: bool = True) -> Capabilities:
        self._ensure()
        import vllm
        self.capabilities = Capabilities(
            logprobs_tokens=True, logprobs_values=True, n=True, prompt_list=True, seed=True, top_k=True,
            tokenize=None, token_info="ids", server="vllm-offline", server_version=vllm.__version__,
            sampling_defaults=dict(VLLM_NEUTRAL), temperature_decay=True,
            notes=["in-process vLLM engine: token boundaries from the generated token ids; temperature decay "
                   "exact (logits processor)"])
        return self.capabilities

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.interrupt()

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        self._ensure()
        return list(self._tok.encode(text, add_special_tokens=False))

    def detokenize(self, ids: list[int]) -> str:
        self._ensure()
        return self._tok.decode(list(ids))

    def piece(self, token_id: int) -> str:
        return self.detokenize([token_id])

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = list(self._tok.encode(prompt, add_special_tokens=True)) if prompt else []
        if not prompt or not ids:
            # the start-of-text token: BOS, or the end-of-text token for GPT-style vocabularies
            bos = self._tok.bos_token_id if self._tok.bos_token_id is not None else self._tok.eos_token_id
            if not prompt:
                ids = [bos]
        return ids

    def offsets(self, text: str, ids: list[int]) -> list[int]:
        """Byte offset in ``text`` where each token starts: the UTF-8 length of the decoded prefix
        (a token that starts inside a character gets that character's start)."""
        limit = len(text.encode("utf-8"))
        out, prev = [], 0
        for i in range(len(ids)):
            pre = self._tok.decode(ids[:i], skip_special_tokens=True).rstrip("\ufffd") if i else ""
            off = min(max(prev, len(pre.encode("utf-8"))), limit)
            out.append(off)
            prev = off
        return out

    # -- completions ----------------------------------------------------------------------
    def _sampling_params(self, params: dict, n: int, seed: int | None):
        from vllm import SamplingParams

        p = {**VLLM_NEUTRAL, **params}
        decay = p.pop("temperature_decay", None)
        kw = {k: p[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                                "frequency_penalty", "max_tokens", "ignore_eos", "stop", "min_tokens") if k in p}
        kw["top_k"] = int(kw.get("top_k", -1)) if kw.get("top_k", -1) not in (None, 0) else -1
        extra = None
        if decay:
            spec = {"start": float(decay["start"]), "end": float(decay["end"]), "tokens": int(decay["tokens"])}
            extra = {"trawl_temperature_decay": spec}
            kw["temperature"] = spec["end"]
        return SamplingParams(n=n, seed=seed, logprobs=0 if self.want_logprobs else None, extra_args=extra,
                              skip_special_tokens=True, **kw)

    def complete(self, prompt: str | list[str], params: dict, *, n: int = 1, seed: int | None = None,
                 timeout: float | None = None, defer_tokens: bool = False) -> CompletionResult:
        self._ensure()
        prompts = prompt if isinstance(prompt, list) else [prompt]
        sp = self._sampling_params(params, n, seed)
        futs = []
        t0 = time.monotonic()
        for p in prompts:
            f: Future = Future()
            from vllm.inputs import TokensPrompt
            self._q.put((TokensPrompt(prompt_token_ids=self._prompt_ids(p)), sp, f))
            futs.append(f)
        choices, ptoks, ctoks = [], 0, 0
        for f in futs:
            try:
                out = f.result(timeout=timeout)
            except Exception as exc:
                raise BackendError(f"vLLM engine: {type(exc).__name__}: {str(exc)[:300]}", retryable=False) from exc
            ptoks += len(out.prompt_token_ids or [])
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and ids and ids[-1] in self._stop_ids():
                    ids = ids[:-1]  # the EOS that ended it is not in the text
                lps = None
                if self.want_logprobs and c.logprobs:
                    lps = [float(step[tid].logprob) if tid in step else float("nan")
                           for tid, step in zip(ids, c.logprobs)]
                ctoks += len(c.token_ids)
                choices.append(Choice(text=c.text, token_offsets=self.offsets(c.text, ids), token_logprobs=lps,
                                      completion_tokens=len(ids), finish_reason=str(c.finish_reason or "unknown"),
                                      token_source="ids"))
        return CompletionResult(choices=choices, prompt_tokens=ptoks, completion_tokens=ctoks,
                                latency_s=time.monotonic() - t0, attempts=1, endpoint=self.endpoint)

    def fill_tokens(self, choice: Choice) -> Choice:
        return choice

    def _stop_ids(self) -> set:
        ids = set()
        for t in (self._tok.eos_token_id,):
            if t is not None:
                ids.add(t)
        return ids

    def _dispatch(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [item]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                outs = self._llm.generate([b[0] for b in batch], [b[1] for b in batch], use_tqdm=False)
                for (_, _, f), o in zip(batch, outs):
                    f.set_result(o)
            except Exception as exc:  # every caller of this batch gets the error
                for _, _, f in batch:
                    if not f.done():
                        f.set_exception(exc)


def generate_texts(backend: VLLMOfflineBackend, prompts: list[str], params: dict, *, n: int = 1,
                   seed: int | None = None) -> list[str]:
    """Convenience for benchmarks: texts of one batched call."""
    return [c.text for c in backend.complete(prompts, params, n=n, seed=seed).choices]
