"""Backend ``openai``: any OpenAI-compatible ``/v1/completions`` or ``/v1/chat/completions`` server.

Works with vLLM, llama.cpp (llama-cpp-python's server), OpenAI and others, over
``requests``. One :class:`OpenAIBackend` is shared by all worker threads; the
number of requests in flight is bounded by the caller (see :mod:`extractor.sampling`).
It implements :class:`extractor.backends.base.Backend` by composing three parts,
each with its own guarantees:

* transport, :class:`extractor.backends.http.HTTPClient`: deadlines, retries with
  backoff and ``Retry-After``, :meth:`interrupt`; the API key (read from the
  environment variable named by ``api_key_env``, default ``OPENAI_API_KEY``) is
  scrubbed from every error and never appears in ``repr``, in :meth:`describe` or
  in anything the sampler writes;
* token boundaries, :class:`extractor.backends.boundaries.TokenBoundaries`:
  tokenize/detokenize, pieces, :meth:`fill_tokens` / :meth:`fill_tokens_many`, the
  checked GGUF tokenizer file;
* the capability probe, :func:`extractor.backends.probe.probe_server` (cached per
  endpoint, model, token_info, tokenizer file, API key and server identity, for
  at most ``PROBE_CACHE_SECONDS``), and the audit-neutral sampling fields each request gets
  (:func:`extractor.backends.probe.neutral_payload`).

The API (``api``: "completions", "chat" or "auto", resolved by the probe into
``capabilities.api``) decides where requests go; what differs for chat (messages, the
answer's shape, boundaries from chat logprobs' ``bytes``, the template's identity) is in
:mod:`extractor.backends.chat`.

This module turns a completion request into its JSON body (:meth:`OpenAIBackend.payload`)
and the answer into :class:`~extractor.backends.base.Choice` objects with their token
boundaries (:meth:`OpenAIBackend.complete`).
"""
from __future__ import annotations

import os
import time

from extractor.backends.base import BackendError, Capabilities, Choice, CompletionResult
from extractor.backends.alignment import AlignmentError, align_tokens
from extractor.backends.boundaries import TokenBoundaries, clean_text
from extractor.backends.chat import CHAT_PATH, as_messages, chat_cap, chat_payload, chat_tokens, check_chat
from extractor.backends.http import (HTTPClient, MalformedResponse, api_key_hint, check_choices, logprob_value,
                                     normalize_endpoint, retry_after)
from extractor.backends.probe import neutral_payload, probe_server, server_identity
from extractor.errors import TrawlError

__all__ = ["OpenAIBackend", "api_key_hint", "clean_text"]

_PROBE_CACHE: dict = {}
API_CHOICES = ("completions", "chat", "auto")
PROBE_CACHE_SECONDS = 300.0   # a cached probe is used this long at most (see probe())


