"""Scoring a run's generations with the model (``trawl rank``): the model-facing driver.

:func:`score_run` reads ``RUN/generations``, asks a scorer (any object with the
``Backend.score`` operation: an HTTP backend, vLLM in process, llama.cpp in process) for the
per-token log-probabilities of each completion (the completion alone: the candidate memorized
text, as Carlini et al. 2021 score their samples), of its lowercased form, and, with a reference
model, of the same text under it; turns them into the signals of :mod:`reports.ranking`; and
writes ``RUN/scores.parquet`` (docs/CONTRACTS.md §7).

Like sampling:

* **batched**: ``batch`` texts per ``score`` call, ``concurrency`` calls in flight;
* **resumable**: each scored generation is appended to ``RUN/_scores_journal.jsonl`` at once
  (flushed; a torn last line is dropped); at the end of every invocation (budget stop, failure
  and interrupt included) ``scores.parquet`` is rewritten atomically with every row so far and
  the journal removed; a rerun scores only what is missing, with the same settings (others
  need ``restart``);
* **budgeted and priced**: :class:`extractor.sampling.budget.Budget` (``max_tokens``,
  ``max_dollars`` over every session, ``max_seconds`` of this one) with
  :class:`~extractor.sampling.budget.Pricing` (prompt tokens at the input price, the one
  generated token of an echo request at the output price, or an hourly price times wall time);
  the totals are kept in the file's metadata;
* **locked**: the run folder's lock (``RUN/.lock``) is held throughout: scoring never runs beside
  the sampler or another ``trawl rank`` on the same run.

The core, :func:`score_texts`, scores any list of keyed texts into a folder (``trawl mia`` uses
it for its member and non-member sets, in ``OUT``); :func:`score_run` is it over a run's
generations. Journal lines carry a CRC-32 (:func:`extractor.sampling.journal.journal_line`): a
damaged line is dropped and its text scored again, never read as other numbers.

A text the scorer refuses on its own (too long for the context window, a permanent 4xx) gets an
``error`` and no signals; a transient failure that outlasts the backend's retries stops the
invocation (what was scored is kept; rerun to continue): :class:`ScoringStopped`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import pyarrow as pa

from corpora.storage import PARQUET_READ_OPTIONS, generation_parts, utcnow, write_parquet_atomic
from extractor.backends.base import BackendError
from extractor.backends.http import error_text
from extractor.errors import TrawlError
from extractor.sampling.budget import Budget, Pricing, Usage, stop_reason
from extractor.sampling.journal import journal_line, read_journal_line
from extractor.sampling.run_folder import RunLock
from reports import ranking

JOURNAL_NAME = "_scores_journal.jsonl"


class ScoringStopped(TrawlError):
    """A transient failure outlasted the backend's retries: scoring stopped; what was scored is kept.
    ``notes``: the summary's notes (how the figures so far were obtained)."""

    def __init__(self, message: str, notes: list[str] | None = None):
        super().__init__(message)
        self.notes = list(notes or [])


@dataclass
class ScoreSettings:
    k: float = ranking.DEFAULT_K
    window: int = ranking.DEFAULT_WINDOW
    top_k: int = 20                # alternatives asked for over HTTP (min-k%++'s approximation)
    batch: int = 8
    concurrency: int | None = None  # calls in flight; None: 1 in process, 4 over HTTP
    timeout: float | None = None
    lowercase: bool = True
    budget: Budget = field(default_factory=Budget)
    pricing: Pricing = field(default_factory=Pricing)
    restart: bool = False
    progress: bool = False         # a progress bar on stderr (shown only on a terminal)

    def check(self) -> None:
        if not (0 < self.k <= 1):
            raise TrawlError(f"k must be in (0, 1] (a fraction of the tokens), got {self.k}")
        if self.window < 1 or self.batch < 1 or (self.concurrency is not None and self.concurrency < 1) or self.top_k < 0:
            raise TrawlError("window, batch and concurrency must be >= 1, top_k >= 0")

    def identity(self, scorer, reference) -> dict:
        """What makes two invocations' rows comparable (checked on resume)."""
        return {"k": self.k, "window": self.window, "top_k": self.top_k, "lowercase": self.lowercase,
                "scorer": _who(scorer), "reference": _who(reference) if reference is not None else None}


