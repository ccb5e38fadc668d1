"""The passes of :func:`reports.metrics.compute_metrics` after the matches pass
(:mod:`reports.spans`), each with one job, over a typed accumulator:

* :func:`read_generations` streams the generation parts once into a :class:`RunAccumulator`:
  per (attack, variant) :class:`Group` counts (generations, tokens, cost, divergence,
  discoverable hits), and for the generations holding a memorized span its memorized tokens,
  window digests and corpus intervals, and one record per memorized span;
* :func:`threshold_pass`: span counts per threshold and the longest run, per group;
* :func:`windows_pass`: unique windows and their frequency counts, run-wide, per group, per attack;
* :func:`bytes_pass`: unique memorized bytes (union of corpus intervals), same three levels;
* :func:`cost_pass`: the cost each group's figures report.

Definitions: :mod:`reports.metrics`. Memory: 8 bytes per (unique window, generation) incidence,
32 per memorized span interval, a dict per memorized span, one (request id, group) row per
generation when the run has spans; never the text of all generations.
"""
from __future__ import annotations

import json
import sys
from array import array
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports.inputs import (REQUIRED_GEN_COLUMNS, as_string, binary_buffers, decoded, encoded, iter_batches,
                            list_rows, open_parquet, raw_bytes, read_ahead, text)
from reports.repeats import RepeatedDraws, per_distinct
from reports.spans import (THRESHOLDS, MatchIndex, RequestLookup, longest_per, longest_rows, union_added,
                           union_length, union_total)
from reports import windows
from reports.taxonomy_figures import distinct_count

APPROX_EDIT_RATIO = 0.1
REPEAT_ATTACKS = ("divergence", "special_chars")   # attacks that carry diverged_generations / divergence_rate
DIVERGENCE_ATTACKS = ("divergence",)                # ... with a value; special_chars: n/a (Bai et al. define none)
OPTIONAL_GEN_COLUMNS = ("cost_usd", "extra", "model", "endpoint", "run_id", "prompt", "params", "seed")
# dictionary-encoded once per batch, the codes shared by the group counts and the repeated-draws check
# (each grouped rows by them and hashed every row's bytes again: 9 encodings of a batch's columns, now 5);
# not read as dictionaries from Parquet: pyarrow then ends a batch at every row group, and the sampler
# writes row groups of GROUP_TOKENS token offsets (about 64 generations of 256 tokens)
SHARED_ENCODINGS = ("attack", "variant", "extra", "prompt", "params")


@dataclass
class Group:
    """The figures' inputs for one (attack, variant), one attack (``variant`` None) or the run
    (both None). Counts are filled by the passes; :func:`reports.figures.figures` turns a group
    into its figure dict. ``divergence_rows``: generations of a divergence attack (the rate's
    denominator; 0 where divergence is n/a); ``shows_divergence``: the figure dict carries the
    divergence keys; ``cost_usd``: the streamed sum of cost_usd, ``total_cost_usd``: the cost the
    figures report (:func:`cost_pass`); ``freq``: ``{k: f_k}`` of the group's unique windows."""

    attack: str | None
    variant: str | None
    generations: int = 0
    generated_tokens: int = 0
    cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    diverged: int = 0
    divergence_rows: int = 0
    shows_divergence: bool = False
    memorized_generations: int = 0
    memorized_tokens: int = 0
    longest_run: tuple = (0, 0)                   # (tokens, bytes) of the longest span
    spans_ge: list = field(default_factory=lambda: [0] * len(THRESHOLDS))
    generations_ge: list = field(default_factory=lambda: [0] * len(THRESHOLDS))
    discoverable_rows: int = 0
    exact: int = 0
    approx: int = 0
    unique_windows: int = 0
    unique_bytes: int = 0
    freq: dict = field(default_factory=dict)

    @classmethod
    def combine(cls, attack: str | None, groups: list[Group]) -> Group:
        """The sum of ``groups`` (counts added, the longest run the longest of theirs); unique
        windows, bytes and frequency counts are not additive and are left for the passes."""
        out = cls(attack, None, shows_divergence=any(g.shows_divergence for g in groups))
        for k in ("generations", "generated_tokens", "cost_usd", "total_cost_usd", "diverged", "divergence_rows",
                  "memorized_generations", "memorized_tokens", "discoverable_rows", "exact", "approx"):
            setattr(out, k, sum(getattr(g, k) for g in groups))
        out.longest_run = max((g.longest_run for g in groups), default=(0, 0))
        out.spans_ge = [sum(g.spans_ge[i] for g in groups) for i in range(len(THRESHOLDS))]
        out.generations_ge = [sum(g.generations_ge[i] for g in groups) for i in range(len(THRESHOLDS))]
        return out


