"""Transport of the ``openai`` backend: one JSON request to one server, retried.

:class:`HTTPClient` is shared by all worker threads (each thread gets its own
``requests.Session``); it bounds nothing itself: the number of requests in flight is
bounded by the caller (see :mod:`extractor.sampling`).

Guarantees
    Each attempt has a connect timeout and a *total* deadline: the body is read
    while a watchdog thread shuts the socket down at the deadline, so a server that
    trickles bytes cannot hang a worker. Connection errors, timeouts, dropped
    connections, unparseable or malformed JSON (``check`` raising
    :class:`MalformedResponse`), HTTP 408/409/425/429 and 5xx are retried up to
    ``max_retries`` times with exponential backoff and full jitter
    (``uniform(0, min(backoff_max, backoff_base * 2**attempt))``); a 429 or 503
    with ``Retry-After`` waits what the server asked (seconds or an HTTP date, plus
    up to 10% jitter) unless that exceeds ``max_retry_after``, which fails at once.
    Other 4xx fail at once (``BackendError.retryable`` False). Sleeps end early,
    with a retryable :class:`BackendError`, when :meth:`HTTPClient.interrupt` is
    called. Every retried attempt adds one to :attr:`HTTPClient.retries`.

    A :meth:`HTTPClient.bounded` block (the start-up probe) puts one deadline over all
    its requests: each attempt's timeout and each backoff is cut to what is left, and a
    request started past it raises :class:`OutOfTime` (a one-line TrawlError).

Hostile answers
    A body is read with a byte cap (``max_bytes`` of :meth:`HTTPClient.request`, default
    :data:`DEFAULT_MAX_BYTES`; the completion caller sizes it by ``max_tokens``, ``n`` and
    the prompts): a larger answer fails the request at once (``BackendError``, not
    retried, nothing of it kept) as soon as the cap is passed, without reading the rest.
    Invalid UTF-8 in a body is decoded to U+FFFD (``errors="replace"``, as
    docs/CONTRACTS.md says of completions) and the JSON parsed; JSON nested too deep to
    parse is unparseable JSON (retried) like any other.

Secrets
    The API key is read from the environment variable named by ``api_key_env``
    (absent is fine for local servers) by :func:`read_api_key`: surrounding whitespace
    (a trailing newline from ``$(cat key.txt)``) is stripped, and a key with a control
    character, whitespace or a non-ASCII character inside is refused with one line that
    names the variable and the position, never the key. It is held in a name-mangled
    attribute, sent as ``Authorization: Bearer``, and replaced by ``***`` in the text of
    every :class:`BackendError` this module raises; it never appears in ``repr``. Every
    key read in this process is also known to :func:`scrub_secrets`, which the sampler
    and the campaign runner apply to every error text they print or write. Scrubbing
    comes before any cut (``scrub(text, limit=...)``), and a text that ends in the first
    characters of a key (cut by someone else) has them replaced too.
"""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import heapq
import json
import os
import random
import socket
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from extractor.backends.base import BackendError
from extractor.errors import TrawlError

try:   # optional: a faster parser for answers (see parse_json); the standard library otherwise
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _orjson = None

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
DEFAULT_MAX_BYTES = 1 << 20      # cap of an answer whose caller gives none (probe, version, small requests)
MAX_POOL_PER_SESSION = 4         # one Session per thread, one request at a time: a few connections suffice
_SECRETS: set[str] = set()       # every API key read in this process (see scrub_secrets)
_SECRETS_LOCK = threading.Lock()
_MIN_PREFIX = 6                  # a text ending in this many first characters of a key has them scrubbed


def _scrub(text: str, keys, limit: int | None = None) -> str:
    """``text`` with each key replaced by ``***``, then cut to ``limit`` characters, then a tail that
    is the start of a key (``_MIN_PREFIX`` characters or more) replaced by ``***``."""
    for key in keys:
        if key and key in text:
            text = text.replace(key, "***")
    if limit is not None and len(text) > limit:
        text = text[:limit]
    for key in keys:
        if not key:
            continue
        for k in range(min(len(key), len(text)), min(_MIN_PREFIX, len(key)) - 1, -1):
            if text.endswith(key[:k]):
                text = text[:len(text) - k] + "***"
                break
    return text