def _who(be) -> str:
    d = be.describe() if hasattr(be, "describe") else {}
    # the model, not where it is served (a restarted server gets another port; replicas are one model)
    if d.get("model_file"):
        d = {**d, "model_file": os.path.basename(str(d["model_file"]))}
    return json.dumps({k: d.get(k) for k in ("backend", "model", "model_file") if d.get(k) is not None},
                      sort_keys=True)


@dataclass
class ScoreSummary:
    path: str
    rows: int
    new: int
    errors: int
    stopped: str | None
    prompt_tokens: int
    cost_usd: float
    exact_vocab_stats: bool
    notes: list[str]
    complete: bool = True          # every text given has a row
    noun: str = "generations"

    def line(self) -> str:
        s = f"scored {self.rows} {self.noun} ({self.new} new, {self.errors} with errors) into {self.path}"
        if self.stopped:
            s += f"; stopped early ({self.stopped}): rerun to continue"
        return s


def _read_generations(run_dir: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for p in generation_parts(run_dir):
        try:
            t = pq.read_table(p, columns=["run_id", "request_id", "attack", "variant", "completion"],
                              **PARQUET_READ_OPTIONS)
        except Exception as exc:
            raise TrawlError(f"{p}: not a readable generations part ({type(exc).__name__}: "
                             f"{error_text(exc, 200)})") from None
        for r in t.to_pylist():
            if isinstance(r.get("request_id"), str):
                c = r.get("completion")
                r["completion"] = c if isinstance(c, str) else ""
                rows.append(r)
    if not rows:
        raise TrawlError(f"{run_dir}: no generations to score (expected generations/part-*.parquet)")
    return rows


def _load_previous(run_dir: str, ident: dict, restart: bool) -> tuple[dict, Usage]:
    """Rows already scored (request id -> row) and the usage so far, from scores.parquet and the journal."""
    import pyarrow.parquet as pq

    path = os.path.join(run_dir, ranking.SCORES_NAME)
    jpath = os.path.join(run_dir, JOURNAL_NAME)
    done: dict[str, dict] = {}
    usage = Usage()
    if restart:
        for p in (path, jpath):
            if os.path.exists(p):
                os.unlink(p)
        return done, usage
    if os.path.exists(path):
        try:
            pf = pq.ParquetFile(path, **PARQUET_READ_OPTIONS)
            meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()
                    if not k.startswith(b"ARROW:")}
            rows = pf.read().to_pylist()
        except Exception as exc:
            raise TrawlError(f"{path}: not a readable scores file ({type(exc).__name__}: {error_text(exc, 200)}); "
                             f"rerun with --restart to score again") from None
        try:
            old = json.loads(meta.get("settings", "{}"))
            usage.prompt_tokens = int(meta.get("prompt_tokens", 0))
            usage.completion_tokens = int(meta.get("completion_tokens", 0))
            usage.cost_usd = float(meta.get("cost_usd", 0.0))
        except (ValueError, TypeError):
            raise TrawlError(f"{path}: damaged metadata; rerun with --restart to score again") from None
        if old != ident:
            raise TrawlError(f"{path} was made with other settings ({_diff(old, ident)}); rerun with --restart "
                             f"to score the run again with these")
        for r in rows:
            if isinstance(r.get("request_id"), str):
                done[r["request_id"]] = r
    if os.path.exists(jpath):
        with open(jpath, "rb") as fh:
            lines = fh.readlines()
        for line in lines:
            # every line must match its checksum (a journal from before it is scored again: it lives only
            # between a kill and the next invocation, and a line without one cannot be trusted)
            rec = read_journal_line(line, True)
            if rec is None:
                continue        # torn (a kill mid-write) or damaged: that text was never counted as scored
            row = _journal_row(rec, ident)
            if row is None:
                continue
            done[row["request_id"]] = row
            usage.prompt_tokens += rec["prompt_tokens"]
            usage.completion_tokens += rec["completion_tokens"]
            usage.cost_usd += rec["cost_usd"]
    return done, usage


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _journal_row(rec, ident: dict) -> dict | None:
    """The row of a journal record whose settings are ``ident`` and whose fields have their types (a
    record that passed its checksum yet is not one trawl wrote is dropped: its text is scored again)."""
    if not isinstance(rec, dict) or rec.get("settings") != ident or not isinstance(rec.get("row"), dict):
        return None
    row = rec["row"]
    cost = rec.get("cost_usd")
    if not (isinstance(row.get("request_id"), str) and _count(rec.get("prompt_tokens"))
            and _count(rec.get("completion_tokens")) and isinstance(cost, (int, float)) and not isinstance(cost, bool)
            and math.isfinite(cost) and cost >= 0):
        return None
    for name in ranking.SIGNAL_COLUMNS:
        v = row.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return None
    for name in ("scored_tokens", "zlib_entropy"):       # int32 columns
        if row.get(name) is not None and not (_count(row.get(name)) and row[name] < 2 ** 31):
            return None
    for name in ("run_id", "attack", "variant", "error"):
        if row.get(name) is not None and not isinstance(row.get(name), str):
            return None
    if not (row.get("min_k_pp_exact") is None or isinstance(row.get("min_k_pp_exact"), bool)):
        return None
    lps = row.get("token_logprobs")
    if lps is not None and not (isinstance(lps, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                for x in lps)):
        return None
    return row