@dataclass
class RunAccumulator:
    """Everything :func:`read_generations` keeps of the generations.

    ``groups``: one :class:`Group` per (attack, variant), ``gid`` = its position; ``win_h``: the
    hash (:mod:`reports.windows`) of every window of every memorized span, spans in order (arrays,
    one per batch; ``windows_kept`` windows in all); ``iv_*``: one corpus interval per memorized
    span and ``span_gen`` its generation's ordinal; ``span_records``: one dict per memorized
    span (fields of :class:`reports.taxonomy_figures.SpanPool` plus the text; ``wins``: the range
    of its windows in ``win_h``), a generation's spans contiguous; ``pr_row`` / ``pr_gid``: for each generation whose request id
    has a row in the matches' per-request table, that row and the generation's gid (arrays, one
    per batch); ``longest_completion``: ``(request id, completion bytes)`` of the first generation
    holding the per-request table's longest span (:meth:`reports.spans.MatchIndex.longest_row`),
    None when no generation does."""

    gid_of: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    generations: int = 0
    pr_row: list = field(default_factory=list)
    pr_gid: list = field(default_factory=list)
    win_h: list = field(default_factory=list)
    windows_kept: int = 0
    win_id: np.ndarray | None = None
    win_hash: np.ndarray | None = None
    win_order: np.ndarray | None = None
    span_gen: array = field(default_factory=lambda: array("q"))
    iv_gid: array = field(default_factory=lambda: array("I"))
    iv_doc: array = field(default_factory=lambda: array("q"))
    iv_start: array = field(default_factory=lambda: array("q"))
    iv_end: array = field(default_factory=lambda: array("q"))
    span_records: list = field(default_factory=list)
    longest_completion: tuple | None = None
    models: set = field(default_factory=set)
    endpoints: set = field(default_factory=set)
    run_ids: set = field(default_factory=set)
    approx_examples: list = field(default_factory=list)
    no_offsets: int = 0
    memorized_rows_seen: int = 0
    repeats: RepeatedDraws = field(default_factory=RepeatedDraws)

    def group(self, attack: str, variant: str) -> int:
        """The gid of (attack, variant), created on first sight."""
        gid = self.gid_of.get((attack, variant))
        if gid is None:
            gid = self.gid_of[(attack, variant)] = len(self.groups)
            self.groups.append(Group(attack, variant, shows_divergence=attack in REPEAT_ATTACKS))
        return gid

    def attacks(self) -> list[str]:
        return sorted({g.attack for g in self.groups})

    def attack_of_gid(self) -> np.ndarray:
        """Index in :meth:`attacks` of each group's attack."""
        attacks = self.attacks()
        return (np.array([attacks.index(g.attack) for g in self.groups], dtype=np.int64) if self.groups
                else np.zeros(0, np.int64))


# ----------------------------------------------------------------------------------------- generations

def read_generations(parts: list[str], mi: MatchIndex, W: int, batch_rows: int, top_spans: int,
                     progress: bool = False, after_batch=None) -> RunAccumulator:
    """The generations pass: every part streamed once (``progress``: a tqdm bar on stderr).
    ``after_batch(acc)``, when given, is called after each batch has been added to ``acc`` (while
    the next batch decodes on the read-ahead thread): work on what the pass has gathered so far."""
    acc = RunAccumulator()
    lookup = RequestLookup(mi.per_request.column("request_id")) if mi.per_request is not None else None
    # the per-request table holds every request id with a span, so every memorized one: a generation
    # is memorized iff its id is found there on a memorized row (the same rows as an is_in on the ids)
    mem_row = (pc.is_in(mi.per_request.column("request_id"), value_set=mi.memorized_request_ids())
               .to_numpy(zero_copy_only=False) if lookup is not None and mi.memorized else None)
    top = mi.longest_row()
    bar = None
    if progress:
        from tqdm import tqdm
        total_rows = sum(open_parquet(p_, REQUIRED_GEN_COLUMNS).metadata.num_rows for p_ in parts)
        bar = tqdm(total=total_rows, unit=" gen", desc="trawl report", file=sys.stderr, leave=False)
    for names, batch in read_ahead(_generation_batches(parts, batch_rows)):
        codes = {c: pc.dictionary_encode(batch.column(c)) for c in SHARED_ENCODINGS if c in names}
        acc.repeats.add(batch, codes)
        # as bytes: a stray invalid UTF-8 byte in a name must not fail the report (dictionary arrays)
        attack = encoded(codes.get("attack", batch.column("attack")), b"")
        variant = encoded(codes.get("variant", batch.column("variant")), b"")
        extra = encoded(codes.get("extra", batch.column("extra")), b"") if "extra" in names else None
        _run_info(acc, batch, names)
        row_gid = _group_counts(acc, batch, names, attack, variant, extra)
        if lookup is not None:
            pr, rows = lookup.find(batch.column("request_id"))
            acc.pr_row.append(pr)
            acc.pr_gid.append(row_gid[rows])
            if acc.longest_completion is None and top is not None and (pr == top).any():
                at = int(rows[np.argmax(pr == top)])      # rows ascending: the first in file order
                acc.longest_completion = (as_string(batch.column("request_id"))[at].as_py(),
                                          raw_bytes(batch.column("completion").slice(at, 1))[0])
            if mem_row is not None:
                _memorized(acc, batch, row_gid, memorized_rows(batch, pr, rows, mem_row, mi), mi, W)
        if extra is not None:
            _discoverable(acc, batch, attack, extra, row_gid, top_spans)
        acc.generations += batch.num_rows
        if after_batch is not None:
            after_batch(acc)
        if bar is not None:
            bar.update(batch.num_rows)
    if bar is not None:
        bar.close()
    return acc


