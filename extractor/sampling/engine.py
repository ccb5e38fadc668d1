"""The dispatch loop: keeps ``concurrency`` requests in flight, records what comes back, enforces the budget.

Threads: up to ``concurrency`` daemon workers send requests (:class:`~extractor.sampling.requests.Sender`),
started as requests go out (one per request in flight); four more, started when a completion first
waits for its token boundaries, fill those in batches; the calling thread alone dispatches,
records, flushes and writes ``run.json``, so the run folder has one writer.

Guarantees:

* every finished generation is in the run folder's journal before it is counted and before
  the next messages are taken (the rows of the requests that came back together go in one
  :meth:`RunDir.append_many` write), and parts roll every ``flush_rows`` rows,
  :data:`~extractor.sampling.run_folder.PART_TOKENS` tokens or ``flush_seconds`` seconds;
* nothing is dispatched that could cross a budget cap (each request in flight reserves its
  worst case); a request serving several generations that does not fit a generation cap is
  sent whole and only its first generations are stored (cutting it would change its seed);
* on ``max_seconds``, repeated errors, a crash or an interrupt, requests not yet taken by a
  worker are not sent; the rest are waited for at most ``drain_seconds``, then abandoned
  (not recorded; ``--resume`` redoes them);
* a refusal (401/403/404) or ``max_consecutive_failures`` failures in a row stop the run with
  a :class:`TrawlError` in :attr:`Engine.fatal`; any other exception is re-raised by :meth:`run`
  (the runner then still calls :meth:`finish`, so ``run.json`` says ``failed`` with the error);
* every error text kept in ``run.json`` (``errors``, ``error``) is one line, scrubbed of API keys.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from corpora.storage import utcnow
from extractor.attacks import get_attack
from extractor.backends import BackendError
from extractor.backends.http import scrub_secrets
from extractor.backends.openai import api_key_hint
from extractor.errors import TrawlError
from extractor.sampling.budget import Budget, Pricing, Usage, stop_reason
from extractor.sampling.plan import Grouping, Unit
from extractor.sampling.requests import Done, Sender
from extractor.sampling.journal import journal_record
from extractor.sampling.run_folder import PART_TOKENS, RunDir, table_or_none
from extractor.sampling.summary import RunSummary, attack_summaries, reads_back

_DRAINING_STOPS = ("max_seconds", "errors", "crashed", "interrupted")  # requests not yet sent are dropped
# a row's `extra` as stored where orjson cannot write it: compact, keys sorted, non-ASCII kept (built once)
_EXTRA_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
try:   # optional (pyproject lists it): the same JSON, keys sorted, ~8x faster than the standard library
    from orjson import OPT_SORT_KEYS as _SORT_KEYS, dumps as _orjson_dumps
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _orjson_dumps = None


def extra_json(extra: dict) -> tuple[str, bool]:
    """``(text, plain)``: a row's ``extra`` as stored (compact JSON, keys sorted, non-ASCII kept) and
    whether that text reads back to an equal dict of the same types (:func:`reads_back`). orjson
    writes the plain ones (4 us -> 0.5 us a row with the standard library's encoder: 4 ms of a
    1,000-generation run); the standard library the rest (NaN, infinities, lone surrogates, ints
    past 64 bits, non-string keys), with the same separators: ``json.loads`` reads either text to
    the same values."""
    plain = reads_back(extra)
    if plain and _orjson_dumps is not None:
        try:
            return _orjson_dumps(extra, option=_SORT_KEYS).decode("utf-8"), True
        except TypeError:      # an int past 64 bits
            pass
    return _EXTRA_JSON.encode(extra), plain


def one_line(error: BaseException, *, with_type: bool = False, limit: int = 500) -> str:
    """An error's text as run.json keeps it: one line, scrubbed of every API key, then cut."""
    text = f"{type(error).__name__}: {error}" if with_type else str(error)
    return scrub_secrets(" ".join(text.split()), limit=limit)