def _diff(old, new) -> str:
    if not isinstance(old, dict):
        return "unknown"
    keys = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys) or "unknown"


def _table(rows: list[dict]) -> pa.Table:
    schema = ranking.scores_schema()
    cols = {name: [] for name in schema.names}
    for r in rows:
        for name in schema.names:
            v = r.get(name)
            if isinstance(v, float) and not math.isfinite(v) and name != "token_logprobs":
                v = None if math.isnan(v) else v
            cols[name].append(v)
    return pa.table(cols, schema=schema)


def _est_tokens(text: str) -> int:
    return len(text.encode("utf-8")) // 2 + 2   # worst case ~2 bytes a token, plus BOS and the echo's one


def score_run(run_dir: str, scorer, *, reference=None, settings: ScoreSettings | None = None,
              log=None) -> ScoreSummary:
    """Score every generation of ``run_dir`` (module docstring); returns what was done."""
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise TrawlError(f"{run_dir}: no such run folder")
    return score_texts(run_dir, _read_generations(run_dir), scorer, reference=reference, settings=settings)


def score_texts(folder: str, items: list[dict], scorer, *, reference=None, settings: ScoreSettings | None = None,
                noun: str = "generations") -> ScoreSummary:
    """Score ``items`` (dicts: ``request_id`` the key, ``completion`` the text, ``run_id`` / ``attack`` /
    ``variant`` carried into the row) into ``folder``'s scores.parquet, through its journal, under its
    lock (module docstring). Items already scored with the same settings are not scored again.

    A transient failure that outlasts the retries raises :class:`ScoringStopped` after the rows so far
    are written; a budget cap or an interrupt returns a summary whose ``stopped`` says which."""
    st = settings or ScoreSettings()
    st.check()
    folder = os.path.abspath(folder)
    for be in (scorer, reference):
        if be is not None:
            be.probe()
            if not be.capabilities.score:
                raise TrawlError(f"{_who(be)} cannot score text (no per-token logprobs of a given text); "
                                 f"use --model-file GGUF to score in process")
    exact = bool(scorer.capabilities.full_distribution)
    ident = st.identity(scorer, reference)
    concurrency = st.concurrency or (1 if scorer.capabilities.score == "in_process" else 4)
    notes = []
    if not exact:
        notes.append(f"min-k%++ uses the vocabulary mean and variance estimated from the top-{st.top_k} "
                     f"logprobs (the scorer does not return the full distribution)")
    wanted = {g["request_id"] for g in items}
    with RunLock(folder):
        done, usage = _load_previous(folder, ident, st.restart)
        todo = list({g["request_id"]: g for g in items if g["request_id"] not in done}.values())
        new = 0
        jpath = os.path.join(folder, JOURNAL_NAME)
        lock = threading.Lock()
        t0 = time.monotonic()
        last_t = [t0]
        stopped = None
        failure: list[BaseException] = []
        bar = _bar(st.progress, len(wanted), len(wanted) - len(todo), noun)
        with open(jpath, "ab") as journal:
            def record(rows_out, ptoks, ctoks):
                nonlocal new
                with lock:
                    cost = st.pricing.token_cost(ptoks, ctoks)
                    if st.pricing.hourly:
                        now = time.monotonic()
                        cost = st.pricing.time_cost(now - last_t[0])
                        last_t[0] = now
                    share = cost / max(len(rows_out), 1)
                    lines = []
                    for row, pt in rows_out:
                        done[row["request_id"]] = row
                        lines.append(journal_line({"settings": ident, "row": row, "prompt_tokens": pt,
                                                   "completion_tokens": ctoks // max(len(rows_out), 1),
                                                   "cost_usd": share}))
                        new += 1
                    journal.write(b"".join(lines))
                    journal.flush()
                    usage.prompt_tokens += ptoks
                    usage.completion_tokens += ctoks
                    usage.cost_usd += cost
                    if bar is not None:
                        bar.update(len(rows_out))

            batches = [todo[i:i + st.batch] for i in range(0, len(todo), st.batch)]
            reserved = {"tokens": 0}
            try:
                with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="trawl-score") as pool:
                    pending = {}
                    it = iter(batches)
                    while True:
                        while len(pending) < concurrency and not failure and stopped is None:
                            b = next(it, None)
                            if b is None:
                                break
                            est = sum(_est_tokens(g["completion"]) * (2 if st.lowercase else 1) *
                                      (2 if reference is not None else 1) for g in b)
                            with lock:
                                why = stop_reason(st.budget, usage, reserved_tokens=reserved["tokens"] + est,
                                                  reserved_dollars=st.pricing.token_cost(reserved["tokens"] + est, 0),
                                                  elapsed_s=time.monotonic() - t0)
                                if why:
                                    stopped = why
                                    break
                                reserved["tokens"] += est
                            fut = pool.submit(_score_batch, scorer, reference, b, st)
                            pending[fut] = est
                        if not pending:
                            break
                        finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                        for fut in finished:
                            est = pending.pop(fut)
                            with lock:
                                reserved["tokens"] -= est
                            try:
                                rows_out, ptoks, ctoks = fut.result()
                            except BaseException as exc:   # noqa: BLE001 - recorded, the rest drains
                                failure.append(exc)
                                continue
                            record(rows_out, ptoks, ctoks)
            except KeyboardInterrupt:
                stopped = "interrupted"
            finally:
                if bar is not None:
                    bar.close()
                complete = wanted <= done.keys() and not failure
                _finish(folder, done, ident, usage, st, exact, complete=complete)
                try:
                    os.unlink(jpath)
                except OSError:
                    pass
        if failure:
            exc = failure[0]
            if isinstance(exc, (TrawlError, BackendError)):
                have = len(wanted & done.keys())
                raise ScoringStopped(f"scoring stopped: {error_text(exc, 300)} ({have} of {len(wanted)} "
                                     f"{noun} scored are kept; rerun to continue)", notes) from None
            raise exc
    errors = sum(1 for r in done.values() if r.get("error"))
    return ScoreSummary(path=os.path.join(folder, ranking.SCORES_NAME), rows=len(done), new=new, errors=errors,
                        stopped=stopped, prompt_tokens=usage.prompt_tokens, cost_usd=usage.cost_usd,
                        exact_vocab_stats=exact, notes=notes, complete=complete, noun=noun)


