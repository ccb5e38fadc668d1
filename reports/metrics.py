"""Memorization metrics of one run, computed from its Parquet files.

Inputs (docs/CONTRACTS.md section 3 and 4): ``RUN/generations/part-*.parquet``
(a row per completion), ``RUN/matches.parquet`` (a row per *maximal* verbatim
span, ``tokens`` = generation tokens fully inside the span; file metadata
``min_tokens`` = the matcher's threshold), ``RUN/run.json`` and
``RUN/config.json`` (both optional here).

Definitions (Nasr et al. 2023, arXiv 2311.17035), with ``W = window_tokens``
(50 unless told otherwise):

* A **memorized window** is the text of W consecutive generation tokens
  (token ``i`` covers bytes ``[token_offsets[i], token_offsets[i+1])`` of the
  completion's UTF-8, the last token runs to the end) that occurs verbatim in
  the reference corpus.
* A token is **memorized** iff it lies inside such a window. Since matches are
  maximal spans, that is: iff it is fully inside a span with ``tokens >= W``.
  ``memorized_token_fraction`` = memorized tokens / ``completion_tokens``
  summed over all generations (each token counted once, however many spans
  cover it).
* A **memorized generation** holds at least one memorized window (a span with
  ``tokens >= W``). ``memorized_generation_fraction`` = memorized generations /
  generations.
* **Unique memorized windows**: distinct window texts (exact bytes) over all
  generations. Windows are only taken *inside one span* (the union of two
  overlapping spans is not verbatim). Stored as 64-bit BLAKE2b digests: with
  ``n`` unique windows the expected number of colliding pairs is
  ``n^2 / 2^65`` (10 million windows: about 3e-6), so the count is exact in
  practice.
* **Frequency counts** ``f_k``: the number of unique windows seen in exactly
  ``k`` generations (a window counts once per generation); they feed
  Good-Turing and Chao1 (see :mod:`reports.extrapolate`).
* **Unique memorized bytes**: the size of the union of the corpus byte
  intervals ``[doc_offset, doc_offset + span_end - span_start)`` of document
  ``doc_id`` reproduced by the spans with ``tokens >= W``; a corpus region
  reproduced many times or by overlapping spans counts once. Caveat: when a
  span occurs several times in the corpus, only the reported (canonical,
  lowest shard/position) occurrence is used, so copies elsewhere are not
  added and two spans that reproduce the same text from different copies may
  be counted twice.
* **Run length**: a span's ``tokens``. ``spans_ge_T`` counts spans with at
  least T tokens and ``generations_ge_T`` generations holding one; a figure
  for a T below the matcher's ``min_tokens`` is never reported (None).
* **Longest run**: the single longest span the matcher reported (memorized or
  not, with a token count): most tokens, then most bytes, then the first by
  request id and span start. ``longest_run_tokens`` and ``longest_run_bytes``
  (run-wide, per attack, per variant) are that one span's tokens and bytes;
  metrics.json's top-level ``longest_run`` describes the run-wide one (text,
  source document, offset, request, attack, variant, occurrences; null when
  no span).
* **Run state**: ``run.state`` repeats run.json's status, stop reason, planned
  and finished generations; a status other than ``finished`` puts a warning
  first in ``warnings``. ``run.config`` carries config.json's ``pricing`` and
  ``budget``; ``run.pricing_basis`` and ``run.budget_caps`` say them in words.
* **Cost**: ``total_cost_usd`` = the sum of ``cost_usd`` over generations (or
  run.json's total when the column sums to 0). ``mb_per_dollar`` = unique
  memorized bytes / 1e6 / total cost; ``usd_per_unique_window`` = total cost /
  unique memorized windows. Both None ("n/a") when no cost was recorded or
  nothing was memorized.
* **Approximate memorization**: ``discoverable`` rows whose ``extra`` JSON has
  ``edit_distance_ratio <= 0.1`` and ``exact`` false; exact hits (``exact``
  true) are counted apart.
* **Divergence** (Nasr et al. 2023): ``diverged_generations`` = divergence-attack
  rows whose ``extra`` says ``"diverged": true``; ``divergence_rate`` = those /
  divergence-attack rows. special_chars (Bai et al. 2024) has no notion of
  divergence: its rows are in neither count and its figures are None (n/a), so is
  the run-wide rate of a run without divergence rows.
* **Memorization classes** (:mod:`reports.taxonomy`, Prashanth et al. 2024):
  each memorized span is low_information, reconstruction, recitation or
  recollection; ``by_category`` holds the figures above per class and for
  *non-trivial* memorization (recitation + recollection), and the run-wide,
  per-attack and per-variant figures carry ``nontrivial_*`` counterparts
  (:mod:`reports.taxonomy_figures`).
* **Repeated draws** (:mod:`reports.repeats`): sampled rows that are the same
  draw stored twice, or duplicate completions more frequent than their
  probability allows; a warning when there are any.

Memory is bounded by the number of memorized spans and windows and the number
of generations with any match (compact Arrow tables), never by the text of all
generations: generations are streamed in record batches.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import sys
import time
from array import array
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpora import storage
from reports import extrapolate as ex
from reports import taxonomy
from reports.categories import CATEGORIES, find_all
from reports.errors import ReportError
from reports.repeats import RepeatedDraws
from reports.taxonomy_figures import taxonomy_figures

# 1.1: longest_run; run.state, run.pricing_basis, run.budget_caps, run.config pricing/budget
# 1.2: memorization classes (by_category, taxonomy, nontrivial_*, a span's "taxonomy"), repeated_draws,
#      same_draw_rows / implausible_duplicate_rows; divergence_rate: the divergence attack only
SCHEMA_VERSION = "1.2"
THRESHOLDS = (10, 20, 30, 40, 50)
APPROX_EDIT_RATIO = 0.1
REPEAT_ATTACKS = ("divergence", "special_chars")   # attacks that carry diverged_generations / divergence_rate
DIVERGENCE_ATTACKS = ("divergence",)                # ... with a value; special_chars: n/a (Bai et al. define none)
BATCH_ROWS = 16_384
TOP_SPANS = 100

REQUIRED_GEN_COLUMNS = ("request_id", "attack", "variant", "completion", "token_offsets", "completion_tokens")
REQUIRED_MATCH_COLUMNS = ("request_id", "span_start", "span_end", "tokens", "doc_id", "doc_offset")

DEFINITIONS = {
    "generations": "rows of generations/part-*.parquet (one per completion)",
    "generated_tokens": "sum of completion_tokens over the generations",
    "memorized_window": "the text of {W} consecutive generation tokens that occurs verbatim in the reference corpus (Nasr et al. 2023)",
    "memorized_generations": "generations holding at least one memorized {W}-token window (a verbatim span of >= {W} fully covered tokens)",
    "memorized_generation_fraction": "memorized generations / generations",
    "memorized_tokens": "generation tokens lying inside at least one memorized {W}-token window (each token counted once)",
    "memorized_token_fraction": "memorized tokens / all generated tokens (sum of completion_tokens)",
    "unique_memorized_windows": "distinct {W}-token window texts (exact bytes) over all generations",
    "unique_memorized_bytes": "size of the union of corpus byte ranges reproduced by spans of >= {W} tokens (canonical occurrence of each span; each corpus byte counted once)",
    "longest_run_tokens": "tokens fully covered by the longest verbatim span (any span with a token count the matcher reported, memorized or not; longest = most tokens, then most bytes)",
    "longest_run_bytes": "bytes of that same longest span (the one with the most tokens), not the largest byte count of any span",
    "memorized_spans": "verbatim spans with >= {W} covered tokens (a span repeated in several generations counts each time)",
    "diverged_generations": "divergence-attack generations that left the repetition of the word (extra JSON \"diverged\": true; Nasr et al. 2023); n/a for special_chars, whose paper (Bai et al. 2024) defines no divergence",
    "divergence_rate": "diverged generations / generations of the divergence attack (special_chars rows are in neither; n/a when the run has no divergence rows)",
    "discoverable_rows": "generations of the discoverable attack",
    "category_<name>": "distinct memorized texts (spans of >= {W} tokens) in which the <name> detector fired (see the Content categories section)",
    "spans_ge_T": "verbatim spans with at least T covered tokens, T in 10, 20, 30, 40, 50; null for T below the matcher's threshold",
    "generations_ge_T": "generations holding a verbatim span of at least T tokens; null for T below the matcher's threshold",
    "good_turing_new_probability": "Good-Turing f1/N: chance that the next memorized window is one not seen before; f_k = unique windows seen in exactly k generations, N = sum k f_k",
    "chao1_total_windows": "Chao1 estimate of all extractable unique windows: n_obs + f1^2/(2 f2), or n_obs + f1(f1-1)/2 when f2 = 0",
    "chao1_ci95_low": "lower end of Chao1's 95% log-normal confidence interval (Chao 1987)",
    "chao1_ci95_high": "upper end of Chao1's 95% log-normal confidence interval (Chao 1987)",
    "total_cost_usd": "sum of cost_usd over generations (run.json's total when the column sums to 0; per attack and variant that total is then split in proportion to generations)",
    "mb_per_dollar": "unique memorized bytes / 1e6 / total cost (n/a when no cost was recorded)",
    "usd_per_unique_window": "total cost / unique memorized windows (n/a when no cost was recorded or nothing was memorized)",
    "unique_memorized_documents": "clusters of near-duplicate memorized texts (MinHash LSH, Jaccard >= {J} on word 5-gram shingles)",
    "unique_source_documents": "distinct corpus documents (canonical occurrence) from which a memorized span was reproduced",
    "approximate_memorization_hits": "discoverable rows whose continuation is within edit-distance ratio 0.1 of the corpus but not exact",
    "exact_discoverable_hits": "discoverable rows whose greedy continuation equals the corpus's exactly",
    "nontrivial_memorized_generations": "generations holding a memorized span (>= {W} tokens) of a non-trivial class, recitation or recollection (Prashanth et al. 2024; see Benign memorization)",
    "nontrivial_memorized_generation_fraction": "non-trivially memorized generations / generations",
    "nontrivial_memorized_tokens": "generation tokens inside a memorized span of a non-trivial class (each token counted once)",
    "nontrivial_memorized_token_fraction": "non-trivially memorized tokens / all generated tokens",
    "nontrivial_unique_memorized_windows": "distinct {W}-token window texts inside memorized spans of a non-trivial class",
    "nontrivial_unique_memorized_bytes": "size of the union of corpus byte ranges reproduced by memorized spans of a non-trivial class",
    "nontrivial_memorized_spans": "memorized spans (>= {W} tokens) of a non-trivial class, recitation or recollection",
    "nontrivial_good_turing_new_probability": "Good-Turing f1/N over the non-trivial windows only",
    "nontrivial_chao1_total_windows": "Chao1 estimate of all extractable non-trivial windows",
    "nontrivial_mb_per_dollar": "non-trivial unique memorized bytes / 1e6 / total cost (n/a when no cost was recorded)",
    "nontrivial_usd_per_unique_window": "total cost / non-trivial unique memorized windows (n/a when no cost or none)",
    "same_draw_rows": "sampled generations that repeat an earlier row's attack, variant, prompt, params and seed + n_choice: the same draw stored twice (see Repeated draws)",
    "implausible_duplicate_rows": "sampled generations that repeat an earlier row's completion more often than independent sampling explains (binomial tail < 1e-6 from token logprobs; without logprobs: >= 64 tokens and zlib ratio >= 0.5)",
}


# ----------------------------------------------------------------------------------------- input

def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def generation_parts(run_dir: str) -> list[str]:
    """The run's generation parts (corpora.storage.generation_parts); none is a ReportError."""
    if not os.path.isdir(run_dir):
        raise ReportError(f"{run_dir}: no such run folder")
    parts = storage.generation_parts(run_dir)
    if not parts:
        raise ReportError(f"{run_dir}: no generations (expected generations/part-*.parquet)")
    return parts


