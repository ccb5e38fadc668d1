"""Backend ``openai``: any OpenAI-compatible ``/v1/completions`` server.

Works with vLLM, llama.cpp (llama-cpp-python's server), OpenAI and others, over
``requests``. One :class:`OpenAIBackend` is shared by all worker threads (each
thread gets its own ``requests.Session``); the number of requests in flight is
bounded by the caller (see :mod:`extractor.sampler`).

Robustness
    Each request has a connect timeout and a *total* deadline (the body is read
    in chunks and abandoned when the deadline passes, so a server that trickles
    bytes cannot hang a worker). Connection errors, timeouts, dropped
    connections, unparseable or malformed JSON, HTTP 408/409/425/429 and 5xx are
    retried up to ``max_retries`` times with exponential backoff and full jitter
    (``uniform(0, min(backoff_max, backoff_base * 2**attempt))``); a 429 or 503
    with ``Retry-After`` waits what the server asked (seconds or an HTTP date,
    plus up to 10% jitter) unless that exceeds ``max_retry_after``. Other 4xx
    fail at once. Sleeps end early when :meth:`close` or :meth:`interrupt` is
    called.

Secrets
    The API key is read from the environment variable named by ``api_key_env``
    (default ``OPENAI_API_KEY``; absent is fine for local servers). It is held in
    a private attribute, is scrubbed from every error message, and never appears
    in ``repr``, in :meth:`describe` or in anything the sampler writes.

Capability detection (:meth:`probe`)
    A handful of tiny requests find out whether the server returns per-token
    logprobs whose token strings spell the completion, honours ``n>1``, accepts
    prompt lists, honours ``seed``, accepts ``top_k``, and offers a tokenize
    endpoint (vLLM ``/tokenize`` + ``/detokenize``, or llama-cpp-python
    ``/extras/tokenize`` + ``/extras/detokenize``). The sampler falls back when a
    feature is missing: samples of one prompt go out as separate requests when
    ``n`` is ignored; token boundaries come from re-tokenizing the completion
    when logprobs are missing or do not spell the text; a server with neither
    is refused with one clear error.
"""
from __future__ import annotations

import email.utils
import hashlib
import heapq
import json
import os
import random
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from extractor.backends.base import BackendError, Capabilities, Choice, CompletionResult
from extractor.backends.tokens import AlignmentError, align_tokens
from extractor.backends.vllm_http import detect_server, neutral_payload
from extractor.errors import TrawlError

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
_PROBE_PROMPT = "The quick brown fox"
_SEP = "\x00\x01"
# a tokenizer file must give the server's ids for this text: words, case, digits, punctuation,
# code, whitespace runs, newlines and multi-byte characters (2, 3 and 4 bytes)
_TOKENIZER_CHECK = ("The quick brown fox, 1234567 jumps!  Über naïve façade: 中文 日本語 🙂🚀\n\n"
                    "def f(x):\n\treturn {'a': x ** 2}  # --- <tag> &amp; http://example.org/?q=1")
_PROBE_CACHE: dict = {}
_PIECE_CACHES: dict = {}


class _Deadline(Exception):
    pass


class _Handle:
    __slots__ = ("deadline", "resp", "fired", "cancelled")

    def __init__(self, deadline, resp):
        self.deadline, self.resp, self.fired, self.cancelled = deadline, resp, False, False

    def __lt__(self, other):
        return self.deadline < other.deadline


class _Watchdog:
    """One daemon thread that shuts down the sockets of responses past their deadline."""

    def __init__(self):
        self._heap: list[_Handle] = []
        self._cv = threading.Condition()
        self._thread = None

    def schedule(self, seconds: float, resp) -> _Handle:
        h = _Handle(time.monotonic() + seconds, resp)
        with self._cv:
            heapq.heappush(self._heap, h)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="trawl-watchdog", daemon=True)
                self._thread.start()
            self._cv.notify()
        return h

    def cancel(self, h: _Handle) -> None:
        h.cancelled = True  # lazily dropped from the heap

    def _loop(self):
        while True:
            with self._cv:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait(5.0)
                    continue
                wait = self._heap[0].deadline - time.monotonic()
                if wait > 0:
                    self._cv.wait(min(wait, 5.0))
                    continue
                h = heapq.heappop(self._heap)
            if not h.cancelled:
                h.fired = True
                _shutdown_socket(h.resp)


