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
  overlapping spans is not verbatim). Stored as 62-bit hashes of the window's
  bytes (two polynomial hashes modulo 2^31 - 1, :mod:`reports.windows`, computed
  for a batch of generations at once): with ``n`` unique windows the expected
  number of colliding pairs is about ``n^2 / 2^63`` (10 million windows: about
  1e-5), so the count is exact in practice.
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

Layout: this module holds the definitions and :func:`compute_metrics`, which runs passes over
typed accumulators: the matches pass (:mod:`reports.spans`), the generations pass and the passes
over its accumulator (:mod:`reports.passes`), the figure dicts (:mod:`reports.figures`), the
memorized-text passes (:mod:`reports.texts`) and the run's own files (:mod:`reports.run_info`).
"""
from __future__ import annotations

import functools
import gc
import os
import time

from corpora import storage
from reports import taxonomy, windows
from reports.errors import ReportError
from reports.figures import attack_groups, extrapolation, figure_tables, run_group
from reports.inputs import generation_parts, read_json
from reports.passes import (APPROX_EDIT_RATIO, RunAccumulator, bytes_pass, cost_pass, read_generations,
                            threshold_pass, windows_pass)
from reports.render_np import load_extraction_np
from reports.run_info import budget_caps, pricing_basis, run_json_cost, run_state
from reports.spans import THRESHOLDS, MatchIndex, longest_run_record, read_matches
from reports.texts import TextWork, classify_spans, content_categories, lookup_documents, text_records

# 1.1: longest_run; run.state, run.pricing_basis, run.budget_caps, run.config pricing/budget
# 1.2: memorization classes (by_category, taxonomy, nontrivial_*, a span's "taxonomy"), repeated_draws,
#      same_draw_rows / implausible_duplicate_rows; divergence_rate: the divergence attack only
SCHEMA_VERSION = "1.2"
BATCH_ROWS = 16_384         # rows per record batch, matches and generations (read when compute_metrics runs)
TOP_SPANS = 100

__all__ = ["compute_metrics", "Metrics", "DEFINITIONS", "SCHEMA_VERSION", "THRESHOLDS", "repeated_draws_warning"]

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
    "ranking_best_auc": "highest ROC AUC of any membership ranking in scores.parquet (trawl rank) against the memorized generations; null without scores",
    "ranking_best_precision_at_100": "highest precision@100 of any membership ranking (trawl rank); null without scores or with fewer than 100 generations",
    "implausible_duplicate_rows": "sampled generations that repeat an earlier row's completion more often than independent sampling explains (binomial tail < 1e-6 from token logprobs; without logprobs: >= 64 tokens and zlib ratio >= 0.5)",
}


class Metrics(dict):
    """The metrics dict (JSON-serialisable as it is). ``.memorized_texts`` additionally lists
    every distinct memorized text (same fields as ``top_spans``), longest first; write_report
    writes it to ``memorized_spans.jsonl``."""

    memorized_texts: list


class _Stages:
    """``timings`` of metrics.json: seconds and peak RSS at the end of each stage."""

    def __init__(self, t0: float):
        self.timings: dict[str, dict] = {}
        self.last = t0

    def __call__(self, name: str) -> None:
        now = time.time()
        self.timings[name] = {"seconds": round(now - self.last, 3), "peak_rss_mb": _peak_rss_mb()}
        self.last = now


def _release_unused() -> None:
    """Hand the Arrow pool's freed pages back to the system after a streaming pass (mimalloc and
    jemalloc keep them otherwise, and the next pass's Python objects cannot use them)."""
    try:
        import pyarrow as pa
        pa.default_memory_pool().release_unused()
    except Exception:  # an old pyarrow or a pool without it: only memory is at stake
        pass


def _peak_rss_mb() -> float | None:
    try:
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    except Exception:  # not on every platform
        return None


