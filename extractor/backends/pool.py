"""Backend ``pool``: several replicas of one model behind one backend object.

A campaign may name several endpoints that serve the *same* model (replicas).
:class:`PoolBackend` implements :class:`~extractor.backends.base.Backend`, as
:class:`~extractor.backends.openai.OpenAIBackend` does, so
``run_attacks(endpoint=[url1, url2, ...])`` needs no other change:
:func:`extractor.backends.make_backend` builds a pool when ``endpoint`` is a list
of more than one URL.

Load spreading
    Each request goes to the live member with the fewest requests in flight (ties:
    round robin), so a slow replica gets less work.

Surviving a replica going down
    Members are built with ``max_retries=0``: a connection error, timeout, dropped
    connection, 5xx, 429 or garbled answer from one member does not wait out its own
    backoff: the pool sends the same request, with the same seed, to another live member
    at once. A member whose connection fails (refused, reset, timed out) or that failed
    3 requests in a row is marked *down* for ``revive_after`` = 2 seconds, doubling up
    to ``revive_max`` = 300 s while it keeps failing; a transient HTTP error alone does
    not take it out of rotation. When every member is down the pool backs
    off (exponential with full jitter, as the single backend does) and tries again,
    up to ``max_retries`` rounds. A down member gets one trial request when its
    cool-down ends (probed first if it was down from the start). A permanent error
    (HTTP 4xx other than 408/409/425/429) is raised at once: replicas would answer
    the same. The sampler records a generation only when ``complete`` returns, so a
    request that was in flight on a member that died is neither lost (it is re-sent
    to a live member) nor stored twice.

    Token boundaries that need the tokenize endpoint are computed on any live member
    (replicas share the tokenizer): in :meth:`fill_tokens` when the sampler defers them
    (``complete(defer_tokens=True)``), or inline when the member that completed died
    before it could tokenize; so a dying replica leaves no row without token offsets.

Attribution
    ``endpoint`` is thread-local: after ``complete`` it names the member that served
    the calling worker thread's last request, which the sampler writes to the
    ``endpoint`` column. Outside a request it is the comma-joined list of members.
"""
from __future__ import annotations

import random
import sys
import threading
import time
from typing import Callable

from extractor.backends.base import BackendError, Capabilities, CompletionResult
from extractor.backends.alignment import AlignmentError
from extractor.backends.http import error_text, normalize_endpoint
from extractor.backends.openai import OpenAIBackend
from extractor.errors import TrawlError

# capabilities a replica may lack: the pool uses what every member has (a member probed later
# must have at least these, see _late_probe)
_SHARED_BOOLS = ("n", "prompt_list", "seed", "top_k", "logprobs_tokens", "logprobs_values", "temperature_decay",
                 "ignore_eos")
# facts every member must share exactly: they change what is sent (neutral sampling fields, the
# start-of-text ids, the tokenizer) or what the run records (server and version)
_SAME = ("api", "chat_max_field", "token_info", "tokenize", "tokenize_adds_bos", "server", "server_version", "sampling_defaults",
         "start_ids", "tokenizer_file")


def _disagreement(base: Capabilities, other: Capabilities) -> str | None:
    """The first fact in which two members differ (``_SAME``), as words, or None."""
    for name in _SAME:
        a, b = getattr(base, name), getattr(other, name)
        if a != b:
            return f"{name}: {a!r} vs {b!r}"
    return None