def _generation_batches(parts: list[str], batch_rows: int):
    """``(column names of the part, batch)`` of every non-empty record batch of the parts, in order."""
    for path in parts:
        pf = open_parquet(path, REQUIRED_GEN_COLUMNS)
        names = pf.schema_arrow.names
        want = list(REQUIRED_GEN_COLUMNS) + [c for c in OPTIONAL_GEN_COLUMNS if c in names]
        for batch in iter_batches(pf, path, want, batch_rows):
            if batch.num_rows:
                yield names, batch


def _run_info(acc: RunAccumulator, batch: pa.RecordBatch, names: list[str]) -> None:
    """Models, endpoints and run ids seen (up to about 20 of each)."""
    for colname, bag in (("model", acc.models), ("endpoint", acc.endpoints), ("run_id", acc.run_ids)):
        if colname in names and len(bag) < 20:
            bag.update(x for x in pc.unique(batch.column(colname)).to_pylist() if x)


def _group_counts(acc: RunAccumulator, batch: pa.RecordBatch, names: list[str], attack: pa.Array,
                  variant: pa.Array, extra: pa.Array | None) -> np.ndarray:
    """Generations, generated tokens, cost and diverged rows of the batch, added per group; returns
    the gid of every row (groups first seen in the batch created here).

    The batch's distinct (attack, variant) byte pairs are its keys (:func:`_row_keys`). When each
    key's group exists already and no two keys share one (names that decode alike), the sums are
    taken per key with ``np.bincount``, which adds in row order as Arrow's grouped sum does (the
    same float sums; integers are exact in float64 below 2^53, else added as Python integers), one
    addition per group: no aggregation plan per batch. Otherwise (the first batches of a run, or
    invalid UTF-8 in the names) Arrow's ``group_by`` as before, whose row order creates the new
    groups and orders the additions to a shared group, so group numbers and float sums stay as
    they were."""
    n = batch.num_rows
    ctoks = pc.cast(pc.fill_null(batch.column("completion_tokens"), 0), pa.int64())
    cost = pc.cast(pc.fill_null(batch.column("cost_usd"), 0.0) if "cost_usd" in names
                   else pa.nulls(n, pa.float64()).fill_null(0.0), pa.float64())
    if extra is not None:
        # divergence rows say "diverged": true (CONTRACTS.md §3); special_chars' "escaped" is no divergence
        said = per_distinct(extra, lambda v: pc.match_substring_regex(v, r'"diverged"\s*:\s*true')
                            .to_numpy(zero_copy_only=False))
        divergence = pa.array([a.encode() for a in DIVERGENCE_ATTACKS], pa.binary())
        named = per_distinct(attack, lambda v: pc.is_in(v, value_set=divergence).to_numpy(zero_copy_only=False))
        diverged = pa.array((said & named).astype(np.int64))
    else:
        diverged = pa.array(np.zeros(n, dtype=np.int64))
    row_key, key_names = _row_keys(attack, variant)
    gids = [acc.gid_of.get(k) for k in key_names]
    if None in gids or len(set(gids)) < len(gids):
        _grouped_sums(acc, attack, variant, ctoks, cost, diverged)
        return np.array([acc.gid_of[k] for k in key_names], dtype=np.int32)[row_key]
    nk = len(gids)
    cnt = np.bincount(row_key, minlength=nk)
    ct = ctoks.to_numpy(zero_copy_only=False)
    if int(np.abs(ct).max()) * n >= 1 << 53:      # beyond float64's exact integers: Python ints
        cts = [sum(ct[row_key == k].tolist()) for k in range(nk)]
    else:
        cts = np.bincount(row_key, weights=ct, minlength=nk).astype(np.int64).tolist()
    cs = np.bincount(row_key, weights=cost.to_numpy(zero_copy_only=False), minlength=nk).tolist()
    dv = np.bincount(row_key, weights=diverged.to_numpy(zero_copy_only=False), minlength=nk).astype(np.int64).tolist()
    for k, g in enumerate(gids):
        grp = acc.groups[g]
        grp.generations += int(cnt[k])
        grp.generated_tokens += cts[k]
        grp.cost_usd += cs[k]
        grp.diverged += dv[k]
        if grp.attack in DIVERGENCE_ATTACKS:
            grp.divergence_rows += int(cnt[k])
    return np.array(gids, dtype=np.int32)[row_key]