def without_gc(fn):
    """Runs ``fn`` with Python's cyclic garbage collector paused (restored after, as it was). The
    report allocates millions of short-lived containers (span records, findings, rows) and holds
    large acyclic structures: each generation-2 collection walks all of them and finds nothing to
    free (1M generations: 8 full collections, 0 objects collected, ~1.3 s of CPU). Reference
    counting still frees everything that is not in a cycle."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return run


@without_gc
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
    run_json = read_json(os.path.join(run_dir, "run.json"))
    config = read_json(os.path.join(run_dir, "config.json"))
    warnings: list[str] = []
    stage = _Stages(t0)

    mi = read_matches(run_dir, parts, W, BATCH_ROWS, warnings)
    _release_unused()
    stage("matches")
    # the per-text work on the memorized texts runs batch by batch, while the next batch decodes
    work = TextWork(int(recitation_min_occurrences), minhash_max_texts)
    acc = read_generations(parts, mi, W, BATCH_ROWS, top_spans, progress, after_batch=work)
    _release_unused()
    warnings += _stream_warnings(acc, mi, W)
    repeated = acc.repeats.result(parts)
    if repeated["repeated_rows"]:
        warnings.append(repeated_draws_warning(repeated))
    stage("generations")
    longest_span = threshold_pass(acc, mi)
    stage("threshold_join")
    total_cost, cost_source = cost_pass(acc, run_json_cost(run_json))
    attacks, run = attack_groups(acc), run_group(acc, total_cost)
    first_gen = windows_pass(acc, run, attacks)
    stage("windows")
    unique_docs = bytes_pass(acc, run, attacks)
    stage("bytes")
    totals, per_attack, per_variant = figure_tables(acc, run, attacks, mi.thresholds_ok)
    totals.update(unique_source_documents=unique_docs, approximate_memorization_hits=run.approx,
                  exact_discoverable_hits=run.exact, same_draw_rows=repeated["same_draw_rows"],
                  implausible_duplicate_rows=repeated["flagged_rows"])
    longest_run = longest_run_record(longest_span, acc.groups, parts, acc.longest_completion)
    run_section = _run_section(run_dir, run_json, config, acc, parts)
    if run_section["state"]["warning"]:
        warnings.insert(0, run_section["state"]["warning"])
    stage("assemble")
    texts = _text_sections(acc, work, totals, per_attack, per_variant, longest_run,
                           int(recitation_min_occurrences), minhash_threshold, index, mi.meta, warnings)
    stage("texts")
    rank_sec = _ranking(run_dir, parts, mi, W, warnings)
    from reports.render_ranking import best as best_ranking
    totals["ranking_best_auc"], totals["ranking_best_precision_at_100"] = best_ranking(rank_sec)
    stage("ranking")
    metrics = Metrics({
        "schema": "trawl-report-metrics",
        "schema_version": SCHEMA_VERSION,
        "generated_at": storage.utcnow(),
        "run": run_section,
        "parameters": _parameters(mi, W, minhash_threshold, texts["near_duplicates"], cost_source,
                                  run_json_cost(run_json), texts["lookup"]),
        "definitions": {k: v.replace("{W}", str(W)).replace("{J}", str(minhash_threshold))
                        for k, v in DEFINITIONS.items()},
        "metrics": totals,
        "longest_run": longest_run,
        "per_attack": per_attack,
        "per_variant": per_variant,
        "run_lengths": {"min_tokens": mi.min_tokens, "spans": mi.spans,
                        "counts_by_tokens": {int(k): int(v) for k, v in enumerate(mi.run_length_counts.tolist())
                                             if v and k >= mi.min_tokens}},
        "extrapolation": extrapolation(run, first_gen, acc.generations),
        "by_category": texts["by_category"],
        "taxonomy": texts["taxonomy"],
        "repeated_draws": repeated,
        "near_duplicates": texts["near_duplicates"]["summary"],
        "approximate": {"examples": acc.approx_examples},
        "categories": texts["categories"],
        "top_spans": texts["all"][:top_spans],
        "ranking": rank_sec,
        "extraction_np": load_extraction_np(run_dir, warnings),
        "warnings": warnings,
        "elapsed_s": round(time.time() - t0, 3),
        "timings": stage.timings,
    })
    metrics.memorized_texts = texts["all"]
    return metrics


def _ranking(run_dir: str, parts: list[str], mi: MatchIndex, W: int, warnings: list[str]) -> dict | None:
    """metrics.json's ``ranking`` section from RUN/scores.parquet (``trawl rank``; None without it); a
    damaged scores file is a warning, not a failed report."""
    from reports.render_ranking import ranking_section
    if not os.path.exists(os.path.join(run_dir, "scores.parquet")):
        return None
    try:
        return ranking_section(run_dir, parts, set(mi.memorized.keys()), W)
    except ReportError as exc:
        warnings.append(f"the rankings are left out: {exc}")
        return None


def _stream_warnings(acc: RunAccumulator, mi: MatchIndex, W: int) -> list[str]:
    """Warnings on what the passes had to leave out."""
    out = []
    if mi.untokenized:
        out.append(f"{mi.untokenized} span(s) in matches.parquet have no token count (generations without "
                   "token offsets, matched by bytes); they are left out of every token-based figure")
    if acc.no_offsets:
        out.append(f"{acc.no_offsets} memorized generation(s) had no token_offsets: their memorized tokens "
                   "are taken from the matches' tokens column and they add no windows")
    orphan = len(mi.memorized) - acc.memorized_rows_seen
    if orphan > 0:
        out.append(f"{orphan} request id(s) in matches.parquet with spans >= {W} tokens have no generation "
                   "row; they are left out")
    return out


def repeated_draws_warning(rd: dict) -> str:
    """The warning line of a run whose stored completions repeat (``repeated_draws`` section)."""
    return (f"{rd['repeated_rows']:,} stored completions repeat more often than independent sampling explains "
            f"({rd['same_draw_rows']:,} repeat an earlier row's prompt, params and seed + n_choice, i.e. the same "
            f"draw; {rd['flagged_rows']:,} duplicate an earlier completion beyond what its probability allows): the "
            "generation counts and the Good-Turing / Chao1 figures overstate what was drawn; see Repeated draws")


def _text_sections(acc: RunAccumulator, work: TextWork, totals: dict, per_attack: dict, per_variant: dict,
                   longest_run, rmin: int, minhash_threshold: float, index, meta: dict,
                   warnings: list[str]) -> dict:
    """The memorized-text passes (:mod:`reports.texts`): classes, categories, near-duplicates,
    the distinct texts with their documents; figures added to ``totals`` and the tables in place.
    ``work``: the per-text results of ``acc.span_records`` so far (:class:`reports.texts.TextWork`;
    finished here)."""
    from reports.neardup import cluster_signatures
    uniq = work.finish(acc.span_records).uniq
    by_category, tax_section = classify_spans(acc.span_records, uniq, acc.groups, totals, per_attack,
                                              per_variant, rmin, acc.win_id, acc.win_hash,
                                              acc.win_order, classes=work.classes)
    tax_section["longest_run"] = (None if longest_run is None else taxonomy.classify(
        longest_run["text"], longest_run["occurrences"], rmin))
    categories = content_categories(uniq, totals, work.found)
    nd = cluster_signatures(work.signatures(), len(uniq), threshold=minhash_threshold)
    totals["unique_memorized_documents"] = nd["clusters"]
    all_texts, raws = text_records(uniq, acc.groups)
    lookup = lookup_documents(all_texts, raws, index, meta, warnings)
    return {"by_category": by_category, "taxonomy": tax_section, "categories": categories,
            "near_duplicates": nd, "all": all_texts, "lookup": lookup}


def _run_section(run_dir: str, run_json: dict, config: dict, acc: RunAccumulator, parts: list[str]) -> dict:
    """metrics.json's ``run``: ids, models, endpoints, run.json's status, config.json's settings."""
    pricing = config.get("pricing") if isinstance(config.get("pricing"), dict) else run_json.get("pricing")
    budget = config.get("budget") if isinstance(config.get("budget"), dict) else run_json.get("budget")
    pricing = pricing if isinstance(pricing, dict) else None
    budget = budget if isinstance(budget, dict) else None
    return {
        "run_dir": os.path.abspath(run_dir),
        "run_ids": sorted(acc.run_ids)[:20] or ([run_json["run_id"]] if "run_id" in run_json else []),
        "models": sorted(acc.models)[:20],
        "endpoints": sorted(acc.endpoints)[:20],
        "generation_files": len(parts),
        "status": {k: run_json[k] for k in run_json if isinstance(run_json[k], (int, float, str, bool))},
        "config": dict({k: config[k] for k in config if isinstance(config[k], (int, float, str, bool))},
                       pricing=pricing, budget=budget),
        "state": run_state(run_json, acc.generations, os.path.exists(os.path.join(run_dir, "run.json"))),
        "pricing_basis": pricing_basis(pricing),
        "budget_caps": budget_caps(budget),
    }


def _parameters(mi: MatchIndex, W: int, minhash_threshold: float, nd: dict, cost_source: str, rj_cost: float,
                lookup: str) -> dict:
    """metrics.json's ``parameters``: the window, the matcher's settings, what the figures used."""
    meta = mi.meta
    return {
        "window_tokens": W,
        "matcher_min_tokens": mi.min_tokens,
        "matcher_min_tokens_source": mi.min_tokens_source,
        "matcher_min_bytes": meta.get("min_bytes"),
        "index_manifest_sha256": meta.get("index_manifest_sha256") or meta.get("manifest_sha256"),
        "thresholds": [t for t, ok in zip(THRESHOLDS, mi.thresholds_ok) if ok],
        "thresholds_not_measured": [t for t, ok in zip(THRESHOLDS, mi.thresholds_ok) if not ok],
        "approximate_edit_distance_ratio": APPROX_EDIT_RATIO,
        "minhash": {"threshold": minhash_threshold, "num_perm": nd["num_perm"], "shingle": nd["shingle"]},
        "window_hash": windows.DESCRIPTION,
        "cost_source": cost_source,
        "run_json_cost_usd": rj_cost or None,
        "documents_lookup": lookup,
    }
