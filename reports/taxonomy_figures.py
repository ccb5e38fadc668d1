"""Nasr et al. figures per memorization class (:mod:`reports.taxonomy`) and for non-trivial
memorization.

The figures of a class are the run-wide figures of :mod:`reports.metrics` computed over the
memorized spans (``tokens >= W``) of that class only:

* ``memorized_generations``: generations holding a span of the class; ``memorized_tokens``:
  generation tokens inside such a span (each once; a generation without token offsets counts
  its longest such span's ``tokens``, as the run-wide figure does); the fractions divide by
  all generations and all generated tokens of the run (or of the attack / variant).
* ``unique_memorized_windows``: distinct W-token window texts inside spans of the class;
  ``frequency_counts`` / Good-Turing / Chao1 over those windows, one incidence per generation.
* ``unique_memorized_bytes``: union of the canonical corpus byte ranges of the class's spans.
* ``mb_per_dollar`` / ``usd_per_unique_window``: against the whole cost of the run (every
  generation was paid for, whatever it emitted).
* ``memorized_spans``, ``distinct_texts``, ``longest_span_tokens`` / ``longest_span_bytes``
  (the class's longest memorized span: most tokens, then most bytes).

A token, window or corpus byte inside spans of two classes counts in both; the classes of one
run therefore need not add up to the raw figure, while ``nontrivial`` (the union of recitation
and recollection spans) counts each once. Over all classes together the figures equal the raw
ones (tested).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from reports import extrapolate as ex
from reports.spans import union_total
from reports.taxonomy import CLASSES, NONTRIVIAL

NONTRIVIAL_KEYS = ("memorized_generations", "memorized_generation_fraction", "memorized_tokens",
                   "memorized_token_fraction", "unique_memorized_windows", "unique_memorized_bytes",
                   "memorized_spans", "good_turing_new_probability", "chao1_total_windows", "mb_per_dollar",
                   "usd_per_unique_window")


def distinct_count(a: np.ndarray) -> int:
    """Distinct values of an integer array, by a sort (numpy >= 2.3's hashed ``np.unique`` without
    ``return_*`` is an order of magnitude slower on a million int64s)."""
    if not len(a):
        return 0
    s = np.sort(a)
    return int(np.count_nonzero(s[1:] != s[:-1])) + 1


def _div(a, b):
    return a / b if b else None


class SpanPool:
    """The memorized spans of a run (``span_records`` of :class:`reports.passes.RunAccumulator`:
    ``request_id``, ``tok_range`` (covered token indices ``(a, b)``, None without offsets),
    ``tokens``, ``bytes``, ``wins`` (the range of its windows in ``win_id`` / ``win_hash``: the
    run's windows as dense ids and as hashes, :func:`reports.passes.windows_pass`), ``doc_id``,
    ``doc_offset``, ``raw``), in arrays, for figures over any subset of them."""

    def __init__(self, records: list[dict], win_id: np.ndarray, win_hash: np.ndarray,
                 win_order: np.ndarray | None = None):
        gen_of: dict = {}
        text_of: dict = {}
        n = len(records)
        self.gen = np.fromiter((gen_of.setdefault(r["request_id"], len(gen_of)) for r in records), np.int64, n)
        self.text = np.fromiter((text_of.setdefault(r["raw"], len(text_of)) for r in records), np.int64, n)
        self.tokens = np.fromiter((r["tokens"] for r in records), np.int64, n)
        self.nbytes = np.fromiter((r["bytes"] for r in records), np.int64, n)
        self.doc = np.fromiter((r["doc_id"] for r in records), np.int64, n)
        self.doc_off = np.fromiter((r["doc_offset"] for r in records), np.int64, n)
        self.no_off = np.fromiter((r["tok_range"] is None for r in records), bool, n)
        self.ta = np.fromiter(((r["tok_range"] or (0, 0))[0] for r in records), np.int64, n)
        self.tb = np.fromiter(((r["tok_range"] or (0, 0))[1] for r in records), np.int64, n)
        w0 = np.fromiter((r["wins"][0] for r in records), np.int64, n)
        lens = np.fromiter((r["wins"][1] - r["wins"][0] for r in records), np.int64, n)
        self.woff = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        at = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(w0 - self.woff[:-1], lens)
        # each window as a dense number (its rank among the run's distinct hashes) and its generation:
        # a subset's windows are then counted with one sort of int64 keys
        self.digests = win_hash[at] if len(at) else np.zeros(0, np.uint64)
        self.wid = win_id[at] if len(at) else np.zeros(0, np.int64)
        self.wgen = np.repeat(self.gen, lens)
        self.ngen = max(len(gen_of), 1)
        # the run's windows by rank, then position (windows_pass's sort): when the pool holds every
        # window in run order and generations ascend, a subset's (window, generation) pairs are
        # that order filtered, already sorted
        self.order = None
        if (win_order is not None and len(win_order) == len(at) == len(win_id)
                and bool((w0 == self.woff[:-1]).all()) and bool((self.wgen[1:] >= self.wgen[:-1]).all())):
            self.order = win_order
        self._by_order = None   # (span, window id, generation) of each window in that order: made on first use
        self._seen: dict = {}

    def _window_freq(self, idx: np.ndarray) -> dict[int, int]:
        """``{k: f_k}``: distinct windows of the spans ``idx`` seen in exactly k generations."""
        lens = self.woff[idx + 1] - self.woff[idx]
        total = int(lens.sum())
        if total == 0:
            return {}
        if self.order is not None:
            # the order's windows of the spans idx: a look-up of each window's span in a mask of the
            # spans (the span of each window in that order made once; window ids ascend in it)
            if self._by_order is None:
                span = np.repeat(np.arange(len(self.gen), dtype=np.int32), self.woff[1:] - self.woff[:-1])
                span = span.take(self.order)
                counts = np.bincount(self.wid)
                self._by_order = (span, np.repeat(np.arange(len(counts), dtype=np.int32), counts),
                                  self.gen.astype(np.int32).take(span))
            span, w, g = self._by_order
            chosen = np.zeros(len(self.gen), dtype=bool)
            chosen[idx] = True
            if not chosen.all():
                keep = chosen.take(span)
                w, g = w[keep], g[keep]
            # distinct (window, generation) pairs, then the generations of each window: the lengths
            # of the runs of equal windows among those pairs (windows ascend)
            new = np.ones(len(w), dtype=bool)
            new[1:] = (w[1:] != w[:-1]) | (g[1:] != g[:-1])
            wn = w[new]
            edge = np.flatnonzero(np.concatenate([[True], wn[1:] != wn[:-1], [True]]))
            per_window = np.diff(edge)
        else:
            pos = np.arange(total, dtype=np.int64) + np.repeat(self.woff[idx] - (np.cumsum(lens) - lens), lens)
            inc = np.sort(self.wid[pos] * self.ngen + self.wgen[pos])     # distinct (window, generation):
            inc = inc[np.concatenate([[True], inc[1:] != inc[:-1]])]       # a sort (numpy's hashed unique is slower)
            per_window = np.bincount(inc // self.ngen)
        fk = np.bincount(per_window[per_window > 0])
        return {int(k): int(f) for k, f in enumerate(fk.tolist()) if f}

    def _tokens(self, idx: np.ndarray) -> int:
        off = idx[~self.no_off[idx]]
        tot = union_total(self.gen[off], self.ta[off], self.tb[off]) if len(off) else 0
        best: dict = defaultdict(int)
        for g, t in zip(self.gen[idx[self.no_off[idx]]].tolist(), self.tokens[idx[self.no_off[idx]]].tolist()):
            best[g] = max(best[g], t)
        return int(tot + sum(best.values()))

    def _counts(self, idx: np.ndarray) -> tuple:
        """(memorized generations, memorized tokens, {k: f_k}, unique bytes, longest span) of the spans ``idx``."""
        longest = (0, 0)
        if len(idx):
            j = idx[np.lexsort((self.nbytes[idx], self.tokens[idx]))[-1]]
            longest = (int(self.tokens[j]), int(self.nbytes[j]))
        ub = union_total(self.doc[idx], self.doc_off[idx], self.doc_off[idx] + self.nbytes[idx]) if len(idx) else 0
        return distinct_count(self.gen[idx]), self._tokens(idx), self._window_freq(idx), ub, longest

    def figures(self, idx, generations: int, generated_tokens: int, cost: float) -> dict:
        """The figures (module docstring) of the spans ``idx`` against these denominators."""
        idx = np.asarray(idx, dtype=np.int64)
        key = idx.tobytes()            # the same spans again (a class that is all of an attack's): computed once
        if key not in self._seen:
            self._seen.clear()
            self._seen[key] = self._counts(idx)
        mem_gens, mem_toks, fq, ub, longest = self._seen[key]
        uniq = int(sum(fq.values()))
        lo, hi = ex.chao1_ci95(fq)
        return {
            "generations": generations, "generated_tokens": generated_tokens,
            "memorized_spans": int(len(idx)), "distinct_texts": distinct_count(self.text[idx]),
            "memorized_generations": mem_gens, "memorized_generation_fraction": _div(mem_gens, generations),
            "memorized_tokens": mem_toks, "memorized_token_fraction": _div(mem_toks, generated_tokens),
            "unique_memorized_windows": uniq, "unique_memorized_bytes": ub,
            "longest_span_tokens": longest[0], "longest_span_bytes": longest[1],
            "frequency_counts": {str(k): v for k, v in fq.items()},
            "good_turing_new_probability": ex.good_turing_new(fq),
            "chao1_total_windows": ex.chao1(fq) if fq else 0.0, "chao1_ci95_low": lo, "chao1_ci95_high": hi,
            "total_cost_usd": cost,
            "mb_per_dollar": ub / 1e6 / cost if cost > 0 else None,
            "usd_per_unique_window": cost / uniq if cost > 0 and uniq > 0 else None,
        }


def taxonomy_figures(records: list[dict], classes: list[str], group_of_record: list[tuple[str, str]],
                     totals: dict, per_attack: dict, per_variant: dict, win_id: np.ndarray,
                     win_hash: np.ndarray, win_order: np.ndarray | None = None) -> dict:
    """``by_category`` of metrics.json: the figures of each class and of ``nontrivial`` (run-wide);
    and, in place, the ``nontrivial_*`` scalars (:data:`NONTRIVIAL_KEYS`) of ``totals``, of each
    attack in ``per_attack`` and of each variant in ``per_variant``, each against that row's own
    generations, generated tokens and cost. ``win_id`` / ``win_hash`` / ``win_order``: :class:`SpanPool`."""
    pool = SpanPool(records, win_id, win_hash, win_order)
    cls = np.array(classes, dtype=object) if records else np.zeros(0, dtype=object)
    nontrivial = np.isin(cls, NONTRIVIAL) if records else np.zeros(0, bool)

    def figs(mask, f):
        return pool.figures(np.nonzero(mask)[0], f["generations"], f["generated_tokens"], f["total_cost_usd"])

    out = {c: figs(cls == c, totals) for c in CLASSES}
    out["nontrivial"] = figs(nontrivial, totals)
    _put(totals, out["nontrivial"])
    by_attack: dict = defaultdict(list)
    by_variant: dict = defaultdict(list)
    for i, (a, v), keep in zip(range(len(records)), group_of_record, nontrivial.tolist()):
        if keep:
            by_attack[a].append(i)
            by_variant[(a, v)].append(i)
    for a, f in per_attack.items():
        _put(f, pool.figures(np.array(by_attack.get(a, []), np.int64), f["generations"], f["generated_tokens"],
                             f["total_cost_usd"]))
    for a, vs in per_variant.items():
        for v, f in vs.items():
            _put(f, pool.figures(np.array(by_variant.get((a, v), []), np.int64), f["generations"],
                                 f["generated_tokens"], f["total_cost_usd"]))
    return out


def _put(target: dict, figs: dict) -> None:
    for k in NONTRIVIAL_KEYS:
        target[f"nontrivial_{k}"] = figs[k]