def scrub_secrets(text, limit: int | None = None) -> str:
    """``str(text)`` with every API key read in this process replaced by ``***`` (then cut to
    ``limit``; see :func:`_scrub`)."""
    with _SECRETS_LOCK:
        keys = sorted(_SECRETS, key=len, reverse=True)
    return _scrub(str(text), keys, limit)


def error_text(exc, limit: int = 300) -> str:
    """An error's text for a note, a log line or a file: one line, scrubbed of every key, then cut."""
    return scrub_secrets(" ".join(str(exc).split()), limit=limit)


def read_api_key(api_key_env: str | None) -> str | None:
    """The API key in ``$api_key_env`` with surrounding whitespace stripped (None when unset or
    empty); raises a one-line TrawlError, without the key, when it holds a control character,
    whitespace or a non-ASCII character inside."""
    if not api_key_env:
        return None
    raw = os.environ.get(api_key_env)
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        return None
    for i, ch in enumerate(key):
        if 0x21 <= ord(ch) <= 0x7E:
            continue
        what = ("a control character" if ord(ch) < 0x20 or ord(ch) == 0x7F
                else "whitespace" if ch.isspace() else "a non-ASCII character")
        raise TrawlError(f"${api_key_env} holds {what} at position {i + 1} of {len(key)} (the key is not "
                         f"shown); an API key is printable ASCII: set it again, e.g. without a pasted line break")
    if len(key) >= 4:   # never sent otherwise; a shorter "key" would scrub ordinary words
        with _SECRETS_LOCK:
            _SECRETS.add(key)
    return key


class OutOfTime(TrawlError):
    """A :meth:`HTTPClient.bounded` block ran past its deadline."""


class _TooLarge(Exception):
    pass


class MalformedResponse(Exception):
    """A 200 answer whose body is not what was asked for (retried like a 5xx)."""


def json_kind(v) -> str:
    """A JSON value's type in words (never the value: it may be long or hostile)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "a negative integer" if v < 0 else "an integer"
    return {float: "a floating-point number", str: "a string", list: "a list", dict: "an object"}.get(type(v), "a value")


def logprob_value(v) -> float:
    """A logprob value from an answer as a float (NaN for anything that is not a number, or too
    large for one); completions and chat read their logprobs through this."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return float("nan")
    try:
        return float(v)
    except OverflowError:
        return float("nan")


def _count(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def check_choices(data, expected: int, bad, check_choice) -> None:
    """What every OpenAI-style answer (completions and chat) must be before it is read: an object;
    ``choices`` a list of ``expected`` objects, each passing ``check_choice(i, choice, bad)`` and
    with a string or null ``finish_reason``; when any has an ``index``, indexes ``0..expected-1``
    each once; ``usage`` null or an object whose token counts are null or integers >= 0.
    ``bad(why)`` raises the caller's one-line :class:`MalformedResponse`."""
    if not isinstance(data, dict):
        bad(f"the body is {json_kind(data)}, not an object")
    ch = data.get("choices")
    if not isinstance(ch, list):
        bad(f"choices is {json_kind(ch)}, not a list")
    if len(ch) != expected:
        bad(f"{len(ch)} choices, expected {expected}")
    for i, c in enumerate(ch):
        if not isinstance(c, dict):
            bad(f"choice {i} is {json_kind(c)}, not an object")
        check_choice(i, c, bad)
        if not (c.get("finish_reason") is None or isinstance(c.get("finish_reason"), str)):
            bad(f"choice {i}: finish_reason is {json_kind(c.get('finish_reason'))}")
    if any("index" in c for c in ch):
        idx = [c.get("index") for c in ch]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx) or sorted(idx) != list(range(expected)):
            bad(f"choice indexes are not 0..{expected - 1} each once")
    usage = data.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            bad(f"usage is {json_kind(usage)}, not an object")
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if not _count(usage.get(k)):
                bad(f"usage.{k} is {json_kind(usage.get(k))}, not a count")


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
    if not (os.environ.get(api_key_env) or "").strip():
        return f"${api_key_env} is not set (or empty), so no API key was sent; export it or name another " \
               f"variable with --api-key-env"
    return f"check the API key in ${api_key_env}"