def _bar(progress: bool, total: int, initial: int, noun: str):
    """A tqdm bar on stderr when ``progress`` and stderr is a terminal (None otherwise)."""
    if not progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit=noun.rstrip("s") or noun, desc="scoring", file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def _finish(run_dir, done, ident, usage, st, exact, complete) -> None:
    table = _table(sorted(done.values(), key=lambda r: r["request_id"]))
    meta = {"trawl_scores_format": ranking.SCORES_FORMAT, "settings": json.dumps(ident, sort_keys=True),
            "k": str(st.k), "window": str(st.window), "exact_vocab_stats": "true" if exact else "false",
            "complete": "true" if complete else "false", "prompt_tokens": str(usage.prompt_tokens),
            "completion_tokens": str(usage.completion_tokens), "cost_usd": repr(float(usage.cost_usd)),
            "updated_at": utcnow()}
    table = table.replace_schema_metadata(meta)
    write_parquet_atomic(table, os.path.join(run_dir, ranking.SCORES_NAME), sync_dir=True)


def _call(be, texts, st, vocab_stats):
    """``be.score`` of ``texts``; a batch the backend refuses as a whole for a permanent reason is
    scored one text at a time so that only the offending text fails. Returns (scores or exceptions)."""
    try:
        return list(be.score(texts, top_k=st.top_k if vocab_stats else 0, vocab_stats=vocab_stats,
                             timeout=st.timeout))
    except (TrawlError, BackendError) as exc:
        if isinstance(exc, BackendError) and exc.retryable:
            raise
        if len(texts) == 1:
            return [exc]
    out = []
    for t in texts:
        out.extend(_call(be, [t], st, vocab_stats))
    return out