def _shutdown_socket(resp) -> None:
    raw = getattr(resp, "raw", None)
    sock = None
    conn = getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        fp = getattr(raw, "_fp", None)
        sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_WATCHDOG = _Watchdog()


class _Garbage(Exception):
    pass


def normalize_endpoint(url: str) -> str:
    """``http://h:p``, ``http://h:p/``, ``http://h:p/v1`` -> ``http://h:p`` (no credentials)."""
    if not url or "://" not in url:
        raise TrawlError(f"endpoint {url!r} is not a URL; expected e.g. http://127.0.0.1:8000")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise TrawlError(f"endpoint {url!r}: only http and https are supported")
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def api_key_hint(api_key_env: str | None) -> str:
    """What to tell the user after a 401/403: whether a key was sent at all, and from where."""
    if not api_key_env:
        return "no API key was sent (no --api-key-env variable given)"
    if not os.environ.get(api_key_env):
        return f"${api_key_env} is not set (or empty), so no API key was sent; export it or name another " \
               f"variable with --api-key-env"
    return f"check the API key in ${api_key_env}"


class OpenAIBackend:
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
    ) -> None:
        if token_info not in ("auto", "logprobs", "tokenize"):
            raise TrawlError(f"token_info must be auto, logprobs or tokenize; got {token_info!r}")
        self.token_info_pref = token_info
        self.tokenizer_file = os.path.abspath(os.fspath(tokenizer_file)) if tokenizer_file else None
        self._gguf = None  # the model file's tokenizer, once checked against the server (probe)
        self.want_logprobs = bool(want_logprobs)
        self._sep_ids: list[int] | None = None
        self.endpoint = normalize_endpoint(endpoint)
        self.endpoints = [self.endpoint]  # the replica pool's interface (extractor/backends/pool.py)
        self.model = model
        self.api_key_env = api_key_env
        self.__key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.pool_size = int(pool_size)
        self._headers = {"Content-Type": "application/json", **(extra_headers or {})}
        self._local = threading.local()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._piece_cache: dict[int, str] = _PIECE_CACHES.setdefault((self.endpoint, self.model), {})
        self.capabilities = Capabilities()
        self.retries = 0  # total retried attempts (for run.json)
        self._retries_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"OpenAIBackend(endpoint={self.endpoint!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def describe(self) -> dict:
        """A dict safe to write to disk (no key)."""
        return {"backend": self.name, "endpoint": self.endpoint, "model": self.model,
                "api_key_env": self.api_key_env, "api_key_set": bool(self.__key),
                "timeout": self.timeout, "connect_timeout": self.connect_timeout,
                "max_retries": self.max_retries, "backoff_base": self.backoff_base,
                "backoff_max": self.backoff_max}

    def _scrub(self, text: str) -> str:
        if self.__key and self.__key in text:
            text = text.replace(self.__key, "***")
        return text

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers.update(self._headers)
            if self.__key:
                s.headers["Authorization"] = "Bearer " + self.__key
            self._local.session = s
        return s

    def interrupt(self) -> None:
        """Make pending backoff sleeps return at once (used when a run stops)."""
        self._stop.set()

    def close(self) -> None:
        self.interrupt()

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            raise BackendError("interrupted while waiting to retry", retryable=True)

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** attempt)))

    @staticmethod
    def _retry_after(resp_headers) -> float | None:
        value = resp_headers.get("Retry-After") if resp_headers is not None else None
        if not value:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None

    def _once(self, method: str, url: str, payload: Any, timeout: float) -> tuple[int, Any, dict, bytes]:
        """One HTTP attempt with a total deadline. Returns (status, json_or_None, headers, raw).

        The read timeout bounds the wait for the response headers; the watchdog shuts the
        socket down when the body is still arriving at the deadline (a server that trickles
        bytes would otherwise keep every per-read timeout happy forever).
        """
        deadline = time.monotonic() + timeout
        sess = self._session()
        resp = sess.request(method, url, json=payload, timeout=(self.connect_timeout, timeout), stream=True)
        remaining = deadline - time.monotonic()
        handle = _WATCHDOG.schedule(max(0.0, remaining), resp) if remaining > 0 else None
        try:
            if handle is None:
                raise _Deadline()
            raw = resp.content
        except _Deadline:
            raise
        except Exception:
            if handle is not None and handle.fired:
                raise _Deadline() from None
            raise
        finally:
            if handle is not None:
                _WATCHDOG.cancel(handle)
            resp.close()
        if handle.fired:
            raise _Deadline()
        data = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        return resp.status_code, data, resp.headers, raw

    def request(self, method: str, path: str, payload: Any = None, *, timeout: float | None = None,
                max_retries: int | None = None, check=None, retry_500: bool = True) -> tuple[Any, int]:
        """Send with retries. Returns (json, attempts). ``check(json)`` raises _Garbage for malformed bodies."""
        url = self.endpoint + path
        timeout = self.timeout if timeout is None else timeout
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            wait = None
            try:
                status, data, headers, raw = self._once(method, url, payload, timeout)
                if status == 200:
                    if data is None:
                        raise _Garbage(f"unparseable JSON from {path} ({len(raw)} bytes)")
                    if check is not None:
                        check(data)
                    return data, attempt + 1
                if status in RETRY_STATUSES and (retry_500 or status != 500):
                    reason = f"HTTP {status} from {path}: {_snippet(data, raw)}"
                    ra = self._retry_after(headers)
                    if ra is not None:
                        if ra > self.max_retry_after:
                            raise BackendError(self._scrub(
                                f"{reason}; server asked to retry after {ra:.0f} s (> max_retry_after "
                                f"{self.max_retry_after:.0f} s)"), status=status, retryable=True, attempts=attempt + 1)
                        wait = ra * (1.0 + 0.1 * self._rng.random())
                else:
                    raise BackendError(self._scrub(f"HTTP {status} from {self.endpoint}{path}: {_snippet(data, raw)}"),
                                       status=status, retryable=False, attempts=attempt + 1)
            except _Garbage as exc:
                reason = str(exc)
            except _Deadline:
                reason = f"no complete answer from {path} within {timeout:.0f} s"
            except requests.exceptions.Timeout:
                reason = f"timed out after {timeout:.0f} s on {path}"
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                reason = f"connection error on {path}: {type(exc).__name__}"
            if attempt >= retries:
                raise BackendError(self._scrub(f"{self.endpoint}: {reason} (gave up after {attempt + 1} attempts)"),
                                   retryable=True, attempts=attempt + 1)
            with self._retries_lock:
                self.retries += 1
            self._sleep(wait if wait is not None else self._backoff(attempt))
            attempt += 1

    # -- completions ----------------------------------------------------------------------
    def payload(self, prompt: str | list[str], params: dict, *, n: int = 1, seed: int | None = None) -> dict:
        """The JSON body :meth:`complete` sends: ``params`` plus what the probe found (logprobs
        when boundaries come from them, ``n``, the seed where honoured, the server's neutral
        sampling fields; see extractor/backends/vllm_http.py)."""
        payload = {"model": self.model, "prompt": prompt, **params}
        caps = self.capabilities
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
        expected = n * (len(prompt) if isinstance(prompt, list) else 1)

        def check(data):
            ch = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(ch, list) or len(ch) != expected or not all(
                    isinstance(c, dict) and isinstance(c.get("text"), str) for c in ch):
                raise _Garbage(f"malformed completion JSON (expected {expected} choices)")

        t0 = time.monotonic()
        data, attempts = self.request("POST", "/v1/completions", payload, timeout=timeout, check=check)
        latency = time.monotonic() - t0
        raw_choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        choices = [self._choice(c, defer_tokens) for c in raw_choices]
        usage = data.get("usage") or {}
        ptoks = int(usage.get("prompt_tokens") or 0)
        ctoks = int(usage.get("completion_tokens") or sum(c.completion_tokens for c in choices))
        for c in choices:
            if c.completion_tokens == 0 and len(choices) == 1:
                c.completion_tokens = ctoks
        return CompletionResult(choices=choices, prompt_tokens=ptoks, completion_tokens=ctoks,
                                latency_s=latency, attempts=attempts, endpoint=self.endpoint)

    def _choice(self, c: dict, defer: bool = False) -> Choice:
        text = clean_text(c["text"])
        finish = c.get("finish_reason") or "unknown"
        lp = c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None
        offsets = logprobs = None
        source = "none"
        if lp and isinstance(lp.get("tokens"), list):
            toks = [t if isinstance(t, str) else "" for t in lp["tokens"]]
            try:
                offsets = align_tokens(text, toks)
                source = "logprobs"
                vals = lp.get("token_logprobs")
                if isinstance(vals, list) and len(vals) == len(toks):
                    logprobs = [float(v) if isinstance(v, (int, float)) else float("nan") for v in vals]
            except AlignmentError:
                offsets = None
        if offsets is None and self.capabilities.tokenize and text:
            if defer and self._gguf is None:  # server requests: left for fill_tokens
                source = "pending"
            else:  # the model file's tokenizer (in this process) or the endpoint
                try:
                    offsets = self.token_offsets(text)
                    source = "tokenize" if self._gguf is None else "local_tokenize"
                except (BackendError, AlignmentError):
                    offsets = None
        if offsets is None and not text:
            offsets, source = [], source if source != "none" else "empty"
        ntok = len(offsets) if offsets is not None else 0
        return Choice(text=text, token_offsets=offsets, token_logprobs=logprobs, completion_tokens=ntok,
                      finish_reason=str(finish), token_source=source)

    def fill_tokens(self, choice: Choice) -> Choice:
        """Complete a choice left ``pending`` by ``complete(defer_tokens=True)``.

        When the tokenize endpoint fails for good the generation is kept (it was paid for)
        with ``token_offsets=None`` and ``token_source="none"``.
        """
        if choice.token_source != "pending":
            return choice
        try:
            choice.token_offsets = self.token_offsets(choice.text)
            choice.token_source = "tokenize"
            choice.completion_tokens = len(choice.token_offsets)
        except (BackendError, AlignmentError) as exc:
            choice.token_offsets = None
            choice.token_source = "none"
            choice.token_error = str(exc)[:300]
        return choice

    def fill_tokens_many(self, choices: list[Choice]) -> None:
        """:meth:`fill_tokens` for many choices with (usually) one tokenize and one detokenize request.

        On llama-cpp-python every tokenize request waits for the generation in progress (one
        lock guards the model), so one request per completion would make token boundaries the
        bottleneck under load. The texts are joined with a separator (``"\\x00\\x01"``) whose
        tokens are known, tokenized at once and split again; each part must spell its text
        exactly, otherwise that text is tokenized alone.
        """
        todo = [c for c in choices if c.token_source == "pending"]
        if not todo:
            return
        if len(todo) == 1 or not self._sep_ids or any(_SEP in c.text for c in todo):
            for c in todo:
                self.fill_tokens(c)
            return
        try:
            ids = self.tokenize(_SEP.join(c.text for c in todo))
        except BackendError:
            ids = None
        parts = _split_ids(ids, self._sep_ids) if ids is not None else None
        if parts is None or len(parts) != len(todo):
            for c in todo:
                self.fill_tokens(c)
            return
        try:
            self._pieces([i for p in parts for i in p])  # one detokenize call for every unseen id
        except BackendError:
            pass
        for c, part in zip(todo, parts):
            try:
                c.token_offsets = align_tokens(c.text, self._pieces(part))
                c.token_source = "tokenize"
                c.completion_tokens = len(c.token_offsets)
            except (AlignmentError, BackendError):
                self.fill_tokens(c)

    # -- tokenizer ------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the server's tokenizer sees it (no BOS): from the model
        file's tokenizer when one was checked against the server, else the tokenize endpoint."""
        if self._gguf is not None:
            return self._gguf.tokenize(text)
        kind = self.capabilities.tokenize
        if kind == "vllm":
            data, _ = self.request("POST", "/tokenize", {"model": self.model, "prompt": text,
                                                        "add_special_tokens": False})
            ids = data.get("tokens")
        elif kind == "llama_cpp":
            data, _ = self.request("POST", "/extras/tokenize", {"model": self.model, "input": text})
            ids = data.get("tokens")
        else:
            raise TrawlError(f"the server at {self.endpoint} offers no tokenize endpoint")
        if not isinstance(ids, list):
            raise BackendError(f"{self.endpoint}: tokenize returned no token list")
        ids = [int(i) for i in ids]
        if self.capabilities.tokenize_adds_bos and ids:
            ids = ids[1:]
        return ids

    def detokenize(self, ids: list[int]) -> str:
        if self._gguf is not None:
            return self._gguf.detokenize(ids)
        kind = self.capabilities.tokenize
        if kind == "vllm":
            data, _ = self.request("POST", "/detokenize", {"model": self.model, "tokens": list(ids)}, retry_500=False)
            text = data.get("prompt")
        elif kind == "llama_cpp":
            data, _ = self.request("POST", "/extras/detokenize", {"model": self.model, "tokens": list(ids)},
                                   retry_500=False)
            text = data.get("text")
        else:
            raise TrawlError(f"the server at {self.endpoint} offers no detokenize endpoint")
        if not isinstance(text, str):
            raise BackendError(f"{self.endpoint}: detokenize returned no text")
        return text

    def _pieces(self, ids: list[int]) -> list[str]:
        """Decoded text of each token (cached per server: the vocabulary does not change).

        Unknown ids are decoded in one ``detokenize`` call with a separator (the tokens of
        ``"\\x00\\x01"``) between them; when that does not split cleanly (a token that is part
        of a multi-byte character), each is decoded alone, and one that cannot be decoded
        alone gets ``""`` (its offset is then spread over its character's bytes).
        """
        cache = self._piece_cache
        unknown = list(dict.fromkeys(i for i in ids if i not in cache))
        if unknown:
            sep = self._sep_ids
            done = False
            if sep and len(unknown) > 1:
                batch: list[int] = []
                for k, i in enumerate(unknown):
                    if k:
                        batch.extend(sep)
                    batch.append(i)
                try:
                    text = self.detokenize(batch)
                    parts = text.split(_SEP)
                    if len(parts) == len(unknown) and all(parts):
                        for i, part in zip(unknown, parts):
                            cache[i] = part
                        done = True
                except BackendError as exc:
                    if exc.retryable and exc.status is None:
                        raise
            if not done:
                for i in unknown:
                    try:
                        cache[i] = self.detokenize([i])
                    except BackendError as exc:
                        if exc.retryable and exc.status is None:
                            raise
                        cache[i] = ""  # a partial UTF-8 byte the server cannot decode alone
        return [cache[i] for i in ids]

    def piece(self, token_id: int) -> str:
        return self._pieces([token_id])[0]

    def token_offsets(self, text: str) -> list[int]:
        """Byte offsets of the tokens of ``text`` (re-tokenization: the model file's tokenizer when
        one was checked against the server, else the tokenize endpoint)."""
        if self._gguf is not None:
            return self._gguf.offsets(text)
        ids = self.tokenize(text)
        return align_tokens(text, self._pieces(ids))

    # -- capability detection -------------------------------------------------------------
    def probe(self, use_cache: bool = True) -> Capabilities:
        """Find out what the server supports; raise TrawlError when it is unusable.

        Results are cached per (endpoint, model, token_info, API key) for the life of the process.
        """
        key = (self.endpoint, self.model, self.token_info_pref, self.tokenizer_file,
               hashlib.sha256(self.__key.encode()).hexdigest() if self.__key else None)
        if use_cache and key in _PROBE_CACHE:
            caps, sep, gguf = _PROBE_CACHE[key]
            self.capabilities = Capabilities(**{**caps.to_dict(), "notes": list(caps.notes)})
            self._sep_ids = sep
            self._gguf = gguf
            return self.capabilities
        caps = Capabilities()
        self.capabilities = caps
        self._gguf = None
        base = {"model": self.model, "prompt": _PROBE_PROMPT, "max_tokens": 2, "temperature": 0.0}
        try:
            data, _ = self.request("POST", "/v1/completions", {**base, "logprobs": 1}, max_retries=2, timeout=60)
        except BackendError as exc:
            if exc.status in (401, 403):
                raise TrawlError(f"the server at {self.endpoint} refused the request (HTTP {exc.status}); "
                                 f"{api_key_hint(self.api_key_env)}") from None
            if exc.status == 404:
                raise TrawlError(f"{self.endpoint}/v1/completions not found (HTTP 404): not an OpenAI-compatible "
                                 f"completions server, or model {self.model!r} unknown") from None
            if exc.status is not None and not exc.retryable:
                # maybe logprobs is what it rejects
                try:
                    data, _ = self.request("POST", "/v1/completions", base, max_retries=2, timeout=60)
                    caps.notes.append(f"logprobs rejected: {str(exc)[:200]}")
                except BackendError as exc2:
                    raise TrawlError(f"the server at {self.endpoint} rejected a minimal completion request: "
                                     f"{exc2}") from None
            else:
                raise TrawlError(f"cannot reach the model server at {self.endpoint}: {exc}") from None
        try:
            ch = data["choices"][0]
            text = ch["text"]
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise TrawlError(f"the server at {self.endpoint} does not answer like an OpenAI completions API "
                             f"(no choices[0].text)") from None
        lp = ch.get("logprobs") if isinstance(ch, dict) else None
        if isinstance(lp, dict) and isinstance(lp.get("tokens"), list) and lp["tokens"]:
            try:
                align_tokens(text, [t if isinstance(t, str) else "" for t in lp["tokens"]])
                caps.logprobs_tokens = True
                vals = lp.get("token_logprobs")
                caps.logprobs_values = isinstance(vals, list) and any(isinstance(v, (int, float)) for v in vals)
            except AlignmentError as exc:
                caps.notes.append(f"logprobs tokens do not spell the text: {exc}")
        self._probe_tokenize(caps)
        self._probe_optional(caps, base)
        detect_server(self, caps)  # vLLM / llama.cpp and their sampling defaults (backends/vllm_http.py)
        pref = self.token_info_pref
        if pref == "logprobs" and not caps.logprobs_tokens:
            raise TrawlError(f"the server at {self.endpoint} returns no per-token logprobs (token_info=logprobs)")
        if pref == "tokenize" and not caps.tokenize:
            raise TrawlError(f"the server at {self.endpoint} has no tokenize endpoint (token_info=tokenize)")
        if pref in ("logprobs", "tokenize"):
            caps.token_info = pref
        elif caps.tokenize == "llama_cpp" or (caps.tokenize and not caps.logprobs_tokens):
            # llama-cpp-python computes logprobs ~20x slower than it generates: re-tokenize instead
            caps.token_info = "tokenize"
        elif caps.logprobs_tokens:
            caps.token_info = "logprobs"
        if not caps.has_token_info:
            raise TrawlError(f"the server at {self.endpoint} returns no token information (no per-token logprobs, "
                             f"no tokenize endpoint); trawl needs token boundaries to count thresholds in "
                             f"the model's own tokens")
        if self.tokenizer_file:
            self._use_tokenizer_file(caps)
        self.capabilities = caps
        _PROBE_CACHE[key] = (caps, self._sep_ids, self._gguf)
        return caps

    def _use_tokenizer_file(self, caps: Capabilities) -> None:
        """Take token boundaries from the model file's tokenizer in this process (see
        extractor/backends/gguf_tokenizer.py), after checking it against the server's."""
        from extractor.backends.gguf_tokenizer import GGUFTokenizer

        if caps.token_info not in ("tokenize", None) or not caps.tokenize:
            caps.notes.append(f"tokenizer file not used: token boundaries come from {caps.token_info}")
            return
        tok = GGUFTokenizer.for_file(self.tokenizer_file)
        try:
            remote = self.tokenize(_TOKENIZER_CHECK)
        except BackendError as exc:
            raise TrawlError(f"cannot check the tokenizer file against the server at {self.endpoint}: {exc}") from None
        if tok.tokenize(_TOKENIZER_CHECK) != remote:
            raise TrawlError(f"{self.tokenizer_file}: its tokenizer does not match the model served at "
                             f"{self.endpoint} (different token ids for the same text); give the GGUF file the "
                             f"server loaded")
        self._gguf = tok
        caps.token_info = "local_tokenize"
        caps.tokenizer_file = tok.name
        caps.notes.append(f"token boundaries from {tok.name}'s tokenizer in trawl's process (checked against "
                          f"the server's tokenize endpoint)")

    def _probe_tokenize(self, caps: Capabilities) -> None:
        for kind in ("vllm", "llama_cpp"):
            caps.tokenize = kind
            try:
                empty = self.tokenize("")
                caps.tokenize_adds_bos = bool(empty)
                sep = self.tokenize(_SEP)
                self._sep_ids = sep if sep and self.detokenize(sep) == _SEP else None
                ids = self.tokenize(_PROBE_PROMPT)
                if not ids:
                    raise BackendError("empty tokenization")
                self.token_offsets(_PROBE_PROMPT)
                return
            except (BackendError, AlignmentError, TrawlError, ValueError, TypeError) as exc:
                caps.tokenize = None
                caps.tokenize_adds_bos = False
                self._sep_ids = None
                caps.notes.append(f"tokenize endpoint {kind}: {str(exc)[:160]}")

    def _probe_optional(self, caps: Capabilities, base: dict) -> None:
        def try_req(payload, expected):
            try:
                d, _ = self.request("POST", "/v1/completions", payload, max_retries=1, timeout=60)
            except BackendError:
                return None
            ch = d.get("choices") if isinstance(d, dict) else None
            return ch if isinstance(ch, list) and len(ch) == expected else None

        caps.n = try_req({**base, "n": 2, "temperature": 1.0, "max_tokens": 1}, 2) is not None
        caps.prompt_list = try_req({**base, "prompt": [_PROBE_PROMPT, "Once upon a time"], "max_tokens": 1}, 2) is not None
        caps.top_k = try_req({**base, "top_k": 40, "max_tokens": 1}, 1) is not None
        samples = []
        for _ in range(2):
            ch = try_req({**base, "seed": 12345, "temperature": 1.0, "max_tokens": 6}, 1)
            samples.append(ch[0].get("text") if ch else None)
        caps.seed = samples[0] is not None and samples[0] == samples[1]


def _split_ids(ids: list[int], sep: list[int]) -> list[list[int]]:
    parts, cur, i, k = [], [], 0, len(sep)
    while i < len(ids):
        if ids[i:i + k] == sep:
            parts.append(cur)
            cur = []
            i += k
        else:
            cur.append(ids[i])
            i += 1
    parts.append(cur)
    return parts


def clean_text(text: str) -> str:
    """Replace lone surrogates (invalid UTF-8 from the server, JSON-escaped) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _snippet(data: Any, raw: bytes, limit: int = 200) -> str:
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        text = str(err)
    else:
        text = raw[:limit].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:limit] if text else "(empty body)"