def first_request(http: "HTTPClient", path: str, base: dict, extra: dict, *, kind: str, notes: list,
                  timeout: float, check: Callable[[Any], None] | None = None) -> Any:
    """A start-up probe's first request to *path*: ``base`` plus ``extra`` (asking for logprobs), and
    ``base`` alone when the server rejects that with a client error (a note in *notes* says so). Every
    failure is one TrawlError line: 401/403 with the API-key hint, 404 as "not this API (or unknown
    model)", an unreachable server, or a minimal request rejected. *kind* names the API in those lines
    ("completions" or "chat"). The completions probe and the chat probe both start here."""
    try:
        data, _ = http.request("POST", path, {**base, **extra}, max_retries=2, timeout=timeout, check=check)
        return data
    except BackendError as exc:
        if exc.status in (401, 403):
            raise TrawlError(f"the server at {http.endpoint} refused the request (HTTP {exc.status}); "
                             f"{api_key_hint(http.api_key_env)}") from None
        if exc.status == 404:
            raise TrawlError(f"{http.endpoint}{path} not found (HTTP 404): not an OpenAI-compatible {kind} "
                             f"server, or model {base.get('model')!r} unknown") from None
        if exc.status is None or exc.retryable:
            raise TrawlError(f"cannot reach the model server at {http.endpoint}: {exc}") from None
        first = exc
    try:
        data, _ = http.request("POST", path, base, max_retries=2, timeout=timeout, check=check)
    except BackendError as exc2:
        raise TrawlError(f"the server at {http.endpoint} rejected a minimal {kind} request: {exc2}") from None
    notes.append(f"{'chat ' if kind == 'chat' else ''}logprobs rejected: {error_text(first, 200)}")
    return data