class OpenAIBackend:
    """The ``openai`` backend (see the module docstring); implements :class:`~extractor.backends.base.Backend`."""

    name = "openai"

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        pool_size: int = 64,
        extra_headers: dict[str, str] | None = None,
        token_info: str = "auto",
        want_logprobs: bool = False,
        tokenizer_file: str | os.PathLike | None = None,
        api: str = "completions",
        top_logprobs: int = 0,
    ) -> None:
        if token_info not in ("auto", "logprobs", "tokenize"):
            raise TrawlError(f"token_info must be auto, logprobs or tokenize; got {token_info!r}")
        if api not in API_CHOICES:
            raise TrawlError(f"api must be {', '.join(API_CHOICES)}; got {api!r}")
        self.api_pref = api
        self.top_logprobs = int(top_logprobs)
        self.token_info_pref = token_info
        self.tokenizer_file = os.path.abspath(os.fspath(tokenizer_file)) if tokenizer_file else None
        self.want_logprobs = bool(want_logprobs)
        self.endpoint = normalize_endpoint(endpoint)
        self.endpoints = [self.endpoint]
        self.model = model
        self.http = HTTPClient(self.endpoint, api_key_env=api_key_env, timeout=timeout,
                               connect_timeout=connect_timeout, max_retries=max_retries, backoff_base=backoff_base,
                               backoff_max=backoff_max, max_retry_after=max_retry_after, pool_size=pool_size,
                               extra_headers=extra_headers)
        self.capabilities = Capabilities()
        self.boundaries = TokenBoundaries(self.http, model, lambda: self.capabilities)

    # -- plumbing -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"OpenAIBackend(endpoint={self.endpoint!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def api_key_env(self) -> str | None:
        return self.http.api_key_env

    @property
    def retries(self) -> int:
        """Total retried attempts (for run.json); settable (the sampler resets it after the probe)."""
        return self.http.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self.http.retries = int(value)

    def describe(self) -> dict:
        """A dict safe to write to disk (no key)."""
        h = self.http
        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model,
                "api_key_env": self.api_key_env, "api_key_set": h.key_set, "api": self.api_pref,
                "timeout": h.timeout, "connect_timeout": h.connect_timeout,
                "max_retries": h.max_retries, "backoff_base": h.backoff_base,
                "backoff_max": h.backoff_max}

    def stats(self) -> dict:
        """Per-endpoint figures: none for one server (see PoolBackend.stats)."""
        return {}

    def interrupt(self) -> None:
        """Make pending backoff sleeps return at once (used when a run stops)."""
        self.http.interrupt()

    def close(self) -> None:
        self.interrupt()

    # kept for tests/extractor/backends/test_backends.py, which checks the transport's arithmetic through the backend
    _retry_after = staticmethod(retry_after)

    def _backoff(self, attempt: int) -> float:
        return self.http.backoff(attempt)

    # -- completions ----------------------------------------------------------------------
    def payload(self, prompt: str | list[str] | list[dict], params: dict, *, n: int = 1,
                seed: int | None = None) -> dict:
        """The JSON body :meth:`complete` sends: ``params`` plus what the probe found (logprobs
        when boundaries come from them, ``n``, the seed where honoured, the server's neutral
        sampling fields; see extractor/backends/probe.py). Chat: see :func:`extractor.backends.chat.chat_payload`."""
        caps = self.capabilities
        if caps.api == "chat":
            payload = chat_payload(self.model, as_messages(prompt), params, caps,
                                   logprobs=caps.token_info == "logprobs" or self.want_logprobs,
                                   top_logprobs=self.top_logprobs, n=n, seed=seed)
            return neutral_payload(caps, payload)
        payload = {"model": self.model, "prompt": prompt, **params}
        if caps.token_info == "logprobs" or self.want_logprobs:
            payload["logprobs"] = 1
        if n > 1:
            payload["n"] = n
        if seed is not None and caps.seed:
            payload["seed"] = int(seed)
        if not caps.top_k:
            payload.pop("top_k", None)
        return neutral_payload(caps, payload)  # generation_config / llama.cpp defaults cannot apply

    def complete(self, prompt: str | list[str], params: dict, *, n: int = 1, seed: int | None = None,
                 timeout: float | None = None, defer_tokens: bool = False) -> CompletionResult:
        """One ``/v1/completions`` call. ``params`` are sent as given (temperature, max_tokens, ...).

        Returns one :class:`Choice` per prompt (prompt list) or per sample (``n``), in order,
        each with its token boundaries. With ``defer_tokens``, boundaries that need extra
        requests (the tokenize endpoint) are left for :meth:`fill_tokens` (``token_source ==
        "pending"``), so the caller can send its next generation first.
        """
        payload = self.payload(prompt, params, n=n, seed=seed)
        chat = self.capabilities.api == "chat"
        if chat:
            expected = n
            cap, note = chat_cap(payload, expected, _BYTES_PER_TOKEN, _DEFAULT_MAX_TOKENS)
            path, check = CHAT_PATH, check_chat
        else:
            expected = n * (len(prompt) if isinstance(prompt, list) else 1)
            cap, note = completion_cap(payload, expected)
            path, check = "/v1/completions", check_completion
        t0 = time.monotonic()
        data, attempts = self.http.request("POST", path, payload, timeout=timeout,
                                           check=lambda d: check(d, expected), max_bytes=cap,
                                           cap_note=note)
        latency = time.monotonic() - t0
        raw_choices = data["choices"]
        if any("index" in c for c in raw_choices):   # check_completion: then they are 0..expected-1
            raw_choices = sorted(raw_choices, key=lambda c: c["index"])
        choices = [self._chat_choice(c, defer_tokens) if chat else self._choice(c, defer_tokens)
                   for c in raw_choices]
        usage = data.get("usage") or {}
        ptoks = usage.get("prompt_tokens") or 0
        ctoks = usage.get("completion_tokens") or sum(c.completion_tokens for c in choices)
        for c in choices:
            if c.completion_tokens == 0 and len(choices) == 1:
                c.completion_tokens = ctoks
        return CompletionResult(choices=choices, prompt_tokens=ptoks, completion_tokens=ctoks,
                                latency_s=latency, attempts=attempts, endpoint=self.endpoint)

    def _chat_choice(self, c: dict, defer: bool = False) -> Choice:
        """A chat choice (checked by check_chat): the assistant's reply with its boundaries from
        the chat logprobs (``bytes``, else token strings), else as :meth:`_choice` does."""
        raw = c["message"].get("content") or ""
        text = clean_text(raw)
        offsets, logprobs = chat_tokens(text, c.get("logprobs")) if text == raw else (None, None)
        return self._finish_choice(text, c.get("finish_reason") or "unknown", offsets, logprobs,
                                   "logprobs" if offsets is not None else "none", defer)

    def _choice(self, c: dict, defer: bool = False) -> Choice:
        text = clean_text(c["text"])
        finish = c.get("finish_reason") or "unknown"
        lp = c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None
        offsets = logprobs = None
        source = "none"
        if lp and isinstance(lp.get("tokens"), list):
            toks = lp["tokens"]   # align_tokens counts a token that is not a string as unknown bytes
            try:
                offsets = align_tokens(text, toks)
                source = "logprobs"
                vals = lp.get("token_logprobs")
                if isinstance(vals, list) and len(vals) == len(toks):
                    logprobs = [v if v.__class__ is float else logprob_value(v) for v in vals]
            except AlignmentError:
                offsets = None
        return self._finish_choice(text, finish, offsets, logprobs, source, defer)

    def _finish_choice(self, text: str, finish, offsets, logprobs, source: str, defer: bool) -> Choice:
        """The choice, its boundaries re-tokenized (or left pending) when the answer gave none."""
        error = None
        if offsets is None and self.capabilities.tokenize and text:
            if defer and self.boundaries.gguf is None:  # server requests: left for fill_tokens
                source = "pending"
            else:  # the model file's tokenizer (in this process) or the endpoint
                try:
                    offsets = self.token_offsets(text)
                    source = "tokenize" if self.boundaries.gguf is None else "local_tokenize"
                except (BackendError, AlignmentError) as exc:
                    offsets, error = None, f"re-tokenizing failed: {str(exc)[:200]}"
        if offsets is None and not text:
            offsets, source = [], source if source != "none" else "empty"
        if offsets is None and source == "none" and error is None:
            error = "the answer's logprobs do not tile the text and the server has no tokenizer"
        ntok = len(offsets) if offsets is not None else 0
        return Choice(text=text, token_offsets=offsets, token_logprobs=logprobs, completion_tokens=ntok,
                      finish_reason=str(finish), token_source=source, token_error=error)

    # -- scoring given text (extractor/backends/scoring_http.py) --------------------------------
    def score(self, texts: list[str], *, contexts: list[str] | None = None, top_k: int = 0,
              vocab_stats: bool = False, full: bool = False, timeout: float | None = None) -> list:
        """Per-token logprobs of given texts via ``echo`` + ``logprobs`` (see extractor/backends/scoring_http.py)."""
        from extractor.backends.scoring_http import score_http
        return score_http(self, texts, contexts=contexts, top_k=top_k, vocab_stats=vocab_stats, full=full,
                          timeout=timeout)

    # -- token boundaries (extractor/backends/boundaries.py) ----------------------------------
    def fill_tokens(self, choice: Choice) -> Choice:
        """Complete a choice left ``pending`` by ``complete(defer_tokens=True)`` (a failure keeps
        the generation with ``token_offsets=None``, ``token_source="none"``)."""
        return self.boundaries.fill(choice)

    def fill_tokens_many(self, choices: list[Choice]) -> None:
        """:meth:`fill_tokens` for many choices, with (usually) one tokenize and one detokenize request."""
        self.boundaries.fill_many(choices)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the server's tokenizer sees it (no BOS)."""
        return self.boundaries.tokenize(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.boundaries.detokenize(ids)

    def piece(self, token_id: int) -> str:
        return self.boundaries.piece(token_id)

    def token_offsets(self, text: str) -> list[int]:
        """Byte offsets of the tokens of ``text`` (re-tokenization)."""
        return self.boundaries.offsets(text)

    # -- capability detection (extractor/backends/probe.py) ---------------------------------
    def probe(self, use_cache: bool = True) -> Capabilities:
        """Find out what the server supports; raise TrawlError when it is unusable.

        Results are cached per (endpoint, model, token_info, tokenizer file, API key, server
        identity) for at most ``PROBE_CACHE_SECONDS``: a long-lived process (a sweep, a pool of
        replicas) must not take a different server that took over a port for the one it probed,
        so each use of the cache first asks the server who it is (:func:`server_identity`: its
        model list and version), a server that cannot say is probed afresh, and a failed probe
        forgets every entry of the endpoint.
        """
        tb = self.boundaries
        ident = server_identity(self.http) if use_cache else None
        key = (self.endpoint, self.model, self.token_info_pref, self.tokenizer_file, self.api_pref,
               self.http.key_digest(), ident)
        tb.use_pieces_of(ident)
        hit = _PROBE_CACHE.get(key) if ident is not None else None
        if hit is not None and time.monotonic() - hit[3] <= PROBE_CACHE_SECONDS:
            caps, tb.sep_ids, tb.gguf, _ = hit
            self.capabilities = Capabilities(**{**caps.to_dict(), "notes": list(caps.notes)})
            return self.capabilities
        caps = self.capabilities = Capabilities()
        try:
            probe_server(self.http, tb, caps, token_info=self.token_info_pref, tokenizer_file=self.tokenizer_file,
                         api=self.api_pref)
        except BaseException:
            for k in [k for k in list(_PROBE_CACHE) if k[0] == self.endpoint]:
                _PROBE_CACHE.pop(k, None)
            raise
        from extractor.backends.scoring_http import note_capability
        note_capability(caps)
        self.capabilities = caps
        if ident is not None:
            _PROBE_CACHE[key] = (caps, tb.sep_ids, tb.gguf, time.monotonic())
        return caps


# the cap of a completion answer (see completion_cap): a token, with its logprobs entry (token text,
# value, offset, top logprobs) JSON-escaped, stays far below this many bytes
_BYTES_PER_TOKEN = 2048
_DEFAULT_MAX_TOKENS = 32768     # a request without max_tokens: servers stop at the context length


def completion_cap(payload: dict, choices: int) -> tuple[int, str]:
    """The byte cap of the answer to ``payload`` with ``choices`` choices, and how it was sized:
    1 MiB of envelope plus, per choice, 2 KiB per token of ``max_tokens`` and 8 bytes per prompt
    byte (a server that echoes the prompt)."""
    mt = payload.get("max_tokens")
    tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0 else _DEFAULT_MAX_TOKENS
    prompt = payload.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    pbytes = max((len(p.encode("utf-8", "replace")) if isinstance(p, str) else 8 * len(p) if isinstance(p, list)
                  else 0) for p in prompts) if prompts else 0
    cap = (1 << 20) + choices * (_BYTES_PER_TOKEN * tokens + 8 * pbytes)
    return cap, f" (max_tokens={mt if mt is not None else 'unset'}, {choices} choice{'s' * (choices != 1)})"


def check_completion(data, expected: int) -> None:
    """Raise :class:`MalformedResponse` (one line, retried) unless ``data`` is a completion answer
    with ``expected`` choices that :meth:`OpenAIBackend.complete` can read without guessing
    (:func:`~extractor.backends.http.check_choices`), each with a string ``text``."""
    def bad(why):
        raise MalformedResponse(f"malformed completion JSON from /v1/completions: {why}")

    def text(i, c, bad):
        if not isinstance(c.get("text"), str):
            bad(f"choice {i} has no text string")

    check_choices(data, expected, bad, text)