def _grouped_sums(acc: RunAccumulator, attack: pa.Array, variant: pa.Array, ctoks: pa.Array, cost: pa.Array,
                  diverged: pa.Array) -> None:
    """:func:`_group_counts` by Arrow's ``group_by``: groups created and added to in its rows' order."""
    tbl = pa.table({"attack": decoded(attack), "variant": decoded(variant), "ct": ctoks, "cost": cost,
                    "div": diverged})
    agg = tbl.group_by(["attack", "variant"], use_threads=False).aggregate([("ct", "sum"), ("cost", "sum"),
                                                                          ("div", "sum"), ("ct", "count")])
    for a, v, cts, cs, dv, cnt in zip(*(agg.column(c).to_pylist() for c in
                                       ("attack", "variant", "ct_sum", "cost_sum", "div_sum", "ct_count"))):
        grp = acc.groups[acc.group(a.decode("utf-8", "replace"), v.decode("utf-8", "replace"))]
        grp.generations += cnt
        grp.generated_tokens += cts or 0
        grp.cost_usd += cs or 0.0
        grp.diverged += dv or 0
        if grp.attack in DIVERGENCE_ATTACKS:
            grp.divergence_rows += cnt


_DENSE_KEYS = 1 << 20       # (attack, variant) code pairs counted in a dense table below this many