def retry_after(resp_headers) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None."""
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


class HTTPClient:
    """JSON requests to one server with the retries, deadlines and scrubbing of the module docstring."""

    def __init__(self, endpoint: str, *, api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 300.0,
                 connect_timeout: float = 10.0, max_retries: int = 6, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, max_retry_after: float = 300.0, pool_size: int = 64,
                 extra_headers: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self.api_key_env = api_key_env
        self.__key = read_api_key(api_key_env)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.pool_size = max(1, min(int(pool_size), MAX_POOL_PER_SESSION))
        self._headers = {"Content-Type": "application/json", **(extra_headers or {})}
        self._local = threading.local()
        self._stop = threading.Event()
        self._rng = random.Random()
        self.retries = 0  # total retried attempts (for run.json)
        self._retries_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HTTPClient(endpoint={self.endpoint!r}, api_key_env={self.api_key_env!r})"

    @property
    def key_set(self) -> bool:
        """Whether an API key is sent (never the key itself)."""
        return bool(self.__key)

    def key_digest(self) -> str | None:
        """SHA-256 of the API key (a cache key that tells keys apart without holding one), or None."""
        return hashlib.sha256(self.__key.encode()).hexdigest() if self.__key else None

    def scrub(self, text: str, limit: int | None = None) -> str:
        """``text`` with the API key (and every other key read in this process) replaced by ``***``,
        then cut to ``limit`` characters (a cut key prefix at the end is replaced too)."""
        with _SECRETS_LOCK:
            keys = sorted(_SECRETS | ({self.__key} if self.__key else set()), key=len, reverse=True)
        return _scrub(text, keys, limit)

    @contextlib.contextmanager
    def bounded(self, seconds: float, what: str):
        """Every request of this thread inside the block ends by ``seconds`` from now (see the
        module docstring); past it, :class:`OutOfTime` says that ``what`` took too long."""
        prev = getattr(self._local, "deadline", None)
        self._local.deadline = (time.monotonic() + seconds, seconds, what)
        try:
            yield
        finally:
            self._local.deadline = prev

    def _left(self) -> float | None:
        """Seconds left of the current :meth:`bounded` block (None outside one); raises OutOfTime at 0."""
        d = getattr(self._local, "deadline", None)
        if d is None:
            return None
        left = d[0] - time.monotonic()
        if left <= 0:
            raise OutOfTime(f"the model server at {self.endpoint} did not finish {d[2]} within {d[1]:.0f} s "
                            f"(each request has --timeout {self.timeout:g} s)")
        return left

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            # the environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) read once for the
            # endpoint, not on every request (~0.1 ms each: requests walks os.environ per call); and no
            # ~/.netrc, whose entry would replace the API key's Authorization header
            s.trust_env = False
            proxies, s.verify = self._environment()
            s.proxies.update(proxies)
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers.update(self._headers)
            if self.__key:
                s.headers["Authorization"] = "Bearer " + self.__key
            self._local.session = s
        return s

    def _environment(self) -> tuple[dict, bool | str]:
        """(proxies, verify) for the endpoint from the environment, as requests reads it per request."""
        env = getattr(self, "_env", None)
        if env is None:
            proxies = requests.utils.get_environ_proxies(self.endpoint)
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            env = self._env = (proxies, verify)
        return env

    def interrupt(self) -> None:
        """Make pending backoff sleeps return at once (used when a run stops)."""
        self._stop.set()

    def _sleep(self, seconds: float) -> None:
        left = self._left()
        if left is not None:
            seconds = min(seconds, left)
        if self._stop.wait(max(0.0, seconds)):
            raise BackendError("interrupted while waiting to retry", retryable=True)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` + 1: full jitter, bounded by ``backoff_max``."""
        return self._rng.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** attempt)))

    def _once(self, method: str, url: str, payload: Any, timeout: float,
              max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, Any, dict, bytes]:
        """One HTTP attempt with a total deadline. Returns (status, json_or_None, headers, raw).

        The read timeout bounds the wait for the response headers; the watchdog shuts the
        socket down when the body is still arriving at the deadline (a server that trickles
        bytes would otherwise keep every per-read timeout happy forever). The body is read
        in chunks and abandoned (:class:`_TooLarge`) once it passes ``max_bytes``.
        """
        deadline = time.monotonic() + timeout
        sess = self._session()
        resp = sess.request(method, url, json=payload, timeout=(self.connect_timeout, timeout), stream=True)
        remaining = deadline - time.monotonic()
        handle = _WATCHDOG.schedule(max(0.0, remaining), resp) if remaining > 0 else None
        try:
            if handle is None:
                raise _Deadline()
            raw = _read_capped(resp, max_bytes)
        except (_Deadline, _TooLarge):
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
        return resp.status_code, parse_json(raw), resp.headers, raw

    def _answer(self, path: str, attempt: int, status: int, data: Any, headers, raw: bytes,
                check: Callable[[Any], None] | None, retry_500: bool) -> tuple[Any, float | None, str]:
        """Judge one answer: ``(json, None, "")`` to return, ``(None, wait, reason)`` to retry
        (``wait`` None: backoff), or raise BackendError (permanent, or Retry-After too long)."""
        if status == 200:
            if data is None:
                raise MalformedResponse(f"unparseable JSON from {path} ({len(raw)} bytes)")
            if check is not None:
                check(data)
            return data, None, ""
        if not (status in RETRY_STATUSES and (retry_500 or status != 500)):
            raise BackendError(self.scrub(f"HTTP {status} from {self.endpoint}{path}: "
                                          f"{_snippet(data, raw, self.scrub)}"),
                               status=status, retryable=False, attempts=attempt + 1)
        reason = f"HTTP {status} from {path}: {_snippet(data, raw, self.scrub)}"
        ra = retry_after(headers)
        if ra is None:
            return None, None, reason
        if ra > self.max_retry_after:
            raise BackendError(self.scrub(
                f"{reason}; server asked to retry after {ra:.0f} s (> max_retry_after "
                f"{self.max_retry_after:.0f} s)"), status=status, retryable=True, attempts=attempt + 1)
        return None, ra * (1.0 + 0.1 * self._rng.random()), reason

    def request(self, method: str, path: str, payload: Any = None, *, timeout: float | None = None,
                max_retries: int | None = None, check: Callable[[Any], None] | None = None,
                retry_500: bool = True, max_bytes: int = DEFAULT_MAX_BYTES, cap_note: str = "") -> tuple[Any, int]:
        """Send with retries. Returns (json, attempts). ``check(json)`` raises
        :class:`MalformedResponse` for malformed bodies; ``retry_500=False`` makes HTTP 500 permanent;
        an answer over ``max_bytes`` fails at once (``cap_note`` says how the cap was sized)."""
        url = self.endpoint + path
        timeout = self.timeout if timeout is None else timeout
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            wait = None
            left = self._left()
            t = timeout if left is None else max(0.001, min(timeout, left))
            try:
                status, data, headers, raw = self._once(method, url, payload, t, max_bytes)
                data, wait, reason = self._answer(path, attempt, status, data, headers, raw, check, retry_500)
                if not reason:
                    return data, attempt + 1
            except MalformedResponse as exc:
                reason = str(exc)
            except _Deadline:
                reason = f"no complete answer from {path} within {t:.0f} s"
            except _TooLarge:
                raise BackendError(self.scrub(f"{self.endpoint}: the answer from {path} is larger than {max_bytes:,} "
                                              f"bytes, the cap for this request{cap_note}; not stored"),
                                   retryable=False, attempts=attempt + 1) from None
            except requests.exceptions.Timeout:
                reason = f"timed out after {t:.0f} s on {path}"
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                reason = f"connection error on {path}: {type(exc).__name__}"
            except (requests.exceptions.RequestException, ValueError) as exc:
                # a request that cannot be sent (invalid header or URL ...): one line, never the key
                raise BackendError(self.scrub(" ".join(f"{self.endpoint}{path}: cannot send the request: "
                                                       f"{type(exc).__name__}: {exc}".split()), limit=300),
                                   retryable=False, attempts=attempt + 1) from None
            if attempt >= retries:
                raise BackendError(self.scrub(f"{self.endpoint}: {reason} (gave up after {attempt + 1} attempts)"),
                                   retryable=True, attempts=attempt + 1)
            with self._retries_lock:
                self.retries += 1
            self._sleep(wait if wait is not None else self.backoff(attempt))
            attempt += 1


