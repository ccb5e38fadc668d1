"""Scoring a run's generations with the model (``trawl rank``): the model-facing driver.

:func:`score_run` reads ``RUN/generations``, asks a scorer (any object with the
``Backend.score`` operation: an HTTP backend, vLLM in process, llama.cpp in process) for the
per-token log-probabilities of each completion (the completion alone: the candidate memorized
text, as Carlini et al. 2021 score their samples), of its lowercased form, and, with a reference
model, of the same text under it; turns them into the signals of :mod:`reports.ranking`; and
writes ``RUN/scores.parquet`` (docs/CONTRACTS.md §6).

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

A text the scorer refuses on its own (too long for the context window, a permanent 4xx) gets an
``error`` and no signals; a transient failure that outlasts the backend's retries stops the
invocation (what was scored is kept; rerun to continue).
"""
from __future__ import annotations

import json
import math
import os
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
from extractor.sampling.run_folder import RunLock
from reports import ranking

JOURNAL_NAME = "_scores_journal.jsonl"


@dataclass
class ScoreSettings:
    k: float = ranking.DEFAULT_K
    window: int = ranking.DEFAULT_WINDOW
    top_k: int = 20                # alternatives asked for over HTTP (min-k%++'s approximation)
    batch: int = 8
    concurrency: int = 1
    timeout: float | None = None
    lowercase: bool = True
    budget: Budget = field(default_factory=Budget)
    pricing: Pricing = field(default_factory=Pricing)
    restart: bool = False

    def check(self) -> None:
        if not (0 < self.k <= 1):
            raise TrawlError(f"k must be in (0, 1] (a fraction of the tokens), got {self.k}")
        if self.window < 1 or self.batch < 1 or self.concurrency < 1 or self.top_k < 0:
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

    def line(self) -> str:
        s = f"scored {self.rows} generations ({self.new} new, {self.errors} with errors) into {self.path}"
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
            lines = fh.read().split(b"\n")
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue        # a torn last line: that generation was never counted as scored
            if not isinstance(rec, dict) or rec.get("settings") != ident or not isinstance(rec.get("row"), dict):
                continue
            row = rec["row"]
            if isinstance(row.get("request_id"), str):
                done[row["request_id"]] = row
                usage.prompt_tokens += int(rec.get("prompt_tokens") or 0)
                usage.completion_tokens += int(rec.get("completion_tokens") or 0)
                usage.cost_usd += float(rec.get("cost_usd") or 0.0)
    return done, usage


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
    st = settings or ScoreSettings()
    st.check()
    run_dir = os.path.abspath(run_dir)
    if not os.path.isdir(run_dir):
        raise TrawlError(f"{run_dir}: no such run folder")
    gens = _read_generations(run_dir)
    for be in (scorer, reference):
        if be is not None:
            be.probe()
            if not be.capabilities.score:
                raise TrawlError(f"{_who(be)} cannot score text (no per-token logprobs of a given text); "
                                 f"use --model-file GGUF to score in process")
    exact = bool(scorer.capabilities.full_distribution)
    ident = st.identity(scorer, reference)
    notes = []
    if not exact:
        notes.append(f"min-k%++ uses the vocabulary mean and variance estimated from the top-{st.top_k} "
                     f"logprobs (the scorer does not return the full distribution)")
    with RunLock(run_dir):
        done, usage = _load_previous(run_dir, ident, st.restart)
        todo = [g for g in gens if g["request_id"] not in done]
        new = errors_before = 0
        jpath = os.path.join(run_dir, JOURNAL_NAME)
        lock = threading.Lock()
        t0 = time.monotonic()
        last_t = [t0]
        stopped = None
        failure: list[BaseException] = []
        with open(jpath, "ab") as journal:
            def record(rows_out, ptoks, ctoks, elapsed_since):
                nonlocal new
                with lock:
                    cost = st.pricing.token_cost(ptoks, ctoks)
                    if st.pricing.hourly:
                        now = time.monotonic()
                        cost = st.pricing.time_cost(now - last_t[0])
                        last_t[0] = now
                    share = cost / max(len(rows_out), 1)
                    for row, pt in rows_out:
                        done[row["request_id"]] = row
                        journal.write(json.dumps({"settings": ident, "row": row, "prompt_tokens": pt,
                                                  "completion_tokens": ctoks // max(len(rows_out), 1),
                                                  "cost_usd": share}, allow_nan=True).encode() + b"\n")
                        new += 1
                    journal.flush()
                    usage.prompt_tokens += ptoks
                    usage.completion_tokens += ctoks
                    usage.cost_usd += cost

            batches = [todo[i:i + st.batch] for i in range(0, len(todo), st.batch)]
            reserved = {"tokens": 0}
            try:
                with ThreadPoolExecutor(max_workers=st.concurrency, thread_name_prefix="trawl-score") as pool:
                    pending = {}
                    it = iter(batches)
                    while True:
                        while len(pending) < st.concurrency and not failure and stopped is None:
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
                            record(rows_out, ptoks, ctoks, None)
            except KeyboardInterrupt:
                stopped = "interrupted"
            finally:
                _finish(run_dir, done, ident, usage, st, exact, complete=len(done) >= len(gens) and not failure)
                try:
                    os.unlink(jpath)
                except OSError:
                    pass
        if failure:
            exc = failure[0]
            if isinstance(exc, (TrawlError, BackendError)):
                raise TrawlError(f"scoring stopped: {error_text(exc, 300)} ({len(done)} of {len(gens)} "
                                 f"generations scored are kept; rerun to continue)") from None
            raise exc
    errors = sum(1 for r in done.values() if r.get("error"))
    return ScoreSummary(path=os.path.join(run_dir, ranking.SCORES_NAME), rows=len(done), new=new, errors=errors,
                        stopped=stopped, prompt_tokens=usage.prompt_tokens, cost_usd=usage.cost_usd,
                        exact_vocab_stats=exact, notes=notes)


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