def _distinct_codes(col: pa.Array) -> tuple[np.ndarray, list[bytes]]:
    """``(code of every row, the distinct values)`` of a binary column without nulls: a dictionary
    array's codes mapped through an encoding of its dictionary (which may hold a value twice, or
    values no row uses), another column dictionary-encoded."""
    if pa.types.is_dictionary(col.type):
        dd = pc.dictionary_encode(col.dictionary)
        codes = dd.indices.to_numpy(zero_copy_only=False).astype(np.int64)[
            col.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
        return codes, dd.dictionary.to_pylist()
    enc = pc.dictionary_encode(col)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _row_keys(attack: pa.Array, variant: pa.Array) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``(key of every row, names of every key)``: the batch's distinct (attack, variant) byte pairs
    and each pair's names as its group knows them (decoded, U+FFFD for invalid UTF-8).

    Each column is dictionary-encoded (:func:`_distinct_codes`: distinct byte strings, so a pair of
    codes is a distinct byte pair) and a row's pair is ``code_a * len(variants) + code_v``; the pairs
    present are numbered by a count over those integers (or ``np.unique`` when there are too many to
    count densely).
    The keys' numbering is not the order the rows bring them; callers read ``key_names[key]``
    only, so any numbering of the distinct pairs gives the same groups and sums."""
    (ca, da), (cv, dv) = _distinct_codes(attack), _distinct_codes(variant)
    nv = len(dv)
    pair = ca * nv + cv
    if len(da) * nv <= _DENSE_KEYS:
        present = np.nonzero(np.bincount(pair, minlength=len(da) * nv))[0]
        number = np.zeros(len(da) * nv, dtype=np.int64)
        number[present] = np.arange(len(present))
        row_key = number[pair]
    else:
        present, row_key = np.unique(pair, return_inverse=True)
        row_key = row_key.ravel()
    names = [(da[k // nv].decode("utf-8", "replace"), dv[k % nv].decode("utf-8", "replace"))
             for k in present.tolist()]
    return row_key, names


def _discoverable(acc: RunAccumulator, batch: pa.RecordBatch, attack: pa.Array, extra: pa.Array,
                  row_gid: np.ndarray, top_spans: int) -> None:
    """Discoverable rows: exact hits and approximate ones (``edit_distance_ratio`` <= 0.1)."""
    disc = np.nonzero(per_distinct(attack, lambda v: pc.equal(v, pa.scalar(b"discoverable", pa.binary()))
                                   .to_numpy(zero_copy_only=False)))[0]
    if not len(disc):
        return
    for i, x in zip(disc.tolist(), text(decoded(extra.take(pa.array(disc))))):
        grp = acc.groups[row_gid[i]]
        grp.discoverable_rows += 1
        try:
            d = json.loads(x) if x else {}
        except ValueError:
            d = {}
        if not isinstance(d, dict):
            d = {}
        if d.get("exact") is True:
            grp.exact += 1
            continue
        r = d.get("edit_distance_ratio")
        if isinstance(r, (int, float)) and not isinstance(r, bool) and r <= APPROX_EDIT_RATIO:
            grp.approx += 1
            if len(acc.approx_examples) < top_spans:
                acc.approx_examples.append({
                    "request_id": batch.column("request_id")[i].as_py(), "variant": grp.variant,
                    "doc_id": d.get("doc_id"), "edit_distance_ratio": r, "target": str(d.get("target", ""))[:2000],
                    "completion": text(batch.column("completion").slice(i, 1))[0][:2000]})


def memorized_rows(batch: pa.RecordBatch, pr: np.ndarray, rows: np.ndarray, mem_row: np.ndarray,
                   mi: MatchIndex) -> np.ndarray:
    """The rows of the batch whose request id has spans of >= W tokens, ascending: those found in
    the per-request table (``rows`` ascending, at table rows ``pr``) on a row flagged in ``mem_row``.
    Equal to ``is_in(request_id, mi.memorized_request_ids())`` (tests/reports: the same rows), without
    a second hash look-up of every id of the run."""
    return rows[mem_row[pr]]


def _memorized(acc: RunAccumulator, batch: pa.RecordBatch, row_gid: np.ndarray, hit: np.ndarray,
               mi: MatchIndex, W: int) -> None:
    """The batch's generations holding memorized spans (``hit``: their rows, ascending): their
    tokens, windows and span records, all rows of the batch at once (:mod:`reports.windows`)."""
    if not len(hit):
        return
    take = pa.array(hit)
    rids = text(batch.column("request_id").take(take))
    comp_col = batch.column("completion").take(take)
    comps = raw_bytes(comp_col)
    data, cstart = binary_buffers(comp_col)
    clen = np.fromiter(map(len, comps), np.int64, len(comps))
    ntok, vals = list_rows(batch.column("token_offsets"), hit)       # the rows with offsets: their offsets
    span_lists = [mi.memorized.get(r, ()) for r in rids]
    nspan = np.fromiter(map(len, span_lists), np.int64, len(span_lists))
    flat = [sp for spans in span_lists for sp in spans]
    span_row = np.repeat(np.arange(len(hit), dtype=np.int64), nspan)
    ss = np.fromiter((sp[0] for sp in flat), np.int64, len(flat))
    se = np.fromiter((sp[1] for sp in flat), np.int64, len(flat))
    gids = row_gid[hit].astype(np.int64)
    acc.memorized_rows_seen += len(hit)
    with_off = ntok[span_row] > 0
    ta = np.zeros(len(flat), np.int64)
    tb = np.zeros(len(flat), np.int64)
    nwin = np.zeros(len(flat), np.int64)
    tokens = np.zeros(len(hit), np.int64)
    rows = np.nonzero(ntok > 0)[0]
    if len(rows):
        rstart = np.concatenate([[0], np.cumsum(ntok[rows])]).astype(np.int64)
        local = np.full(len(hit), -1, np.int64)
        local[rows] = np.arange(len(rows))
        sel = np.nonzero(with_off)[0]
        _o, _e, a, b, nw, ws, we = windows.row_windows(vals, rstart, clen[rows], local[span_row[sel]], ss[sel],
                                                       se[sel], W)
        ta[sel], tb[sel], nwin[sel] = a, b, nw
        tokens[rows] = windows.covered_tokens(local[span_row[sel]], a, b, len(rows))
        acc.win_h.append(windows.hash_span_windows(data, cstart, span_row[sel], nw, ws, we))
    no_off = np.nonzero(ntok == 0)[0]
    acc.no_offsets += len(no_off)
    for j in no_off.tolist():
        tokens[j] = max(sp[2] for sp in span_lists[j])
    for g, n, t in zip(*_per_group(gids, tokens)):
        acc.groups[g].memorized_generations += n
        acc.groups[g].memorized_tokens += t
    gen0 = acc.generations
    w0 = acc.windows_kept
    k = 0
    for j, (i, rid, comp, spans) in enumerate(zip(hit.tolist(), rids, comps, span_lists)):
        gid = int(gids[j])
        for sp in spans:
            n = int(nwin[k])
            trange = (int(ta[k]), int(tb[k])) if with_off[k] else None
            _span_record(acc, gid, gen0 + i, rid, comp, sp, trange, (w0, w0 + n))
            w0 += n
            k += 1
    acc.windows_kept = w0


def _per_group(gids: np.ndarray, values: np.ndarray) -> tuple[list, list, list]:
    """The groups present, their number of rows and the sum of ``values`` (int64) over them."""
    order = np.argsort(gids, kind="stable")
    g, first, cnt = np.unique(gids[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(values[order], first) if len(first) else np.zeros(0, np.int64)
    return g.tolist(), cnt.tolist(), sums.tolist()


def _span_record(acc: RunAccumulator, gid: int, gen: int, rid: str, comp: bytes, sp, trange, wins) -> None:
    """One corpus interval and one record per memorized span: ``tok_range`` its covered tokens
    (None without offsets), ``wins`` the range of its windows in the run's window arrays."""
    s, e, tk, sh, d, do, oc, src, _ = sp
    raw = comp[s:e]
    acc.iv_gid.append(gid)
    acc.iv_doc.append(d)
    acc.iv_start.append(do)
    acc.iv_end.append(do + (e - s))
    acc.span_gen.append(gen)
    acc.span_records.append({"request_id": rid, "gid": gid, "span_start": s, "span_end": e, "tokens": tk,
                             "bytes": e - s, "shard": sh, "doc_id": d, "doc_offset": do, "occurrences": oc,
                             "source": src, "text": raw.decode("utf-8", "replace"),   # as matches' `text`
                             "raw": raw, "tok_range": trange, "wins": wins})


# ----------------------------------------------------------------------------------------- after the stream

def threshold_pass(acc: RunAccumulator, mi: MatchIndex) -> dict | None:
    """Spans and generations per threshold and the longest run of every group (one join of the
    per-request table with the generations' groups); returns the run-wide longest span (a row
    of :func:`reports.spans.longest_per`, ``gid`` added), None when no span has a token count."""
    if mi.per_request is None or not acc.pr_row:
        return None
    groups = acc.groups
    # the inner join of the per-request table with the generations on request_id (rows found per batch)
    rows = np.concatenate(acc.pr_row)
    joined = mi.per_request.take(pa.array(rows)).append_column("gid", pa.array(np.concatenate(acc.pr_gid)))
    acc.pr_row, acc.pr_gid = [], []
    gids = joined.column("gid").to_numpy(zero_copy_only=False)
    for ti in range(len(THRESHOLDS)):
        v = joined.column(f"s{ti}_sum").to_numpy(zero_copy_only=False).astype(np.int64)
        sp = np.bincount(gids, weights=v, minlength=len(groups))
        gn = np.bincount(gids, weights=(v > 0), minlength=len(groups))
        for gid, g in enumerate(groups):
            g.spans_ge[ti] = int(sp[gid])
            g.generations_ge[ti] = int(gn[gid])
    # the longest run over every span (not only memorized ones): per group the longest span (by tokens,
    # then bytes), whose tokens and bytes are both reported; run-wide, the longest of those
    if "mt" not in joined.column_names:
        return None
    tokenized = joined.filter(pc.is_valid(joined.column("mt")))
    best = longest_rows(tokenized, tokenized.column("gid").to_numpy())
    per_gid = tokenized.take(pa.array(best)) if best is not None else longest_per(tokenized, "gid")
    for r in per_gid.to_pylist():
        groups[r["gid"]].longest_run = (r["mt"], r["mb"])
    return longest_per(per_gid, None).to_pylist()[0] if per_gid.num_rows else None


_SMALL_KEYS = 1 << 15       # keys below this sort as int16 (NumPy's stable sort of 16-bit values is a radix sort)


def uniques_and_freq_per_key(keys: np.ndarray, hashes: np.ndarray,
                             hashes_sorted: bool = False) -> tuple[dict[int, int], dict[int, dict[int, int]]]:
    """Per key: the number of distinct hashes, and the frequency counts ``{k: f_k}`` (how many
    distinct hashes occur exactly k times under that key; each entry is one generation's
    incidence already). ``keys`` and ``hashes``: non-negative integers (one int64 sort when
    ``max(keys) * (max(hashes) + 1)`` fits in int64). ``hashes_sorted``: the caller's promise that
    ``hashes`` is ascending; then keys below 2^15 are ordered by one radix sort instead."""
    if not len(keys):
        return {}, {}
    if hashes_sorted and int(keys.min()) >= 0 and int(keys.max()) < _SMALL_KEYS:
        # hashes ascending: a stable sort by the key alone (a radix sort of int16) orders by (key, hash)
        order = np.argsort(keys.astype(np.int16), kind="stable")
        return _freq_tail(*_pair_runs(keys[order].astype(np.int64), hashes[order]), len(keys))
    keys = keys.astype(np.int64)
    span = int(hashes.max()) + 1 if hashes.dtype.kind in "iu" and int(hashes.min()) >= 0 else 0
    if span and int(keys.max()) < (1 << 62) // span and int(keys.min()) >= 0:
        ck = np.sort(keys * span + hashes.astype(np.int64))
        new = np.ones(len(ck), dtype=bool)
        new[1:] = ck[1:] != ck[:-1]
        starts = np.nonzero(new)[0]
        run_keys = ck[starts] // span
    else:
        order = np.lexsort((hashes, keys))
        run_keys, starts = _pair_runs(keys[order], hashes[order])
    return _freq_tail(run_keys, starts, len(keys))


_DENSE_COUNT = 1 << 22      # non-negative integers below this (and below 4 per value) are counted, not sorted


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_counts=True)`` of integers; non-negative ones in a small range
    (group numbers, frequency counts) by ``np.bincount`` instead of a sort (tests/reports)."""
    if len(values) and values.dtype.kind in "iu":
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi < _DENSE_COUNT and hi < 4 * len(values) + 1024:
            cnt = np.bincount(values.astype(np.int64))
            present = np.nonzero(cnt)[0]
            return present.astype(values.dtype), cnt[present]
    return np.unique(values, return_counts=True)


def sorted_small(values: np.ndarray, bound: int) -> np.ndarray:
    """``np.sort(values)`` of int64 values in ``[0, bound)``, by a count per value when ``bound`` is
    at most 4 per value (generation ordinals: O(n + bound), no comparison sort)."""
    if len(values) and bound <= 4 * len(values) + 1024 and int(values.min()) >= 0 and int(values.max()) < bound:
        return np.repeat(np.arange(bound, dtype=values.dtype), np.bincount(values, minlength=bound))
    return np.sort(values)


def _pair_runs(k: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of equal (key, hash) pairs sorted by (key, hash): each run's key and first position."""
    new = np.ones(len(k), dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (h[1:] != h[:-1])
    starts = np.nonzero(new)[0]
    return k[starts], starts


def _freq_tail(run_keys: np.ndarray, starts: np.ndarray, n: int) -> tuple[dict, dict]:
    """:func:`uniques_and_freq_per_key` from the (key, hash) runs of its sorted pairs: each run's
    key and first position, ``n`` pairs in all."""
    runs = np.diff(np.append(starts, n))       # incidences of each (key, hash)
    ks, n_unique = value_counts(run_keys)
    # (key, run length) pairs -> f_k per key, vectorised
    base = int(runs.max()) + 1
    upairs, fk = value_counts(run_keys.astype(np.int64) * base + runs)
    freq: dict[int, dict[int, int]] = {}
    for pr, f in zip(upairs.tolist(), fk.tolist()):
        freq.setdefault(pr // base, {})[pr % base] = f
    return {int(a): int(b) for a, b in zip(ks, n_unique)}, freq


def windows_pass(acc: RunAccumulator, run: Group, attacks: list[Group]) -> np.ndarray:
    """Unique windows and frequency counts of the run, of each group and of each attack (in
    :meth:`RunAccumulator.attacks` order); returns the sorted generation ordinals at which
    each unique window was first seen (the observed accumulation curve). Sets ``acc.win_id``:
    each window's rank among the distinct hashes (for :class:`reports.taxonomy_figures.SpanPool`)."""
    wh = np.concatenate(acc.win_h) if acc.win_h else np.zeros(0, np.uint64)
    acc.win_h = []
    acc.win_hash = wh
    if not len(wh):
        acc.win_id = np.zeros(0, np.int64)
        return np.zeros(0, np.int64)
    nwin = np.fromiter((r["wins"][1] - r["wins"][0] for r in acc.span_records), np.int64, len(acc.span_records))
    ngen = acc.generations + 1
    span_gen = np.frombuffer(acc.span_gen, dtype=np.int64)
    win_gen = np.repeat(span_gen, nwin)
    if bool((win_gen[1:] >= win_gen[:-1]).all()):
        n_unique, wid, inc_wid, inc_gen, acc.win_order = _incidences_stable(wh, win_gen)
    else:       # not in stream order (not made by read_generations): the general sorts
        n_unique, wid, inc_wid, inc_gen = _incidences_sorted(wh, win_gen, ngen)
    acc.win_id = wid
    gid_of_gen = np.zeros(ngen, dtype=np.int64)          # a generation's spans all have its gid
    gid_of_gen[span_gen] = np.frombuffer(acc.iv_gid, dtype=np.uint32)
    inc_gid = gid_of_gen[inc_gen]
    counts = np.bincount(inc_wid, minlength=n_unique)
    kk, fk = value_counts(counts)
    run.freq = {int(k): int(f) for k, f in zip(kk, fk)}
    run.unique_windows = int(n_unique)
    firsts = np.ones(len(inc_wid), dtype=bool)          # sorted by (window, generation): a window's first
    firsts[1:] = inc_wid[1:] != inc_wid[:-1]
    for level, keys in ((acc.groups, inc_gid), (attacks, acc.attack_of_gid()[inc_gid])):
        uniq, freq = uniques_and_freq_per_key(keys, inc_wid, hashes_sorted=True)
        for i, g in enumerate(level):
            g.unique_windows, g.freq = uniq.get(i, 0), freq.get(i, {})
    return sorted_small(inc_gen[firsts], ngen)


def _incidences_sorted(wh: np.ndarray, win_gen: np.ndarray, ngen: int):
    """``(unique windows, each window's rank among the distinct hashes, incidences' ranks,
    incidences' generations)``; incidences = distinct (window, generation) pairs, a window counted
    once per generation, sorted by (rank, generation)."""
    uh, wid = np.unique(wh, return_inverse=True)
    wid = wid.ravel().astype(np.int64)
    ks = np.sort(wid * ngen + win_gen)
    new = np.ones(len(ks), dtype=bool)
    new[1:] = ks[1:] != ks[:-1]
    return len(uh), wid, ks[new] // ngen, ks[new] % ngen


def stable_argsort_spread(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` of unsigned integers spread over their range (hashes),
    faster: a stable radix sort by the top 16 bits first (NumPy sorts 16-bit keys by radix), then
    the stable sort (timsort) of the values in that order, which finds them nearly sorted. Equal
    values keep their order through both stable sorts, so the result is the stable argsort's
    (tests/reports). On the benchmark's 1.6 M window hashes: 0.16 -> 0.07 s."""
    if len(values) < 1024 or values.dtype.kind != "u":
        return np.argsort(values, kind="stable")
    shift = max(int(values.max()).bit_length() - 16, 0)
    first = np.argsort((values >> np.uint64(shift)).astype(np.uint16), kind="stable")
    return first[np.argsort(values[first], kind="stable")]


def _incidences_stable(wh: np.ndarray, win_gen: np.ndarray):
    """:func:`_incidences_sorted` for windows whose generations are non-decreasing (stream order):
    one stable sort of the hashes keeps each hash's windows in generation order, so the (rank,
    generation) pairs come out sorted without the second sort. Returns that sort's order too (the
    windows by rank, then position: ``RunAccumulator.win_order``)."""
    order = stable_argsort_spread(wh)
    sh = wh[order]
    new = np.ones(len(sh), dtype=bool)
    new[1:] = sh[1:] != sh[:-1]
    rank = np.cumsum(new) - 1
    wid = np.empty(len(sh), dtype=np.int64)
    wid[order] = rank
    gs = win_gen[order]
    inc = new.copy()
    inc[1:] |= gs[1:] != gs[:-1]
    return int(rank[-1]) + 1, wid, rank[inc], gs[inc], order


def bytes_pass(acc: RunAccumulator, run: Group, attacks: list[Group]) -> int:
    """Unique memorized bytes of the run, of each group and of each attack; returns the number
    of distinct source documents (canonical occurrence)."""
    if not len(acc.iv_doc):
        return 0
    ig = np.frombuffer(acc.iv_gid, dtype=np.uint32).astype(np.int64)
    idoc = np.frombuffer(acc.iv_doc, dtype=np.int64)
    ist = np.frombuffer(acc.iv_start, dtype=np.int64)
    ien = np.frombuffer(acc.iv_end, dtype=np.int64)
    run.unique_bytes = union_total(idoc, ist, ien)
    for level, keys in ((acc.groups, ig), (attacks, acc.attack_of_gid()[ig])):
        per: dict = defaultdict(int)
        added = union_added((keys, idoc), ist, ien)
        if added is not None:
            sums = np.zeros(len(level), dtype=np.int64)
            np.add.at(sums, keys, added)
            per.update(enumerate(sums.tolist()))
        else:
            for (k, _d), v in union_length((keys, idoc), ist, ien).items():
                per[k] += v
        for i, g in enumerate(level):
            g.unique_bytes = per.get(i, 0)
    return distinct_count(idoc)


def cost_pass(acc: RunAccumulator, run_json_cost: float) -> tuple[float, str]:
    """Each group's reported cost: its cost_usd sum, or, when that column sums to 0 over the run
    and run.json has a total, the total split in proportion to generations. Returns the run's
    total cost and where it came from."""
    col_cost = sum(g.cost_usd for g in acc.groups)
    total_cost, source = col_cost, "sum of cost_usd over generations"
    if col_cost <= 0 and run_json_cost:
        total_cost, source = run_json_cost, "run.json"
    if total_cost <= 0:
        source = "no cost recorded"
    for g in acc.groups:
        g.total_cost_usd = (g.cost_usd if source != "run.json"
                            else total_cost * g.generations / max(acc.generations, 1))
    return total_cost, source