_CHUNK = 1 << 20   # bytes per read of an answer: few reads (each one waits for the interpreter lock again)


def _read_capped(resp, max_bytes: int) -> bytes:
    """The body of ``resp`` (decoded as sent, gzip included), or :class:`_TooLarge` past ``max_bytes``."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise _TooLarge()
    buf = bytearray()
    for chunk in resp.iter_content(_CHUNK):
        buf += chunk
        if len(buf) > max_bytes:
            raise _TooLarge()
    return bytes(buf)


def parse_json(raw: bytes) -> Any:
    """The JSON value of a body (invalid UTF-8 decoded to U+FFFD, a UTF-8 BOM dropped), or None when
    it is empty or not JSON (nesting too deep to parse included)."""
    if not raw:
        return None
    if _orjson is not None:
        # orjson parses what it accepts to the values json.loads gives, but for an integer past
        # 64 bits, which it reads as a float (no server sends one: the checks of counts, indexes
        # and token ids refuse a float, so such an answer is malformed, never a silently different
        # number); what it refuses (invalid UTF-8, a BOM, NaN literals, lone surrogate escapes,
        # deep nesting) goes the standard library's way below
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw.decode("utf-8-sig", "replace"))
    except (ValueError, RecursionError):
        return None


def _snippet(data: Any, raw: bytes, scrub: Callable[..., str], limit: int = 200) -> str:
    """The error message of an answer, on one line, scrubbed of the key *before* it is cut to ``limit``."""
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        text = str(err)[:64 * 1024]
    else:
        text = raw[:64 * 1024].decode("utf-8", "replace")
    text = " ".join(text.split())
    return scrub(text, limit=limit) if text else "(empty body)"