def _open_parquet(path: str, required) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ReportError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in required if c not in names]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)} (see docs/CONTRACTS.md)")
    return pf


def _iter_batches(pf: pq.ParquetFile, path: str, columns):
    try:
        yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except ReportError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise ReportError(f"{path}: damaged Parquet data ({exc})") from None


def _text(col: pa.Array) -> list[str]:
    """Strings of a string column, decoding invalid UTF-8 with U+FFFD instead of failing."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.large_binary())
    return [b.decode("utf-8", "replace") if b is not None else "" for b in col.to_pylist()]


def _bytes(col: pa.Array) -> list[bytes]:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.large_binary())
    return [b if b is not None else b"" for b in col.to_pylist()]


def _as_string(col: pa.Array) -> pa.Array:
    return col if col.type == pa.string() else pc.cast(col, pa.string())


# ----------------------------------------------------------------------------------------- helpers

def union_length(keys, starts: np.ndarray, ends: np.ndarray) -> dict:
    """Total length of the union of intervals ``[start, end)`` per key.

    ``keys`` is a 1-D array or a tuple of arrays (a compound key)."""
    if isinstance(keys, tuple):
        order = np.lexsort((starts,) + tuple(reversed(keys)))
        karr = list(zip(*(k[order].tolist() for k in keys)))
    else:
        order = np.lexsort((starts, keys))
        karr = keys[order].tolist()
    out: dict = {}
    if not len(karr):
        return out
    s = starts[order].tolist()
    e = ends[order].tolist()
    cur_k, cs, ce = karr[0], s[0], e[0]
    for k, a, b in zip(karr[1:], s[1:], e[1:]):
        if k != cur_k or a > ce:
            out[cur_k] = out.get(cur_k, 0) + (ce - cs)
            cur_k, cs, ce = k, a, b
        elif b > ce:
            ce = b
    out[cur_k] = out.get(cur_k, 0) + (ce - cs)
    return out


_LONGEST_ORDER = [("mt", "descending"), ("mb", "descending"), ("request_id", "ascending"), ("ss", "ascending")]


def _span_table(batch: pa.RecordBatch, rids: pa.Array, tok: np.ndarray, keep: np.ndarray) -> pa.Table:
    """The spans ``keep`` of a matches batch, with what the longest-run record needs
    (optional matches columns filled with their defaults)."""
    take = pa.array(keep)
    n = len(keep)

    def col(name, typ, default):
        if name not in batch.schema.names:
            return pa.array([default] * n, typ)
        c = batch.column(name).take(take)
        if typ == pa.large_binary() and (pa.types.is_string(c.type) or pa.types.is_large_string(c.type)):
            c = pc.cast(c, pa.large_binary())       # decoded with errors="replace" when shown
        return pc.fill_null(pc.cast(c, typ), default) if default is not None else pc.cast(c, typ)

    ss = batch.column("span_start").take(take).to_numpy(zero_copy_only=False).astype(np.int64)
    se = batch.column("span_end").take(take).to_numpy(zero_copy_only=False).astype(np.int64)
    return pa.table({"request_id": rids.take(take), "mt": pa.array(tok[keep]), "mb": pa.array(se - ss),
                     "ss": pa.array(ss), "se": pa.array(se), "shard": col("shard", pa.int64(), 0),
                     "doc_id": col("doc_id", pa.int64(), None), "doc_offset": col("doc_offset", pa.int64(), 0),
                     "occurrences": col("occurrences", pa.int64(), 1),
                     "source": col("source", pa.large_binary(), b"")})


def _longest_per(tbl: pa.Table, key: str | None) -> pa.Table:
    """The longest span per value of ``key`` (all rows: ``key=None``): most tokens (``mt``), then
    most bytes (``mb``), then the first by request_id and span start (``ss``)."""
    order = ([(key, "ascending")] if key else []) + [o for o in _LONGEST_ORDER if o[0] != key]
    t = tbl.sort_by(order)
    n = t.num_rows
    if key is None or n <= 1:
        return t.slice(0, min(n, 1))
    k = t.column(key).combine_chunks()
    first = np.ones(n, dtype=bool)
    first[1:] = pc.not_equal(k.slice(1), k.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return t.filter(pa.array(first))


def _completion_bytes(parts: list[str], request_id: str) -> bytes | None:
    """The completion (UTF-8 bytes) of one generation, reading only the request ids and then the
    one row group that holds it."""
    for path in parts:
        pf = _open_parquet(path, REQUIRED_GEN_COLUMNS)
        for rg in range(pf.metadata.num_row_groups):
            try:
                ids = pf.read_row_group(rg, columns=["request_id"]).column(0)
                hit = pc.index(_as_string(ids.combine_chunks()), request_id).as_py()
                if hit is not None and hit >= 0:
                    comp = pf.read_row_group(rg, columns=["completion"]).column(0).combine_chunks()
                    return _bytes(comp.slice(hit, 1))[0]
            except (OSError, pa.ArrowException) as exc:
                raise ReportError(f"{path}: damaged Parquet data ({exc})") from None
    return None


def _longest_run_record(span: dict | None, G: list, parts: list[str]) -> dict | None:
    """``longest_run`` of metrics.json: the single longest verbatim span the matcher reported."""
    if span is None:
        return None
    comp = _completion_bytes(parts, span["request_id"])
    raw = comp[span["ss"]:span["se"]] if comp is not None else b""
    g = G[span["gid"]]
    return {"tokens": int(span["mt"]), "bytes": int(span["mb"]), "text": raw.decode("utf-8", "replace"),
            "source": (span["source"] or b"").decode("utf-8", "replace"), "doc_id": span["doc_id"],
            "doc_offset": span["doc_offset"], "request_id": span["request_id"], "attack": g.attack,
            "variant": g.variant, "occurrences": span["occurrences"]}


def _safe_div(a, b):
    if b is None or a is None or b == 0:
        return None
    return a / b


class _Group:
    """Per (attack, variant) accumulator."""

    __slots__ = ("attack", "variant", "generations", "generated_tokens", "cost_usd", "diverged",
                 "memorized_generations", "memorized_tokens", "longest_run_tokens", "longest_run_bytes",
                 "spans_ge", "generations_ge", "approx", "exact", "discoverable_rows")

    def __init__(self, attack: str, variant: str):
        self.attack, self.variant = attack, variant
        self.generations = self.generated_tokens = self.diverged = 0
        self.cost_usd = 0.0
        self.memorized_generations = self.memorized_tokens = 0
        self.longest_run_tokens = self.longest_run_bytes = 0
        self.spans_ge = [0] * len(THRESHOLDS)
        self.generations_ge = [0] * len(THRESHOLDS)
        self.approx = self.exact = self.discoverable_rows = 0


# ----------------------------------------------------------------------------------------- main

def compute_metrics(run_dir, window_tokens: int = 50, index=None, minhash_threshold: float = 0.5,
                    minhash_max_texts: int = 200_000, top_spans: int = TOP_SPANS, progress: bool = False,
                    recitation_min_occurrences: int = taxonomy.RECITATION_MIN_OCCURRENCES) -> dict:
    """Compute every figure of a run's report; see the module docstring for definitions.

    Returns a JSON-serialisable dict with ``"schema_version"``. ``metrics`` holds the
    run-wide scalars (the names ``--fail-if`` accepts); ``per_attack`` and
    ``per_variant`` the same figures per attack and per (attack, variant).
    ``index`` (optional): a ``suffix_index.SuffixIndex`` (or its folder path) used to
    list the documents that hold each displayed span. ``progress``: a tqdm bar on stderr.
    ``recitation_min_occurrences``: corpus occurrences from which a memorized span is recitation
    (:mod:`reports.taxonomy`; default 6, Prashanth et al.'s "more than 5 duplicates").
    """
    t0 = time.time()
    run_dir = os.fspath(run_dir)
    W = int(window_tokens)
    if W < 1:
        raise ReportError(f"window_tokens must be >= 1, got {W}")
    if int(recitation_min_occurrences) < 1:
        raise ReportError(f"recitation_min_occurrences must be >= 1, got {recitation_min_occurrences}")
    parts = generation_parts(run_dir)
    if isinstance(index, (str, os.PathLike)) and not os.path.isdir(index):
        raise ReportError(f"--index {os.fspath(index)}: no such index folder")
    run_json = _read_json(os.path.join(run_dir, "run.json"))
    config = _read_json(os.path.join(run_dir, "config.json"))
    warnings: list[str] = []
    timings: dict[str, dict] = {}
    t_prev = [t0]

    def stage(name: str) -> None:
        now = time.time()
        timings[name] = {"seconds": round(now - t_prev[0], 3), "peak_rss_mb": _peak_rss_mb()}
        t_prev[0] = now

    # ---- pass 1: matches --------------------------------------------------------------
    mpath = os.path.join(run_dir, "matches.parquet")
    if not os.path.exists(mpath):
        raise ReportError(f"{run_dir}: no matches.parquet (run the matcher on this run first)")
    mpf = _open_parquet(mpath, REQUIRED_MATCH_COLUMNS)
    newest = max(parts, key=os.path.getmtime)
    if os.path.getmtime(newest) > os.path.getmtime(mpath) + 1:
        warnings.append(f"matches.parquet is older than {os.path.relpath(newest, run_dir)}: generations added "
                        "since the matcher ran are counted as unmatched; rerun the matcher for exact figures")
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in (mpf.schema_arrow.metadata or {}).items()}
    mcols = [c for c in ("request_id", "span_start", "span_end", "tokens", "shard", "doc_id", "doc_offset",
                         "occurrences", "source") if c in mpf.schema_arrow.names]   # text: from the completion
    mem_spans: dict[str, list[tuple]] = defaultdict(list)   # request_id -> spans with tokens >= W
    small_aggs: list[pa.Table] = []                          # per request_id: counts per threshold
    longest_parts: list[pa.Table] = []                       # per request_id: its longest span (_longest_per)
    run_length_counts = np.zeros(0, dtype=np.int64)
    min_seen = None
    n_spans = untokenized = 0
    for batch in _iter_batches(mpf, mpath, mcols):
        if batch.num_rows == 0:
            continue
        n_spans += batch.num_rows
        tcol = batch.column("tokens")
        if tcol.null_count:     # spans of generations without token offsets (matched by bytes)
            untokenized += tcol.null_count
            tcol = pc.fill_null(tcol, -1)
        tok = tcol.to_numpy(zero_copy_only=False).astype(np.int64)
        if (tok >= 0).any():
            bmin = int(tok[tok >= 0].min())
            min_seen = bmin if min_seen is None else min(min_seen, bmin)
        bc = np.bincount(np.clip(tok, 0, None))
        if len(bc) > len(run_length_counts):
            bc[: len(run_length_counts)] += run_length_counts
            run_length_counts = bc
        else:
            run_length_counts[: len(bc)] += bc
        cols = {"request_id": _as_string(batch.column("request_id"))}
        for i, t in enumerate(THRESHOLDS):
            cols[f"s{i}"] = pa.array((tok >= t).astype(np.int64))
        small = pa.table(cols).group_by(["request_id"]).aggregate(
            [(f"s{i}", "sum") for i in range(len(THRESHOLDS))])
        small_aggs.append(small)
        keep = np.nonzero(tok >= 0)[0]      # the longest run is measured in tokens: tokenized spans only
        if len(keep):
            longest_parts.append(_longest_per(_span_table(batch, cols["request_id"], tok, keep), "request_id"))
        big = np.nonzero(tok >= W)[0]
        if len(big):
            sub = batch.take(pa.array(big))
            rid = _text(sub.column("request_id"))
            g = lambda name, default=None: (sub.column(name).to_pylist() if name in sub.schema.names  # noqa: E731
                                            else [default] * sub.num_rows)
            texts = [None] * sub.num_rows
            sources = _text(sub.column("source")) if "source" in sub.schema.names else [""] * sub.num_rows
            for r, s, e, tk, sh, d, do, oc, src, tx in zip(rid, g("span_start"), g("span_end"), g("tokens"),
                                                            g("shard", 0), g("doc_id"), g("doc_offset"),
                                                            g("occurrences", 1), sources, texts):
                mem_spans[r].append((int(s), int(e), int(tk), int(sh or 0), -1 if d is None else int(d),
                                     int(do or 0), int(oc or 1), src, tx))
    if "min_tokens" in meta:
        try:
            min_tokens = int(meta["min_tokens"])
            min_tokens_source = "matches.parquet metadata"
        except ValueError:
            raise ReportError(f"{mpath}: metadata min_tokens={meta['min_tokens']!r} is not an integer") from None
    else:
        min_tokens = min_seen if min_seen is not None else W
        min_tokens = min(min_tokens, W)
        min_tokens_source = "inferred (no min_tokens in matches.parquet metadata)"
        warnings.append("matches.parquet has no min_tokens metadata; the matcher threshold was inferred "
                        f"as {min_tokens} from the smallest span")
    if min_tokens > W:
        raise ReportError(f"{mpath}: the matcher ran with min_tokens={min_tokens}, above the {W}-token "
                          f"window; rerun the matcher with --min-tokens {W} or lower")
    thr_ok = [t >= min_tokens for t in THRESHOLDS]
    if small_aggs:
        small_tbl = pa.concat_tables(small_aggs)
        if len(small_aggs) > 1:
            small_tbl = small_tbl.group_by(["request_id"]).aggregate(
                [(f"s{i}_sum", "sum") for i in range(len(THRESHOLDS))])
            small_tbl = small_tbl.rename_columns([c[:-4] if c.endswith("_sum_sum") else c
                                                  for c in small_tbl.column_names])
        del small_aggs
    else:
        small_tbl = None
    if longest_parts and small_tbl is not None:
        # each request's longest span rides along the per-request table (one join with the groups below)
        small_tbl = small_tbl.join(_longest_per(pa.concat_tables(longest_parts), "request_id"), "request_id",
                                   join_type="left outer")
    del longest_parts
    mem_rids = pa.array(list(mem_spans.keys()), type=pa.string())

    stage("matches")
    # ---- pass 2: generations (streamed) ------------------------------------------------
    groups: dict[tuple[str, str], int] = {}
    G: list[_Group] = []
    rid_gid_parts: list[pa.Table] = []
    win_hash = bytearray()      # 8 bytes per (unique window, generation) incidence
    blake = hashlib.blake2b
    win_gid = array("I")
    win_gen = array("I")
    iv_gid, iv_doc, iv_start, iv_end = array("I"), array("q"), array("q"), array("q")
    span_records: list[dict] = []   # memorized spans, for tables / categories / near-dups
    models, endpoints, run_ids = set(), set(), set()
    approx_examples: list[dict] = []
    no_offsets = 0
    repeats = RepeatedDraws()
    gen_ordinal = 0
    seen_rids_mem = 0
    bar = None
    if progress:
        from tqdm import tqdm
        total_rows = sum(_open_parquet(p_, REQUIRED_GEN_COLUMNS).metadata.num_rows for p_ in parts)
        bar = tqdm(total=total_rows, unit=" gen", desc="trawl report", file=sys.stderr, leave=False)
    for path in parts:
        pf = _open_parquet(path, REQUIRED_GEN_COLUMNS)
        names = pf.schema_arrow.names
        want = list(REQUIRED_GEN_COLUMNS) + [c for c in ("cost_usd", "extra", "model", "endpoint", "run_id",
                                                         "prompt", "params", "seed") if c in names]
        for batch in _iter_batches(pf, path, want):
            n = batch.num_rows
            if n == 0:
                continue
            # as bytes: a stray invalid UTF-8 byte in a name must not fail the report
            attack = pc.fill_null(pc.cast(batch.column("attack"), pa.binary()), b"")
            variant = pc.fill_null(pc.cast(batch.column("variant"), pa.binary()), b"")
            ctoks = pc.fill_null(batch.column("completion_tokens"), 0)
            cost = pc.fill_null(batch.column("cost_usd"), 0.0) if "cost_usd" in names else pa.nulls(n, pa.float64()).fill_null(0.0)
            repeats.add(batch)
            if "extra" in names:
                extra = pc.fill_null(batch.column("extra"), "")
                # divergence rows say "diverged": true (CONTRACTS.md §3); special_chars' "escaped" is no divergence
                diverged = pc.cast(pc.and_(pc.match_substring_regex(extra, r'"diverged"\s*:\s*true'),
                                           pc.is_in(attack, value_set=pa.array([a.encode() for a in DIVERGENCE_ATTACKS],
                                                                               pa.binary()))), pa.int64())
            else:
                extra = None
                diverged = pa.array(np.zeros(n, dtype=np.int64))
            for colname, bag in (("model", models), ("endpoint", endpoints), ("run_id", run_ids)):
                if colname in names and len(bag) < 20:
                    bag.update(x for x in pc.unique(batch.column(colname)).to_pylist() if x)
            tbl = pa.table({"attack": attack, "variant": variant, "ct": pc.cast(ctoks, pa.int64()),
                            "cost": pc.cast(cost, pa.float64()), "div": diverged})
            agg = tbl.group_by(["attack", "variant"]).aggregate(
                [("ct", "sum"), ("cost", "sum"), ("div", "sum"), ("ct", "count")])
            for a, v, cts, cs, dv, cnt in zip(*(agg.column(c).to_pylist() for c in
                                               ("attack", "variant", "ct_sum", "cost_sum", "div_sum", "ct_count"))):
                a, v = a.decode("utf-8", "replace"), v.decode("utf-8", "replace")
                gid = groups.get((a, v))
                if gid is None:
                    gid = groups[(a, v)] = len(G)
                    G.append(_Group(a, v))
                grp = G[gid]
                grp.generations += cnt
                grp.generated_tokens += cts or 0
                grp.cost_usd += cs or 0.0
                grp.diverged += dv or 0
            # row -> group id (vectorised through a dictionary of the batch's groups)
            # (length-prefixed key: unambiguous whatever bytes the names hold)
            keys = pc.binary_join_element_wise(pc.cast(pc.cast(pc.binary_length(attack), pa.string()), pa.binary()),
                                               attack, variant, b"\x00")
            uniq = pc.unique(keys)
            first = pc.index_in(uniq, value_set=keys).to_numpy(zero_copy_only=False)
            fa, fv = attack.take(pa.array(first)).to_pylist(), variant.take(pa.array(first)).to_pylist()
            lut = np.array([groups[(a.decode("utf-8", "replace"), v.decode("utf-8", "replace"))]
                            for a, v in zip(fa, fv)], dtype=np.int32)
            row_gid = lut[pc.index_in(keys, value_set=uniq).to_numpy(zero_copy_only=False)]
            if small_tbl is not None:
                rid_gid_parts.append(pa.table({"request_id": _as_string(batch.column("request_id")),
                                               "gid": pa.array(row_gid)}))
            # discoverable rows: exact / approximate hits
            if extra is not None:
                disc = np.nonzero(pc.equal(attack, pa.scalar(b"discoverable", pa.binary()))
                                  .to_numpy(zero_copy_only=False))[0]
                if len(disc):
                    ex_txt = _text(extra.take(pa.array(disc)))
                    for i, x in zip(disc.tolist(), ex_txt):
                        grp = G[row_gid[i]]
                        grp.discoverable_rows += 1
                        try:
                            d = json.loads(x) if x else {}
                        except ValueError:
                            d = {}
                        if not isinstance(d, dict):
                            d = {}
                        if d.get("exact") is True:
                            grp.exact += 1
                        else:
                            r = d.get("edit_distance_ratio")
                            if isinstance(r, (int, float)) and not isinstance(r, bool) and r <= APPROX_EDIT_RATIO:
                                grp.approx += 1
                                if len(approx_examples) < top_spans:
                                    approx_examples.append({
                                        "request_id": batch.column("request_id")[i].as_py(),
                                        "variant": G[row_gid[i]].variant, "doc_id": d.get("doc_id"),
                                        "edit_distance_ratio": r,
                                        "target": str(d.get("target", ""))[:2000],
                                        "completion": _text(batch.column("completion").slice(i, 1))[0][:2000]})
            # generations holding memorized spans: windows, tokens, byte intervals
            if len(mem_rids):
                hit = np.nonzero(pc.is_in(_as_string(batch.column("request_id")), value_set=mem_rids)
                                 .to_numpy(zero_copy_only=False))[0]
            else:
                hit = ()
            if len(hit):
                take = pa.array(hit)
                rids = _text(batch.column("request_id").take(take))
                comps = _bytes(batch.column("completion").take(take))
                offs_l = batch.column("token_offsets").take(take).to_pylist()
                for j, i in enumerate(hit.tolist()):
                    seen_rids_mem += 1
                    gid = int(row_gid[i])
                    grp = G[gid]
                    comp, offs = comps[j], offs_l[j]
                    spans = mem_spans.get(rids[j], ())
                    grp.memorized_generations += 1
                    gen_no = gen_ordinal + i
                    if offs:
                        o = np.asarray(offs, dtype=np.int64)          # as the matcher does (token_arrays)
                        np.clip(o, 0, len(comp), out=o)
                        np.maximum.accumulate(o, out=o)
                        offs = o.tolist()
                    span_tok = [(None, b"")] * len(spans)   # per span: covered tokens [a, b), window digests
                    if not offs:
                        no_offsets += 1
                        grp.memorized_tokens += max(sp[2] for sp in spans)
                    else:
                        nb = len(comp)
                        ends = offs[1:] + [nb]
                        covered = []
                        wins = set()
                        for si, sp in enumerate(spans):
                            s, e = sp[0], sp[1]
                            a = bisect.bisect_left(offs, s)
                            b = bisect.bisect_right(ends, e) - 1
                            if b - a + 1 < 1:
                                span_tok[si] = ((a, a), b"")
                                continue
                            covered.append((a, b + 1))
                            sw = [blake(comp[offs[k]:ends[k + W - 1]], digest_size=8).digest()
                                  for k in range(a, b - W + 2)]
                            wins.update(sw)
                            span_tok[si] = ((a, b + 1), b"".join(sw))
                        covered.sort()
                        tot = 0
                        cs_, ce_ = -1, -1
                        for a, b in covered:
                            if a > ce_:
                                tot += ce_ - cs_ if ce_ > cs_ else 0
                                cs_, ce_ = a, b
                            elif b > ce_:
                                ce_ = b
                        tot += ce_ - cs_ if ce_ > cs_ else 0
                        grp.memorized_tokens += tot
                        if wins:
                            win_hash += b"".join(wins)           # 8-byte digests, read as little-endian uint64
                            win_gid.extend([gid] * len(wins))
                            win_gen.extend([gen_no] * len(wins))
                    for sp, (trange, swins) in zip(spans, span_tok):
                        s, e, tk, sh, d, do, oc, src, _ = sp
                        tx = comp[s:e].decode("utf-8", "replace")   # the span's text, as matches' `text`
                        iv_gid.append(gid)
                        iv_doc.append(d)
                        iv_start.append(do)
                        iv_end.append(do + (e - s))
                        span_records.append({"request_id": rids[j], "gid": gid, "span_start": s, "span_end": e,
                                             "tokens": tk, "bytes": e - s, "shard": sh, "doc_id": d,
                                             "doc_offset": do, "occurrences": oc, "source": src, "text": tx,
                                             "raw": comp[s:e], "tok_range": trange, "wins": swins})
            gen_ordinal += n
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    total_generations = gen_ordinal
    longest_span = None
    if untokenized:
        warnings.append(f"{untokenized} span(s) in matches.parquet have no token count (generations without "
                        "token offsets, matched by bytes); they are left out of every token-based figure")
    if no_offsets:
        warnings.append(f"{no_offsets} memorized generation(s) had no token_offsets: their memorized tokens "
                        "are taken from the matches' tokens column and they add no windows")
    orphan = len(mem_spans) - seen_rids_mem
    if orphan > 0:
        warnings.append(f"{orphan} request id(s) in matches.parquet with spans >= {W} tokens have no generation "
                        "row; they are left out")

    repeated = repeats.result(parts)
    if repeated["repeated_rows"]:
        warnings.append(repeated_draws_warning(repeated))

    stage("generations")
    # ---- threshold counts per group (join the small per-request table once) -----------
    if small_tbl is not None and rid_gid_parts:
        rid_gid = pa.concat_tables(rid_gid_parts)
        del rid_gid_parts
        joined = small_tbl.join(rid_gid, "request_id", join_type="inner")
        sum_cols = [f"s{i}_sum" for i in range(len(THRESHOLDS))]
        gids = joined.column("gid").to_numpy(zero_copy_only=False)
        for ti, c in enumerate(sum_cols):
            v = joined.column(c).to_numpy(zero_copy_only=False).astype(np.int64)
            sp = np.bincount(gids, weights=v, minlength=len(G))
            gn = np.bincount(gids, weights=(v > 0), minlength=len(G))
            for gid in range(len(G)):
                G[gid].spans_ge[ti] = int(sp[gid])
                G[gid].generations_ge[ti] = int(gn[gid])
        # longest run over every span (not only memorized ones): per group, the longest span (by tokens,
        # then bytes), whose tokens and bytes are both reported; run-wide, the longest of those
        if "mt" in joined.column_names:
            per_gid = _longest_per(joined.filter(pc.is_valid(joined.column("mt"))), "gid")
            for r in per_gid.to_pylist():
                G[r["gid"]].longest_run_tokens, G[r["gid"]].longest_run_bytes = r["mt"], r["mb"]
            if per_gid.num_rows:
                longest_span = _longest_per(per_gid, None).to_pylist()[0]
        del rid_gid, joined

    stage("threshold_join")
    # ---- windows: uniques, frequency counts, accumulation curve ------------------------
    wh = np.frombuffer(bytes(win_hash), dtype="<u8").astype(np.uint64) if win_hash else np.zeros(0, np.uint64)
    del win_hash
    wg = np.frombuffer(win_gid, dtype=np.uint32) if len(win_gid) else np.zeros(0, np.uint32)
    wn = np.frombuffer(win_gen, dtype=np.uint32) if len(win_gen) else np.zeros(0, np.uint32)
    attacks = sorted({g.attack for g in G})
    attack_of_gid = np.array([attacks.index(g.attack) for g in G], dtype=np.int64) if G else np.zeros(0, np.int64)
    if len(wh):
        u, first_idx, counts = np.unique(wh, return_index=True, return_counts=True)
        kk, fk = np.unique(counts, return_counts=True)
        freq = {int(k): int(f) for k, f in zip(kk, fk)}
        n_unique = int(len(u))
        first_gen = np.sort(wn[first_idx])
        per_gid_unique, per_gid_freq = _uniques_and_freq_per_key(wg.astype(np.int64), wh)
        per_attack_unique, per_attack_freq = _uniques_and_freq_per_key(attack_of_gid[wg.astype(np.int64)], wh)
    else:
        freq, n_unique, first_gen = {}, 0, np.zeros(0, np.int64)
        per_gid_unique, per_attack_unique, per_gid_freq, per_attack_freq = {}, {}, {}, {}

    stage("windows")
    # ---- unique memorized bytes -------------------------------------------------------
    if len(iv_doc):
        ig = np.frombuffer(iv_gid, dtype=np.uint32).astype(np.int64)
        idoc = np.frombuffer(iv_doc, dtype=np.int64)
        ist = np.frombuffer(iv_start, dtype=np.int64)
        ien = np.frombuffer(iv_end, dtype=np.int64)
        total_bytes = sum(union_length(idoc, ist, ien).values())
        per_gid_bytes = defaultdict(int)
        for (gid, _d), v in union_length((ig, idoc), ist, ien).items():
            per_gid_bytes[gid] += v
        per_attack_bytes = defaultdict(int)
        for (aid, _d), v in union_length((attack_of_gid[ig], idoc), ist, ien).items():
            per_attack_bytes[aid] += v
        unique_docs = int(len(np.unique(idoc)))
    else:
        total_bytes, per_gid_bytes, per_attack_bytes, unique_docs = 0, {}, {}, 0

    stage("bytes")
    # ---- cost -------------------------------------------------------------------------
    col_cost = sum(g.cost_usd for g in G)
    total_cost, cost_source = col_cost, "sum of cost_usd over generations"
    rj_cost = _run_json_cost(run_json)
    if col_cost <= 0 and rj_cost:
        total_cost, cost_source = rj_cost, "run.json"
    if total_cost <= 0:
        cost_source = "no cost recorded"

    # ---- assemble -----------------------------------------------------------------------
    def figures(gens, toks, cost, mem_gens, mem_toks, uniq, ubytes, lt, lb, spans_ge, gens_ge, div, disc,
                exact, approx, is_div, fq):
        d = {
            "generations": gens,
            "generated_tokens": toks,
            "memorized_generations": mem_gens,
            "memorized_generation_fraction": _safe_div(mem_gens, gens),
            "memorized_tokens": mem_toks,
            "memorized_token_fraction": _safe_div(mem_toks, toks),
            "unique_memorized_windows": uniq,
            "unique_memorized_bytes": ubytes,
            "longest_run_tokens": lt,
            "longest_run_bytes": lb,
        }
        for i, t in enumerate(THRESHOLDS):
            d[f"spans_ge_{t}"] = spans_ge[i] if thr_ok[i] else None
            d[f"generations_ge_{t}"] = gens_ge[i] if thr_ok[i] else None
        d["good_turing_new_probability"] = ex.good_turing_new(fq)
        d["chao1_total_windows"] = ex.chao1(fq) if fq else 0.0
        lo, hi = ex.chao1_ci95(fq)
        d["chao1_ci95_low"], d["chao1_ci95_high"] = lo, hi
        d["total_cost_usd"] = cost
        d["mb_per_dollar"] = (ubytes / 1e6 / cost) if cost > 0 else None
        d["usd_per_unique_window"] = (cost / uniq) if cost > 0 and uniq > 0 else None
        if is_div:      # div: (diverged, divergence-attack generations), None where n/a (special_chars)
            has = div is not None and div[1] > 0
            d["diverged_generations"] = div[0] if has else None
            d["divergence_rate"] = _safe_div(*div) if has else None
        if disc:
            d["discoverable_rows"] = disc
            d["exact_discoverable_hits"] = exact
            d["approximate_memorization_hits"] = approx
        return d

    per_variant: dict[str, dict[str, dict]] = {}
    for gid, g in enumerate(G):
        gcost = g.cost_usd if cost_source != "run.json" else (total_cost * g.generations / max(total_generations, 1))
        per_variant.setdefault(g.attack, {})[g.variant] = figures(
            g.generations, g.generated_tokens, gcost, g.memorized_generations, g.memorized_tokens,
            per_gid_unique.get(gid, 0), per_gid_bytes.get(gid, 0), g.longest_run_tokens, g.longest_run_bytes,
            g.spans_ge, g.generations_ge, (g.diverged, g.generations) if g.attack in DIVERGENCE_ATTACKS else None,
            g.discoverable_rows, g.exact, g.approx, g.attack in REPEAT_ATTACKS, per_gid_freq.get(gid, {}))
    per_attack: dict[str, dict] = {}
    for aid, a in enumerate(attacks):
        gs = [g for g in G if g.attack == a]
        acost = sum(per_variant[a][g.variant]["total_cost_usd"] for g in gs)
        per_attack[a] = figures(
            sum(g.generations for g in gs), sum(g.generated_tokens for g in gs), acost,
            sum(g.memorized_generations for g in gs), sum(g.memorized_tokens for g in gs),
            per_attack_unique.get(aid, 0), per_attack_bytes.get(aid, 0),
            *max((g.longest_run_tokens, g.longest_run_bytes) for g in gs),
            [sum(g.spans_ge[i] for g in gs) for i in range(len(THRESHOLDS))],
            [sum(g.generations_ge[i] for g in gs) for i in range(len(THRESHOLDS))],
            (sum(g.diverged for g in gs), sum(g.generations for g in gs)) if a in DIVERGENCE_ATTACKS else None,
            sum(g.discoverable_rows for g in gs), sum(g.exact for g in gs),
            sum(g.approx for g in gs), a in REPEAT_ATTACKS, per_attack_freq.get(aid, {}))
    totals = figures(
        total_generations, sum(g.generated_tokens for g in G), total_cost,
        sum(g.memorized_generations for g in G), sum(g.memorized_tokens for g in G), n_unique, total_bytes,
        *max(((g.longest_run_tokens, g.longest_run_bytes) for g in G), default=(0, 0)),
        [sum(g.spans_ge[i] for g in G) for i in range(len(THRESHOLDS))],
        [sum(g.generations_ge[i] for g in G) for i in range(len(THRESHOLDS))],
        (sum(g.diverged for g in G if g.attack in DIVERGENCE_ATTACKS),
         sum(g.generations for g in G if g.attack in DIVERGENCE_ATTACKS)),
        sum(g.discoverable_rows for g in G), sum(g.exact for g in G),
        sum(g.approx for g in G), any(g.attack in REPEAT_ATTACKS for g in G), freq)
    totals["memorized_spans"] = len(span_records)
    totals["unique_source_documents"] = unique_docs
    totals["approximate_memorization_hits"] = sum(g.approx for g in G)
    totals["exact_discoverable_hits"] = sum(g.exact for g in G)
    totals["same_draw_rows"] = repeated["same_draw_rows"]
    totals["implausible_duplicate_rows"] = repeated["flagged_rows"]
    longest_run = _longest_run_record(longest_span, G, parts)
    state = run_state(run_json, total_generations, os.path.exists(os.path.join(run_dir, "run.json")))
    if state["warning"]:
        warnings.insert(0, state["warning"])
    pricing = config.get("pricing") if isinstance(config.get("pricing"), dict) else run_json.get("pricing")
    budget = config.get("budget") if isinstance(config.get("budget"), dict) else run_json.get("budget")
    pricing = pricing if isinstance(pricing, dict) else None
    budget = budget if isinstance(budget, dict) else None

    stage("assemble")
    # ---- memorized texts: categories, near-duplicates, top spans ----------------------
    from reports.neardup import cluster_texts
    uniq_texts: dict[str, dict] = {}
    for r in span_records:
        u = uniq_texts.get(r["text"])
        if u is None:
            u = uniq_texts[r["text"]] = dict(r, generations=0, request_ids=[], last_rid=None)
        if u["last_rid"] != r["request_id"]:       # a generation's spans are contiguous in span_records
            u["last_rid"] = r["request_id"]
            u["generations"] += 1
            if len(u["request_ids"]) < 5:
                u["request_ids"].append(r["request_id"])
    by_category, tax_section = _classify_spans(span_records, uniq_texts, G, totals, per_attack, per_variant,
                                               int(recitation_min_occurrences))
    tax_section["longest_run"] = (None if longest_run is None else taxonomy.classify(
        longest_run["text"], longest_run["occurrences"], int(recitation_min_occurrences)))
    cat_spans = {c: 0 for c in CATEGORIES}
    cat_unique: dict[str, set] = {c: set() for c in CATEGORIES}
    for text, u in uniq_texts.items():
        found = find_all(text)
        u["categories"] = [c for c in CATEGORIES if found[c]]
        for c in CATEGORIES:
            if found[c]:
                cat_spans[c] += 1
                if len(cat_unique[c]) < 10_000:
                    cat_unique[c].update(found[c])
    for c in CATEGORIES:
        totals[f"category_{c}"] = cat_spans[c]
    nd = cluster_texts(list(uniq_texts.keys()), threshold=minhash_threshold, max_texts=minhash_max_texts)
    totals["unique_memorized_documents"] = nd["clusters"]
    all_texts, raws = [], []
    for u in sorted(uniq_texts.values(), key=lambda u: (-u["tokens"], -u["generations"], u["text"])):
        g = G[u["gid"]]
        raws.append(u["raw"])
        all_texts.append({"tokens": u["tokens"], "bytes": u["bytes"], "generations": u["generations"],
                          "attack": g.attack, "variant": g.variant, "request_ids": u["request_ids"],
                          "occurrences": u["occurrences"], "shard": u["shard"], "doc_id": u["doc_id"],
                          "doc_offset": u["doc_offset"], "source": u["source"], "categories": u["categories"],
                          "taxonomy": u["taxonomy"], "text": u["text"]})
    top_out = all_texts[:top_spans]
    lookup = _lookup_documents(all_texts, raws, index, meta, warnings)
    del raws

    stage("texts")
    # ---- extrapolation curve ----------------------------------------------------------
    observed = _observed_curve(first_gen, total_generations)
    curve = ex.extrapolation_curve(freq, total_generations, factor=3.0) if total_generations else []
    rl = {int(k): int(v) for k, v in enumerate(run_length_counts.tolist()) if v and k >= min_tokens}

    metrics = Metrics({
        "schema": "trawl-report-metrics",
        "schema_version": SCHEMA_VERSION,
        "generated_at": storage.utcnow(),
        "run": {
            "run_dir": os.path.abspath(run_dir),
            "run_ids": sorted(run_ids)[:20] or ([run_json["run_id"]] if "run_id" in run_json else []),
            "models": sorted(models)[:20],
            "endpoints": sorted(endpoints)[:20],
            "generation_files": len(parts),
            "status": {k: run_json[k] for k in run_json if isinstance(run_json[k], (int, float, str, bool))},
            "config": dict({k: config[k] for k in config if isinstance(config[k], (int, float, str, bool))},
                           pricing=pricing, budget=budget),
            "state": state,
            "pricing_basis": pricing_basis(pricing),
            "budget_caps": budget_caps(budget),
        },
        "parameters": {
            "window_tokens": W,
            "matcher_min_tokens": min_tokens,
            "matcher_min_tokens_source": min_tokens_source,
            "matcher_min_bytes": meta.get("min_bytes"),
            "index_manifest_sha256": meta.get("index_manifest_sha256") or meta.get("manifest_sha256"),
            "thresholds": [t for t, ok in zip(THRESHOLDS, thr_ok) if ok],
            "thresholds_not_measured": [t for t, ok in zip(THRESHOLDS, thr_ok) if not ok],
            "approximate_edit_distance_ratio": APPROX_EDIT_RATIO,
            "minhash": {"threshold": minhash_threshold, "num_perm": nd["num_perm"], "shingle": nd["shingle"]},
            "window_hash": "blake2b, 8-byte digest",
            "cost_source": cost_source,
            "run_json_cost_usd": rj_cost or None,
            "documents_lookup": lookup,
        },
        "definitions": {k: v.replace("{W}", str(W)).replace("{J}", str(minhash_threshold))
                        for k, v in DEFINITIONS.items()},
        "metrics": totals,
        "longest_run": longest_run,
        "per_attack": per_attack,
        "per_variant": per_variant,
        "run_lengths": {"min_tokens": min_tokens, "spans": n_spans, "counts_by_tokens": rl},
        "extrapolation": {
            "frequency_counts": {str(k): v for k, v in freq.items()},
            "unique_windows": n_unique,
            "window_incidences": int(sum(k * v for k, v in freq.items())),
            "good_turing_new_probability": ex.good_turing_new(freq),
            "chao1_total_windows": ex.chao1(freq) if freq else 0.0,
            "chao1_ci95": list(ex.chao1_ci95(freq)),
            "method": "Good-Turing f1/N; Chao1 (bias-corrected when f2 = 0); curve: Chao et al. 2014 "
                      "incidence-based extrapolation with f0 from Chao1, drawn to 3x the observed generations",
            "observed_curve": observed,
            "extrapolated_curve": [[g, round(v, 3)] for g, v in curve],
        },
        "by_category": by_category,
        "taxonomy": tax_section,
        "repeated_draws": repeated,
        "near_duplicates": nd["summary"],
        "approximate": {"examples": approx_examples},
        "categories": {c: {"spans": cat_spans[c], "unique_values": len(cat_unique[c]),
                           "examples": sorted(cat_unique[c])[:20] if c not in ("code", "license_text")
                           else sorted(cat_unique[c])[:5]} for c in CATEGORIES},
        "top_spans": top_out,
        "warnings": warnings,
        "elapsed_s": round(time.time() - t0, 3),
        "timings": timings,
    })
    metrics.memorized_texts = all_texts
    return metrics


def repeated_draws_warning(rd: dict) -> str:
    """The warning line of a run whose stored completions repeat (``repeated_draws`` section)."""
    return (f"{rd['repeated_rows']:,} stored completions repeat more often than independent sampling explains "
            f"({rd['same_draw_rows']:,} repeat an earlier row's prompt, params and seed + n_choice, i.e. the same "
            f"draw; {rd['flagged_rows']:,} duplicate an earlier completion beyond what its probability allows): the "
            "generation counts and the Good-Turing / Chao1 figures overstate what was drawn; see Repeated draws")


def _classify_spans(records: list[dict], uniq_texts: dict, G: list, totals: dict, per_attack: dict,
                    per_variant: dict, rmin: int) -> tuple[dict, dict]:
    """Class of every memorized span (``reports.taxonomy``), set on each distinct text as ``taxonomy``;
    returns ``by_category`` (figures per class and non-trivial; ``nontrivial_*`` scalars added to the
    figure dicts in place) and the ``taxonomy`` section (thresholds, definitions, counts)."""
    cache: dict = {}
    both = [cache.get((r["text"], r["occurrences"])) or cache.setdefault(
        (r["text"], r["occurrences"]), taxonomy.classify_both(r["text"], r["occurrences"], rmin)) for r in records]
    for r, (ours, _) in zip(records, both):
        uniq_texts[r["text"]].setdefault("taxonomy", ours)
    by_category = taxonomy_figures(records, [b[0] for b in both], [(G[r["gid"]].attack, G[r["gid"]].variant)
                                                                   for r in records], totals, per_attack, per_variant)
    section = {
        "reference": "Prashanth et al. 2024, Recite, Reconstruct, Recollect (arXiv 2406.17746)",
        "recitation_min_occurrences": rmin,
        "low_information_max_alnum_share": taxonomy.LOW_INFORMATION_MAX_ALNUM,
        "reconstruction_min_coverage": taxonomy.RECONSTRUCTION_MIN_COVERAGE,
        "max_period_units": taxonomy.MAX_PERIOD,
        "order": list(taxonomy.CLASSES),
        "nontrivial": list(taxonomy.NONTRIVIAL),
        "definitions": taxonomy.definitions(rmin),
        "spans_in_paper_order": {c: sum(1 for b in both if b[1] == c)
                                 for c in ("recitation", "reconstruction", "recollection")},
    }
    return by_category, section


RUN_STATES = {
    "stopped": "This run stopped early{why}",
    "running": "run.json says \"running\": the run was still running or crashed{why}",
    "interrupted": "This run was interrupted{why}",
    "incomplete": "This run is incomplete{why} (some requests failed for good; --resume retries them)",
    "failed": "This run failed{why}",
}


def run_state(run_json: dict, rows: int, has_run_json: bool = True) -> dict:
    """``run.state`` of metrics.json: run.json's status, stop reason, planned and finished
    generations, and ``warning`` (a sentence; None when the run finished or says nothing)."""
    status = run_json.get("status") if isinstance(run_json.get("status"), str) else None
    reason = run_json.get("stop_reason") if isinstance(run_json.get("stop_reason"), str) else None

    def count(k):
        v = run_json.get(k)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    planned, finished = count("planned"), count("finished")
    done = finished if finished is not None else rows
    counts = f"{done:,} of {planned:,} planned generations" if planned is not None else f"{done:,} generations"
    warning = None
    if status is not None and status != "finished":
        why = f" ({reason})" if reason else ""
        warning = (RUN_STATES.get(status, f"The run status is {status!r}, not finished{{why}}").format(why=why)
                   + f": {counts}" + ("; the figures cover only what was stored" if status != "running"
                                     else "; the figures cover the generations stored so far"))
    return {"status": status if status is not None else ("not recorded" if has_run_json else "no run.json"),
            "stop_reason": reason, "stopped_early": status not in (None, "finished"), "planned": planned,
            "finished": finished, "generation_rows": rows, "warning": warning}


def _price(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def pricing_basis(pricing: dict | None) -> str:
    """How cost_usd was priced, in words (from config.json's ``pricing``)."""
    if not pricing:
        return "not recorded (no pricing in config.json)"
    hourly = pricing.get("gpu_hourly_usd")
    if hourly is not None:
        return f"gpu_hourly_usd: {_price(hourly)} (hourly GPU price x sampling wall time)"
    inp, out = pricing.get("input_per_mtok") or 0, pricing.get("output_per_mtok") or 0
    if inp or out:
        return (f"input_per_mtok: {_price(inp)}, output_per_mtok: {_price(out)} "
                "(USD per million prompt / completion tokens)")
    return "no prices given (every cost is 0)"


def budget_caps(budget: dict | None) -> str:
    """The run's budget caps, in words (from config.json's ``budget``)."""
    if not budget:
        return "not recorded (no budget in config.json)"
    caps = [f"{k}: {_price(v)}" for k, v in budget.items() if v is not None]
    return ", ".join(caps) if caps else "no caps"


def _peak_rss_mb() -> float | None:
    try:
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    except Exception:  # not on every platform
        return None


class Metrics(dict):
    """The metrics dict (JSON-serialisable as it is). ``.memorized_texts`` additionally lists
    every distinct memorized text (same fields as ``top_spans``), longest first; write_report
    writes it to ``memorized_spans.jsonl``."""

    memorized_texts: list


def _uniques_and_freq_per_key(keys: np.ndarray, hashes: np.ndarray) -> tuple[dict[int, int], dict[int, dict[int, int]]]:
    """Per key: the number of distinct hashes, and the frequency counts ``{k: f_k}`` (how many
    distinct hashes occur exactly k times under that key; each entry is one generation's
    incidence already)."""
    if not len(keys):
        return {}, {}
    order = np.lexsort((hashes, keys))
    k, h = keys[order], hashes[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (h[1:] != h[:-1])
    starts = np.nonzero(new)[0]
    runs = np.diff(np.append(starts, len(k)))          # incidences of each (key, hash)
    run_keys = k[starts]
    ks, n_unique = np.unique(run_keys, return_counts=True)
    # (key, run length) pairs -> f_k per key, vectorised
    base = int(runs.max()) + 1
    upairs, fk = np.unique(run_keys.astype(np.int64) * base + runs, return_counts=True)
    freq: dict[int, dict[int, int]] = {}
    for pr, f in zip(upairs.tolist(), fk.tolist()):
        freq.setdefault(pr // base, {})[pr % base] = f
    return {int(a): int(b) for a, b in zip(ks, n_unique)}, freq


def _observed_curve(first_gen: np.ndarray, total: int, points: int = 200) -> list[list[int]]:
    """Unique windows seen after the first g generations, for ``points`` values of g."""
    if total <= 0:
        return []
    xs = sorted({max(1, int(round(total * i / points))) for i in range(points + 1)})
    ys = np.searchsorted(first_gen, np.array(xs), side="left")  # first_gen < g  <=> seen in first g
    return [[int(x), int(y)] for x, y in zip(xs, ys)]


def _run_json_cost(rj: dict) -> float:
    for key in ("cost_usd", "total_cost_usd"):
        v = rj.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    c = rj.get("cost")
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return float(c)
    if isinstance(c, dict):
        for key in ("usd", "total_usd", "cost_usd", "total"):
            v = c.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
    return 0.0


def _lookup_documents(texts: list[dict], raws: list[bytes], index, meta: dict, warnings: list[str],
                      limit: int = 20) -> str:
    """Fill ``documents`` (ids and sources of the corpus documents holding each memorized text,
    at most ``limit``) and ``documents_holding`` (their number, None when unknown).

    The index is ``index`` (an object with ``find(bytes, limit)``, or a folder), else the one named
    in matches.parquet's ``index`` metadata when that folder exists and its manifest hash is the
    one recorded; without an index only the canonical occurrence from matches.parquet is known.
    Returns a description of the source used."""
    idx, opened, where = None, False, None
    if index is not None and not isinstance(index, (str, os.PathLike)):
        idx, where = index, "index object"
    else:
        path, explicit = (os.fspath(index), True) if index is not None else (meta.get("index"), False)
        if path and os.path.isdir(path):
            try:
                from suffix_index import SuffixIndex  # optional; reports works without it
                idx = SuffixIndex.open(path)
                opened, where = True, f"index {path}"
                want = meta.get("index_manifest_sha256")
                have = getattr(idx, "manifest_sha256", None)
                if not explicit and want and isinstance(have, str) and have != want:
                    warnings.append(f"index {path} is not the one matches.parquet was made with (manifest "
                                    "sha256 differs); documents per span come from matches.parquet only")
                    _close(idx)
                    idx, opened, where = None, False, None
            except Exception as exc:  # the index is a nicety: never fail the report on it
                warnings.append(f"could not open index {path} for document look-ups ({type(exc).__name__}: {exc})")
                idx = None
        elif explicit:
            raise ReportError(f"--index {path}: no such index folder")
    try:
        for t, raw in zip(texts, raws):
            docs = None
            if idx is not None and raw:
                try:
                    occ = idx.find(raw, limit=limit * 5)
                    seen: dict = {}
                    for o in occ:
                        if o.doc_id not in seen:
                            seen[o.doc_id] = getattr(o, "source", "") or ""
                    docs = [{"doc_id": int(d), "source": src} for d, src in list(seen.items())[:limit]]
                    complete = len(occ) < limit * 5 or len(occ) >= t["occurrences"]
                    t["documents_holding"] = len(seen) if complete else None
                    t["documents_source"] = "index"
                except Exception as exc:
                    warnings.append(f"index look-up failed ({type(exc).__name__}: {exc}); documents per span "
                                    "come from matches.parquet only")
                    idx = None
            if docs is None:
                docs = [{"doc_id": t["doc_id"], "source": t["source"]}]
                t["documents_holding"] = 1 if t["occurrences"] == 1 else None
                t["documents_source"] = "matches.parquet (canonical occurrence only)"
            t["documents"] = docs
    finally:
        if opened:
            _close(idx)
    return where or "matches.parquet (canonical occurrence of each span)"


def _close(idx) -> None:
    close = getattr(idx, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass
