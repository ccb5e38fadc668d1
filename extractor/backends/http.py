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

Secrets
    The API key is read from the environment variable named by ``api_key_env``
    (absent is fine for local servers), held in a name-mangled attribute, sent as
    ``Authorization: Bearer``, and replaced by ``***`` in the text of every
    :class:`BackendError` this module raises; it never appears in ``repr``.
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
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from extractor.backends.base import BackendError
from extractor.errors import TrawlError

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))


class MalformedResponse(Exception):
    """A 200 answer whose body is not what was asked for (retried like a 5xx)."""


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
    if not os.environ.get(api_key_env):
        return f"${api_key_env} is not set (or empty), so no API key was sent; export it or name another " \
               f"variable with --api-key-env"
    return f"check the API key in ${api_key_env}"


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

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
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

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            raise BackendError("interrupted while waiting to retry", retryable=True)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` + 1: full jitter, bounded by ``backoff_max``."""
        return self._rng.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** attempt)))

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
            raise BackendError(self.scrub(f"HTTP {status} from {self.endpoint}{path}: {_snippet(data, raw)}"),
                               status=status, retryable=False, attempts=attempt + 1)
        reason = f"HTTP {status} from {path}: {_snippet(data, raw)}"
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
                retry_500: bool = True) -> tuple[Any, int]:
        """Send with retries. Returns (json, attempts). ``check(json)`` raises
        :class:`MalformedResponse` for malformed bodies; ``retry_500=False`` makes HTTP 500 permanent."""
        url = self.endpoint + path
        timeout = self.timeout if timeout is None else timeout
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            wait = None
            try:
                status, data, headers, raw = self._once(method, url, payload, timeout)
                data, wait, reason = self._answer(path, attempt, status, data, headers, raw, check, retry_500)
                if not reason:
                    return data, attempt + 1
            except MalformedResponse as exc:
                reason = str(exc)
            except _Deadline:
                reason = f"no complete answer from {path} within {timeout:.0f} s"
            except requests.exceptions.Timeout:
                reason = f"timed out after {timeout:.0f} s on {path}"
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                reason = f"connection error on {path}: {type(exc).__name__}"
            if attempt >= retries:
                raise BackendError(self.scrub(f"{self.endpoint}: {reason} (gave up after {attempt + 1} attempts)"),
                                   retryable=True, attempts=attempt + 1)
            with self._retries_lock:
                self.retries += 1
            self._sleep(wait if wait is not None else self.backoff(attempt))
            attempt += 1


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