class _NotReplica(BackendError):
    """A member probed late does not match the pool (see PoolBackend._late_probe)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


class _Member:
    def __init__(self, backend: OpenAIBackend):
        self.be = backend
        self.in_flight = 0
        self.down_until = 0.0
        self.cooldown = 0.0
        self.probed = False
        self.excluded = False   # probed late and found not to be a replica: never used again
        self.served = 0
        self.failures = 0
        self.consecutive = 0
        self.last_error: str | None = None
        self.logged_at = -1e9


class PoolBackend:
    """Replicas of one model behind one backend (see the module docstring); implements
    :class:`~extractor.backends.base.Backend`."""

    name = "pool"

    def __init__(self, endpoint, model: str, *, max_retries: int = 6, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, revive_after: float = 2.0, revive_max: float = 300.0,
                 log: Callable[[str], None] | None = None, **member_kwargs) -> None:
        urls = [normalize_endpoint(u) for u in endpoint]
        if not urls:
            raise TrawlError("no endpoints given")
        dup = sorted({u for u in urls if urls.count(u) > 1})
        if dup:
            raise TrawlError(f"endpoint {dup[0]} is listed twice")
        self.model = model
        self.api_key_env = member_kwargs.get("api_key_env", "OPENAI_API_KEY")
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.revive_after = float(revive_after)
        self.revive_max = float(revive_max)
        self.down_after = 3   # consecutive HTTP-level failures (5xx, 429, garbage) that take a member down
        self._log = log or (lambda msg: print(f"trawl: {msg}", file=sys.stderr))
        self.members = [_Member(OpenAIBackend(u, model, max_retries=0, backoff_base=backoff_base,
                                              backoff_max=backoff_max, **member_kwargs)) for u in urls]
        self.endpoints = urls
        self.capabilities = Capabilities()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._rr = 0
        self._failovers = 0

    # -- plumbing ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"PoolBackend(endpoints={self.endpoints!r}, model={self.model!r})"

    @property
    def endpoint(self) -> str:
        return getattr(self._local, "endpoint", None) or ",".join(self.endpoints)

    @property
    def retries(self) -> int:
        return self._failovers + sum(m.be.retries for m in self.members)

    @retries.setter
    def retries(self, value: int) -> None:
        self._failovers = int(value)
        for m in self.members:
            m.be.retries = 0

    def describe(self) -> dict:
        d = self.members[0].be.describe()
        d.pop("endpoint", None)
        return {**d, "backend": self.name, "endpoints": list(self.endpoints),
                "max_retries": self.max_retries, "revive_after": self.revive_after}

    def stats(self) -> dict:
        """Per member: requests served, failures, whether it is down now, the last error."""
        now = time.monotonic()
        return {m.be.endpoint: {"served": m.served, "failures": m.failures, "down": m.down_until > now,
                                "excluded": m.excluded, "last_error": m.last_error} for m in self.members}

    def interrupt(self) -> None:
        self._stop.set()
        for m in self.members:
            m.be.interrupt()

    def close(self) -> None:
        self.interrupt()

    # -- capability detection ---------------------------------------------------------------
    def probe(self, use_cache: bool = True) -> Capabilities:
        """Probe every member; those unreachable now are marked down (retried later).

        Raises the first member's error when none answers, and TrawlError when the
        members disagree about where token boundaries come from (not replicas).
        """
        first_err = None
        ok: list[_Member] = []
        for m in self.members:
            try:
                m.be.probe(use_cache=use_cache)
                m.probed = True
                ok.append(m)
            except TrawlError as exc:
                first_err = first_err or exc
                self._mark_down(m, str(exc))
                self._log(f"endpoint {m.be.endpoint} is unusable now ({exc}); continuing on the others, "
                          f"retrying it every {self.revive_after:g}+ s")
        if not ok:
            raise first_err  # type: ignore[misc]
        base = ok[0].be.capabilities
        for m in ok[1:]:
            why = _disagreement(base, m.be.capabilities)
            if why:
                raise TrawlError(f"endpoints {ok[0].be.endpoint} and {m.be.endpoint} differ ({why}); the "
                                 f"endpoints of one target must be replicas of the same model and server")
        caps = Capabilities(**{**base.to_dict(), "notes": list(base.notes)})
        for name in _SHARED_BOOLS:
            setattr(caps, name, all(getattr(m.be.capabilities, name) for m in ok))
        self.capabilities = caps
        for m in ok:
            self._align(m)
        return caps

    def _late_probe(self, m: _Member) -> None:
        """Probe a member that was down when the pool was probed. It joins only when it is a
        replica of the others (every ``_SAME`` fact equal, every capability the pool uses
        present); otherwise it is taken out of rotation for good, with a log line."""
        try:
            m.be.probe()
        except TrawlError as exc:
            raise BackendError(str(exc), retryable=True) from None
        c = m.be.capabilities
        why = _disagreement(self.capabilities, c)
        if why is None:
            lacking = [n for n in _SHARED_BOOLS if getattr(self.capabilities, n) and not getattr(c, n)]
            why = f"lacks {', '.join(lacking)}" if lacking else None
        if why is not None:
            with self._lock:
                m.excluded = True
                m.last_error = f"not a replica of the other endpoints ({why})"
            self._log(f"endpoint {m.be.endpoint} is not used: it is not a replica of the other endpoints ({why})")
            raise _NotReplica(m.last_error)
        m.probed = True
        self._align(m)
        self._log(f"endpoint {m.be.endpoint} is back")

    def _align(self, m: _Member) -> None:
        """Make a member send exactly what the others send (seed, top_k ... as the pool decided)."""
        for name in _SHARED_BOOLS:
            setattr(m.be.capabilities, name, getattr(self.capabilities, name))

    # -- member selection -------------------------------------------------------------------
    def _mark_down(self, m: _Member, why: str) -> None:
        with self._lock:
            m.failures += 1
            m.last_error = why
            m.cooldown = min(self.revive_max, m.cooldown * 2 if m.cooldown else self.revive_after)
            m.down_until = time.monotonic() + m.cooldown

    def _failed(self, m: _Member, exc: BackendError) -> bool:
        """Record a transient failure; the member goes down when it looks dead. Returns True then."""
        why = str(exc)
        with self._lock:
            m.consecutive += 1
            dead = (m.cooldown > 0 or m.consecutive >= self.down_after
                    or any(s in why for s in ("connection error", "timed out", "no complete answer")))
            if not dead:
                m.failures += 1
                m.last_error = why
        if dead:
            self._mark_down(m, why)
        return dead

    def _mark_up(self, m: _Member) -> None:
        with self._lock:
            m.served += 1
            m.consecutive = 0
            if m.cooldown:
                m.cooldown = 0.0
                m.down_until = 0.0

    def _pick(self, tried: set[int]) -> _Member | None:
        now = time.monotonic()
        with self._lock:
            live = [(i, m) for i, m in enumerate(self.members)
                    if i not in tried and m.down_until <= now and not m.excluded]
            if not live:
                return None
            n = len(self.members)
            self._rr = (self._rr + 1) % n
            i, m = min(live, key=lambda im: (im[1].in_flight, (im[0] - self._rr) % n))
            m.in_flight += 1
            if m.cooldown:  # a revived member gets one trial at a time
                m.down_until = now + m.cooldown
            return m

    def _call(self, fn, what: str):
        """Run ``fn(member_backend)`` on a live member, failing over as the module docstring says."""
        rounds = 0
        last: BackendError | None = None
        while True:
            tried: set[int] = set()
            while True:
                m = self._pick(tried)
                if m is None:
                    break
                tried.add(self.members.index(m))
                try:
                    if not m.probed:
                        self._late_probe(m)
                    result = fn(m.be)
                except _NotReplica as exc:
                    last = exc
                    continue
                except BackendError as exc:
                    if not exc.retryable or self._stop.is_set():
                        raise
                    last = exc
                    was_up = m.cooldown == 0.0
                    went_down = self._failed(m, exc)
                    with self._lock:
                        self._failovers += 1
                    if went_down and was_up and time.monotonic() - m.logged_at > 30.0:   # <= every 30 s per member
                        m.logged_at = time.monotonic()
                        self._log(f"endpoint {m.be.endpoint} failed ({exc}); sending its requests to the others")
                    continue
                finally:
                    with self._lock:
                        m.in_flight -= 1
                self._mark_up(m)
                self._local.endpoint = m.be.endpoint
                return result
            if rounds >= self.max_retries:
                raise BackendError(f"{what}: every endpoint failed ({len(self.members)} endpoints, "
                                   f"{rounds + 1} rounds); last error: {last}", retryable=True,
                                   attempts=rounds + 1)
            # everyone is down: wait, then give every member another chance
            wait = self._rng.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** rounds)))
            usable = [m for m in self.members if not m.excluded]
            if not usable:
                raise BackendError(f"{what}: no endpoint is usable; last error: {last}", retryable=False)
            soonest = min(m.down_until for m in usable) - time.monotonic()
            wait = max(wait, min(soonest, self.backoff_max))
            if self._stop.wait(max(0.0, wait)):
                raise BackendError("interrupted while waiting to retry", retryable=True)
            with self._lock:
                now = time.monotonic()
                for m in self.members:
                    m.down_until = min(m.down_until, now)
            rounds += 1

    # -- the backend interface ------------------------------------------------------------------
    def complete(self, prompt, params: dict, *, n: int = 1, seed: int | None = None,
                 timeout: float | None = None, defer_tokens: bool = False) -> CompletionResult:
        """One completion on a live member. With ``defer_tokens``, boundaries that need the
        tokenize endpoint are left ``pending`` for :meth:`fill_tokens` (which fails over too)."""
        kw = {"defer_tokens": True} if defer_tokens else {}
        res: CompletionResult = self._call(
            lambda be: be.complete(prompt, params, n=n, seed=seed, timeout=timeout, **kw), "completion")
        served_by = res.endpoint = self._local.endpoint
        if self.capabilities.tokenize and not defer_tokens:
            for ch in res.choices:
                if ch.text and ch.token_offsets is None:
                    # the member died between completing and tokenizing: ask a live replica
                    try:
                        offsets = self._call(lambda be: be.token_offsets(ch.text), "tokenize")
                    except (AlignmentError, ValueError, TypeError):
                        continue  # not a dead member: a text the tokenizer cannot align, as with one server
                    ch.token_offsets = offsets
                    ch.completion_tokens = len(offsets)
                    ch.token_source = "tokenize"
                    ch.token_logprobs = None
            self._local.endpoint = served_by
        return res

    def score(self, texts, *, contexts=None, top_k: int = 0, vocab_stats: bool = False, full: bool = False,
              timeout: float | None = None) -> list:
        """``Backend.score`` on a live member (fails over like :meth:`complete`)."""
        return self._call(lambda be: be.score(texts, contexts=contexts, top_k=top_k, vocab_stats=vocab_stats,
                                              full=full, timeout=timeout), "scoring")

    def fill_tokens(self, choice):
        """Token boundaries of a choice left ``pending`` by ``complete(defer_tokens=True)``, on any
        live replica (they share the tokenizer). When every replica fails, the generation is kept
        with ``token_offsets=None`` and ``token_source="none"`` (as the single backend does)."""
        if choice.token_source != "pending":
            return choice
        keep = getattr(self._local, "endpoint", None)
        try:
            offsets = self._call(lambda be: be.token_offsets(choice.text), "tokenize")
            choice.token_offsets = offsets
            choice.token_source = "tokenize"
            choice.completion_tokens = len(offsets)
        except (BackendError, AlignmentError, ValueError, TypeError) as exc:
            choice.token_offsets = None
            choice.token_source = "none"
            choice.token_error = error_text(exc)
        finally:
            self._local.endpoint = keep
        return choice

    def fill_tokens_many(self, choices: list) -> None:
        """:meth:`fill_tokens` for each choice (each fails over on its own)."""
        for ch in choices:
            self.fill_tokens(ch)

    def tokenize(self, text: str) -> list[int]:
        return self._call(lambda be: be.tokenize(text), "tokenize")

    def detokenize(self, ids: list[int]) -> str:
        return self._call(lambda be: be.detokenize(ids), "detokenize")

    def token_offsets(self, text: str) -> list[int]:
        return self._call(lambda be: be.token_offsets(text), "tokenize")

    def piece(self, token_id: int) -> str:
        return self._call(lambda be: be.piece(token_id), "detokenize")