@dataclass
class _Flight:
    """Units handed to the workers and not yet back, with what they reserve of the budget."""

    units: dict[int, Unit] = field(default_factory=dict)
    generating: set[int] = field(default_factory=set)   # whose generation has not come back
    reserved: list = field(default_factory=lambda: [0, 0, 0.0])  # generations, tokens, dollars

    def add(self, unit: Unit) -> None:
        self.units[id(unit)] = unit
        self.generating.add(id(unit))
        self._count(unit, 1)

    def remove(self, unit: Unit) -> Unit:
        self.generating.discard(id(unit))
        self.units.pop(id(unit), None)
        self._count(unit, -1)
        return unit

    def _count(self, unit: Unit, sign: int) -> None:
        self.reserved[0] += sign * len(unit.jobs)
        self.reserved[1] += sign * unit.reserve_tokens
        self.reserved[2] += sign * unit.reserve_dollars


class Engine:
    def __init__(self, be, rd: RunDir, resolved: list[dict], usage: Usage, budget: Budget, pricing: Pricing, *,
                 run_id: str, model: str, grouping: Grouping, concurrency: int, progress: bool, planned: int,
                 drain_seconds: float, max_consecutive_failures: int, log):
        self.be, self.rd, self.usage = be, rd, usage
        self.resolved = resolved
        self.attacks = {spec["name"]: get_attack(spec["name"])() for spec in resolved}
        self.budget, self.pricing = budget, pricing
        self.run_id, self.model = run_id, model
        self.grouping = grouping
        self.sender = Sender(be, run_id=run_id, model=model)
        self.concurrency = concurrency
        self.progress, self.planned = progress, planned
        self.drain_seconds = drain_seconds
        self.max_consecutive_failures = max_consecutive_failures
        self.log = log
        self.stop_reason: str | None = None
        self.fatal: BaseException | None = None
        self.failed = 0
        self.new = 0
        self.errors: list[str] = []
        self.session_completion = 0
        self.t0 = time.monotonic()
        self.last_done_t = self.t0
        self.prompt_bytes_per_token = 4.0
        self._ppt_samples = [0, 0]  # prompt bytes, prompt tokens seen
        self.status: dict = {}
        self.session: dict = {}
        self.bar = None

    def _reserve(self, parts, skip: frozenset = frozenset()) -> Unit:
        return Unit.reserve(parts, skip, bytes_per_token=self.prompt_bytes_per_token, pricing=self.pricing)

    # -- worker threads -----------------------------------------------------------------------
    def _worker(self, work_q: queue.Queue, post_q: queue.Queue, done_q: queue.Queue) -> None:
        while True:
            unit = work_q.get()
            if unit is None:
                return
            try:
                d = self.sender.execute(unit)
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                done_q.put(("done", Done(unit=unit, error=exc, finished_at=time.monotonic())))
                continue
            if any(p.choice.token_source == "pending" for p in d.pending):
                done_q.put(("freed", unit))   # the generation slot is free; tokens come later
                post_q.put(d)
            else:
                try:
                    self.sender.build_rows(d)
                    self._prefinish(d)
                except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                    d.error = exc
                done_q.put(("done", d))

    def _post_worker(self, post_q: queue.Queue, done_q: queue.Queue) -> None:
        """Token boundaries for finished completions, in batches: one tokenize request serves
        every completion waiting at that moment (see Backend.fill_tokens_many)."""
        while True:
            d = post_q.get()
            if d is None:
                return
            batch, stop = [d], False
            while len(batch) < 64:
                try:
                    more = post_q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self.sender.fill_many([p.choice for x in batch for p in x.pending
                                       if p.choice.token_source == "pending"])
            except Exception:  # noqa: BLE001 - each generation is retried alone below
                pass
            for x in batch:
                try:
                    self.sender.build_rows(x, tokens_done=True)
                    self._prefinish(x)
                except BaseException as exc:  # noqa: BLE001
                    x.error = exc
                x.freed = True
                done_q.put(("done", x))
            if stop:
                return

    def _start_threads(self, pending: int):
        """The queues, and the thread lists that :meth:`_more_workers` and :meth:`_start_post_threads`
        fill as they are needed: a worker per request in flight (up to ``concurrency``), and the
        token-boundary threads once a completion waits for its boundaries. A run of 8 requests
        starts 8 threads, not ``concurrency`` + 4 (each start waits for the new thread to run)."""
        self.work_q: queue.Queue = queue.Queue()
        self.post_q: queue.Queue = queue.Queue()
        self.done_q: queue.Queue = queue.Queue()
        self._max_workers = min(self.concurrency, max(1, pending))
        self._threads: list[threading.Thread] = []
        self._posts: list[threading.Thread] = []
        return self._threads, self._posts

    def _more_workers(self, wanted: int) -> None:
        """Start workers until ``wanted`` of them run (at most the limit set by :meth:`_start_threads`)."""
        while len(self._threads) < min(wanted, self._max_workers):
            t = threading.Thread(target=self._worker, args=(self.work_q, self.post_q, self.done_q), daemon=True,
                                 name=f"trawl-worker-{len(self._threads)}")
            t.start()
            self._threads.append(t)

    def _start_post_threads(self) -> None:
        """The four token-boundary threads (batched tokenize requests, see :meth:`_post_worker`)."""
        while len(self._posts) < 4:
            t = threading.Thread(target=self._post_worker, args=(self.post_q, self.done_q), daemon=True,
                                 name=f"trawl-tokens-{len(self._posts)}")
            t.start()
            self._posts.append(t)

    def _open_bar(self, pending: int) -> None:
        if not self.progress:
            return
        from tqdm import tqdm

        bar = tqdm(total=self.planned, initial=self.planned - pending, unit="gen", dynamic_ncols=True,
                   desc="sampling", file=sys.stderr, smoothing=0.1)
        self.bar = bar
        outer_log = self.log  # messages above the bar, not through it
        self.log = lambda msg: bar.write(f"trawl: {msg}", file=sys.stderr) if not bar.disable else outer_log(msg)

    # -- main loop ----------------------------------------------------------------------------
    def run(self, units, pending: int) -> None:
        """Send ``units`` (from :meth:`Grouping.pending`; ``pending`` generations in all)."""
        self._open_bar(pending)
        threads, posts = self._start_threads(pending)
        # units handed to the workers whose generation has not come back; up to `concurrency` more
        # than the workers wait in work_q, so that a worker sends its next request the moment its
        # last one returns (no round trip through this thread); the worker count bounds what is
        # actually in flight on the server
        fl = _Flight()
        self._units, self._next_unit, self._exhausted = units, None, False
        self._consecutive_failures = 0
        self._last_flush = self._last_status = time.monotonic()
        stop_at = None
        try:
            while True:
                self._dispatch(fl)
                if not fl.units:
                    break
                if self.stop_reason is not None and stop_at is None:
                    stop_at = time.monotonic()
                    if not self._begin_stop(fl):
                        break
                if stop_at is not None and time.monotonic() - stop_at > self.drain_seconds:
                    self.log(f"abandoning {len(fl.units)} request(s) still in flight after {self.drain_seconds:.0f} s "
                             f"(not recorded; --resume redoes them)")
                    self.be.interrupt()
                    break
                self._receive(fl)
        finally:
            for _ in threads:
                self.work_q.put(None)
            for _ in posts:
                self.post_q.put(None)
            if self.bar is not None:
                self._tick()
                self.bar.close()
        if self.fatal is not None and not isinstance(self.fatal, TrawlError):
            raise self.fatal

    def _dispatch(self, fl: _Flight) -> None:
        """Hand units to the workers while the budget, the prefetch and the outstanding bound allow."""
        prefetch = self.concurrency
        max_outstanding = 4 * self.concurrency + 64
        batch: list[Unit] = []
        while (self.stop_reason is None and len(fl.generating) < self.concurrency + prefetch
               and len(fl.units) < max_outstanding and not self._exhausted):
            if self._next_unit is None:
                group = next(self._units, None)
                if group is None:
                    self._exhausted = True
                    break
                self._next_unit = self._reserve(*group)
            nu = self._next_unit
            why = stop_reason(self.budget, self.usage, reserved_generations=fl.reserved[0] + len(nu.jobs),
                              reserved_tokens=fl.reserved[1] + nu.reserve_tokens,
                              reserved_dollars=fl.reserved[2] + nu.reserve_dollars,
                              elapsed_s=time.monotonic() - self.t0, extra_dollars=self._time_cost_pending())
            if why is not None:
                # a request serving several generations (n, a prompt list) that does not fit a
                # generation cap is sent whole and only its first ones are stored: cutting it
                # would change its seed and so its samples (see Grouping.pending)
                if why == "max_generations" and len(nu.jobs) > 1:
                    room = (self.budget.max_generations or 0) - self.usage.generations - fl.reserved[0]
                    if room >= 1:
                        beyond = frozenset(j.request_id for j in nu.jobs[room:])
                        self._next_unit = self._reserve(nu.parts, nu.skip | beyond)
                        continue
                self.stop_reason = why
                break
            self._next_unit = None
            fl.add(nu)
            batch.append(nu)
        if batch:
            # the workers first, then the requests: each start waits for its new thread to run, and
            # one that finds a request waiting keeps the interpreter lock through its send (and,
            # once answers come, other workers' parsing holds it up to the 5 ms switch interval),
            # while one that finds none blocks at once; the 8 requests of a 1,000-generation run
            # went out over 17-80 ms one start at a time, over ~5 ms so
            self._more_workers(len(fl.generating))
            for nu in batch:
                self.work_q.put(nu)

    def _begin_stop(self, fl: _Flight) -> bool:
        """The run just got a stop reason: drop unsent units where it says so; False when
        nothing is left in flight."""
        if self.stop_reason in _DRAINING_STOPS:
            # units still waiting for a worker are not sent (a cap on generations, tokens
            # or dollars reserved room for them, so those go out)
            while True:
                try:
                    u = self.work_q.get_nowait()
                except queue.Empty:
                    break
                if u is None:
                    continue
                fl.remove(u)
            if not fl.units:
                return False
        if self.stop_reason not in ("errors",):
            self.log(f"budget {self.stop_reason} reached: no new requests; finishing the {len(fl.units)} "
                     f"in flight")
        return True

    def _receive(self, fl: _Flight) -> None:
        """Handle the next messages of the workers (or, after half a second without one, the clock):
        the first one that comes and every one already waiting behind it (up to 256), their rows
        journaled in one write. Each blocking call of this thread hands the interpreter lock to
        the busy workers and waits to get it back, so it makes few of them."""
        try:
            msgs = [self.done_q.get(timeout=0.5)]
        except queue.Empty:
            self._tick()
            if self.budget.max_seconds is not None and self.stop_reason is None and \
                    time.monotonic() - self.t0 >= self.budget.max_seconds:
                self.stop_reason = "max_seconds"
            return
        while len(msgs) < 256:
            try:
                msgs.append(self.done_q.get_nowait())
            except queue.Empty:
                break
        rows: list[dict] = []
        records: list = []
        extras: list = []
        tables: list | None = []
        for kind, d in msgs:
            if kind == "freed":
                fl.generating.discard(id(d))
                self._start_post_threads()
                continue
            unit = fl.remove(d.unit)
            if d.error is not None:
                self._failed(unit, d.error)
                continue
            self._consecutive_failures = 0
            done = self._record(d)
            if not done:
                continue
            rows.extend(done)
            extras.extend(d.extras if d.extras is not None and len(d.extras) == len(done) else [None] * len(done))
            if d.journal is None:   # rows made final here (an hourly price): converted here too
                d.table = table_or_none(done)
                d.journal = journal_record(done, d.table)
            records.extend(d.journal)
            if tables is not None and d.table is not None and d.table.num_rows == len(done):
                tables.append(d.table)
            else:
                tables = None    # the run folder converts these rows itself
        if not rows:
            return
        self.rd.append_many(rows, records, tables, extras)   # the rows in one journal write, then counted
        self.usage.generations += len(rows)
        self.new += len(rows)
        self.session_completion += sum(row["completion_tokens"] for row in rows)
        if self.bar is not None:
            self.bar.update(len(rows))
        now = time.monotonic()
        if self.rd.should_flush() or now - self._last_flush >= self.rd.flush_seconds:
            self.rd.flush()
            self._last_flush = now
        elif self._last_part(fl):
            self.rd.spill()   # the run's last part: its row groups are encoded as rows come, not at the end
        if now - self._last_status >= 5.0:
            self._write_status("running")
            self._last_status = now
        self._tick()

    def _last_part(self, fl: _Flight) -> bool:
        """Every request is sent and the rows still in flight (at most what they reserve) fit the open
        part: it is the run's last, and the run ends waiting for it. Written as its rows come
        (:meth:`RunDir.spill`), only its last row group is left to encode then. Earlier parts are
        written whole when they roll: one row group compresses better and costs less CPU than many."""
        return (self._exhausted and self.rd.buffered() + fl.reserved[0] < self.rd.flush_rows
                and self.rd.buffered_tokens() + fl.reserved[1] < PART_TOKENS)

    def _failed(self, unit: Unit, error: BaseException) -> None:
        if isinstance(error, BackendError) and error.status in (401, 403, 404):
            self.failed += len(unit.jobs)
            if self.fatal is None:
                self.stop_reason = "errors"
                self.fatal = TrawlError(f"the server refused a request: {error}"
                                        + (f"; {api_key_hint(self.be.api_key_env)}"
                                           if error.status in (401, 403) else ""))
                self.log(f"stopping: {self.fatal}")
        elif isinstance(error, (BackendError, TrawlError)):
            self.failed += len(unit.jobs)
            self._consecutive_failures += 1
            msg = one_line(error)
            if len(self.errors) < 20:
                self.errors.append(msg)
            if self._consecutive_failures >= self.max_consecutive_failures and self.stop_reason is None:
                self.stop_reason = "errors"
                self.fatal = TrawlError(f"{self._consecutive_failures} requests in a row failed; last error: {msg}")
                self.log(f"stopping: {self.fatal}")
        else:
            self.stop_reason = "crashed"
            self.fatal = error

    # -- recording ----------------------------------------------------------------------------
    def _final_rows(self, d: Done, cost_total: float) -> list[dict]:
        """``d``'s rows with their attack's facts and billed shares in ``extra`` and their share of
        ``cost_total`` (any thread: ``Attack.finish`` is a pure function of the generation)."""
        rows = d.result or []
        share = cost_total / max(1, len(rows))
        billed_p = d.billed_prompt / max(1, len(rows))
        billed_c = d.billed_completion / max(1, len(rows))
        jobs = {j.request_id: j for j in d.unit.jobs}
        d.extras = []
        for row in rows:
            job_attack = self.attacks[row["attack"]]
            extra = row.pop("_extra")
            job = jobs[row["request_id"]]
            try:
                extra.update(job_attack.finish(job, row["completion"], row["token_offsets"]))
            except Exception as exc:  # noqa: BLE001 - an analysis bug must not lose the generation
                extra["finish_error"] = f"{type(exc).__name__}: {exc}"
            extra["billed_prompt_tokens"] = billed_p
            extra["billed_completion_tokens"] = billed_c
            row["extra"], plain = extra_json(extra)
            row["cost_usd"] = share
            d.extras.append(extra if plain else None)   # for the run's summary (attack_summaries)
        return rows

    def _prefinish(self, d: Done) -> None:
        """In the worker that built ``d``'s rows: make them final and encode their journal record,
        so that the dispatch thread only writes and counts them. Not with an hourly price (a
        request's cost is the wall time since the one recorded before it: the dispatch thread's).
        Its rows also become the Arrow table that goes into the Parquet part (:meth:`RunDir.append_many`)."""
        if self.pricing.hourly or d.error is not None:
            return
        cost_total = self.pricing.token_cost(d.billed_prompt, d.billed_completion)
        d.result = self._final_rows(d, cost_total)
        d.table = table_or_none(d.result)
        d.journal = journal_record(d.result, d.table)
        d.cost_usd = cost_total

    def _endpoint_stats(self) -> dict:
        return self.be.stats()   # the replica pool reports per-member figures; others: {}

    def _time_cost_pending(self) -> float:
        """With an hourly price: the cost of the wall time since the last recorded generation."""
        if not self.pricing.hourly:
            return 0.0
        return self.pricing.time_cost(time.monotonic() - self.last_done_t)

    def _record(self, d: Done) -> list[dict]:
        """The rows of a finished request, ready to journal (extra finished, cost shared; done by
        the worker already unless the price is hourly, see :meth:`_prefinish`); the request's
        billed tokens and cost are counted (its generations once journaled)."""
        if d.cost_usd is not None:
            rows, cost_total = d.result or [], d.cost_usd
        else:
            if self.pricing.hourly:
                cost_total = self.pricing.time_cost(max(0.0, d.finished_at - self.last_done_t))
                self.last_done_t = max(self.last_done_t, d.finished_at)
            else:
                cost_total = self.pricing.token_cost(d.billed_prompt, d.billed_completion)
            rows = self._final_rows(d, cost_total)
        self.usage.prompt_tokens += d.billed_prompt
        self.usage.completion_tokens += d.billed_completion
        self.usage.cost_usd += cost_total
        pb = sum(len(p[0].prompt.encode("utf-8")) for p in d.unit.parts)
        if d.billed_prompt > 0 and not d.unit.jobs[0].steps:
            self._ppt_samples[0] += pb
            self._ppt_samples[1] += d.billed_prompt
            self.prompt_bytes_per_token = max(1.0, self._ppt_samples[0] / self._ppt_samples[1]) * 0.9
        return rows

    def _tick(self) -> None:
        if self.bar is None:
            return
        el = max(1e-6, time.monotonic() - self.t0)
        self.bar.set_postfix_str(f"{self.session_completion / el:.1f} tok/s, ${self.usage.cost_usd:.4f}",
                                 refresh=False)

    def _write_status(self, state: str) -> None:
        st = self.status
        el = time.monotonic() - self.t0
        st.update({
            "status": state, "finished": self.usage.generations, "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens, "cost_usd": round(self.usage.cost_usd, 8),
            "failed_requests": self.failed, "retries": self.be.retries, "updated_at": utcnow(precise=True),
            "endpoint_stats": self._endpoint_stats(),
        })
        self.session.update({"elapsed_s": round(el, 3), "new_generations": self.new,
                             "completion_tokens": self.session_completion,
                             "tokens_per_s": round(self.session_completion / max(el, 1e-6), 3),
                             "failed_requests": self.failed, "errors": self.errors[:20]})
        self.rd.write_status(st)

    def finish(self, interrupted: bool) -> RunSummary:
        el = time.monotonic() - self.t0
        if interrupted:
            state = "interrupted"
        elif self.fatal is not None:
            state = "failed"
        elif self.usage.generations >= self.planned:
            state, self.stop_reason = "finished", None
        elif self.stop_reason is not None:
            state = "stopped"
        else:
            state = "incomplete"  # some requests failed for good: --resume retries them
            self.stop_reason = "failed_requests"
        self.status["stopped_early"] = state != "finished"
        self.status["stop_reason"] = self.stop_reason
        self.status["error"] = None if self.fatal is None else (
            one_line(self.fatal) if isinstance(self.fatal, TrawlError) else one_line(self.fatal, with_type=True))
        self.session["ended_at"] = utcnow(precise=True)
        attacks = attack_summaries(self.rd, self.resolved)
        self.status["attacks"] = attacks
        self._write_status(state)
        return RunSummary(
            run_dir=self.rd.path, run_id=self.run_id, status=state, stop_reason=self.stop_reason,
            planned=self.planned, finished=self.usage.generations, new_generations=self.new,
            failed_requests=self.failed, prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens, cost_usd=self.usage.cost_usd, elapsed_s=el,
            tokens_per_s=self.session_completion / max(el, 1e-6),
            capabilities=self.be.capabilities.to_dict(), attacks=attacks)