def _score_batch(scorer, reference, batch: list[dict], st: ScoreSettings):
    texts = [g["completion"] for g in batch]
    nonempty = [i for i, t in enumerate(texts) if t]
    sel = [texts[i] for i in nonempty]
    main = dict(zip(nonempty, _call(scorer, sel, st, True))) if sel else {}
    lower = {}
    low_idx = [i for i in nonempty if texts[i].lower() != texts[i]]
    if st.lowercase and low_idx:
        lower = dict(zip(low_idx, _call(scorer, [texts[i].lower() for i in low_idx], st, False)))
    ref = dict(zip(nonempty, _call(reference, sel, st, False))) if reference is not None and sel else {}
    rows_out, ptoks, ctoks = [], 0, 0
    for i, g in enumerate(batch):
        row = {"run_id": g.get("run_id"), "request_id": g["request_id"], "attack": g.get("attack"),
               "variant": g.get("variant"), "error": None, "min_k_pp_exact": None, "token_logprobs": None}
        pt = 0
        s = main.get(i)
        errs = [x for x in (s, lower.get(i), ref.get(i)) if isinstance(x, BaseException)]
        if not texts[i]:
            row.update(ranking.signals("", []))
            row["error"] = "empty completion"
        elif errs:
            row.update(ranking.signals(texts[i], []))
            row["error"] = error_text(errs[0], 300)
        else:
            lo = lower.get(i)
            lower_lps = lo.logprobs if lo is not None else (s.logprobs if st.lowercase else None)
            rf = ref.get(i)
            row.update(ranking.signals(texts[i], s.logprobs, mean=s.vocab_mean, var=s.vocab_var,
                                       lower_lps=lower_lps, ref_lps=rf.logprobs if rf is not None else None,
                                       k=st.k, window=st.window))
            row["min_k_pp_exact"] = bool(s.exact_vocab_stats)
            row["token_logprobs"] = [float(x) for x in s.logprobs]
            for x, be in ((s, scorer), (lo, scorer), (rf, reference)):
                if x is not None:
                    pt += int(x.prompt_tokens or 0)
                    ctoks += 1 if be.capabilities.score == "echo" else 0   # the one token an echo request generates
        ptoks += pt
        rows_out.append((row, pt))
    return rows_out, ptoks, ctoks
