"""The matches pass of the report: one streamed read of ``RUN/matches.parquet`` (a row per
maximal verbatim span, docs/CONTRACTS.md section 4) into a :class:`MatchIndex`, plus the
interval and longest-span helpers the other passes share.

Guarantees: memory is bounded by the memorized spans (``tokens >= W``, kept per request id)
and one small row per request id with any span (its span counts per threshold and its longest
span), never by the text of the spans (texts are cut from the completions later). The result
does not depend on the batch size: per-batch partial aggregates are merged exactly.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports.errors import ReportError
from reports.inputs import (REQUIRED_MATCH_COLUMNS, as_string, binary_buffers, completion_bytes, iter_batches,
                            low_bytes_mask, open_parquet, text, words_at)
from reports.windows import hash_ranges

THRESHOLDS = (10, 20, 30, 40, 50)
MATCH_COLUMNS = ("request_id", "span_start", "span_end", "tokens", "shard", "doc_id", "doc_offset",
                 "occurrences", "source")     # the span's text: cut from the completion
_LONGEST_ORDER = [("mt", "descending"), ("mb", "descending"), ("request_id", "ascending"), ("ss", "ascending")]


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


def union_added(keys, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """For each interval, the length it adds to the union of its key's intervals when they are
    taken by start (so the sum over a key's intervals is :func:`union_length`'s value for it), on
    arrays; None where that does not hold or the arrays would not fit (an interval ending before
    it starts, values too far apart): the caller uses :func:`union_length` then."""
    keys = keys if isinstance(keys, tuple) else (keys,)
    n = len(starts)
    if n == 0:
        return np.zeros(0, np.int64)
    starts, ends = starts.astype(np.int64), ends.astype(np.int64)
    if bool((ends < starts).any()):
        return None
    order = np.lexsort((starts,) + tuple(reversed(keys)))
    s, e = starts[order], ends[order]
    newseg = np.ones(n, dtype=bool)
    newseg[1:] = np.any([k[order][1:] != k[order][:-1] for k in keys], axis=0)
    seg = np.cumsum(newseg) - 1
    lo, width = int(s.min()), int(e.max()) - int(s.min()) + 1
    if int(seg[-1]) + 1 > (1 << 62) // width:
        return None
    shift = seg * width - lo                       # each key's values above the previous key's
    reach = np.maximum.accumulate(e + shift) - shift     # furthest end so far within the key
    prev = np.empty(n, dtype=np.int64)
    prev[0] = s[0]
    prev[1:] = reach[:-1]
    prev[newseg] = s[newseg]
    added = np.empty(n, dtype=np.int64)
    added[order] = np.maximum(e - np.maximum(s, prev), 0)
    return added


def union_total(keys, starts: np.ndarray, ends: np.ndarray) -> int:
    """The sum over keys of :func:`union_length`."""
    added = union_added(keys, starts, ends)
    return int(added.sum()) if added is not None else int(sum(union_length(keys, starts, ends).values()))


def span_table(batch: pa.RecordBatch, rids: pa.Array, tok: np.ndarray, keep: np.ndarray) -> pa.Table:
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


def longest_per(tbl: pa.Table, key: str | None) -> pa.Table:
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


def longest_rows(tbl: pa.Table, keys: np.ndarray | None = None) -> np.ndarray | None:
    """The row :func:`longest_per` keeps of ``tbl`` (whose ``mt`` is never null) for each value of
    the integer array ``keys`` (ascending values; all rows: ``keys=None``), as row indices: the most
    tokens, then most bytes (one lexsort of integers), ties between those rows only broken by
    request id (bytes, a null last), span start, then row order, as Arrow's stable sort does. None
    where the integers cannot stand for Arrow's order (a null ``mb``, a value of -2^63): the caller
    sorts the table then."""
    n = tbl.num_rows
    if not n:
        return np.zeros(0, np.int64)
    if tbl.column("mb").null_count or tbl.column("mt").null_count:
        return None
    mt = tbl.column("mt").to_numpy().astype(np.int64)
    mb = tbl.column("mb").to_numpy().astype(np.int64)
    low = np.iinfo(np.int64).min
    if int(mt.min()) == low or int(mb.min()) == low:
        return None
    k = np.zeros(n, np.int64) if keys is None else np.asarray(keys, dtype=np.int64)
    order = np.lexsort((-mb, -mt, k))
    ks, ts, bs = k[order], mt[order], mb[order]
    first = np.ones(n, dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    head = np.maximum.accumulate(np.where(first, np.arange(n), 0))      # each row's run's first position
    tied = (ts == ts[head]) & (bs == bs[head])
    out = order[first].copy()
    runs = np.cumsum(first) - 1
    multi = np.nonzero(np.bincount(runs, weights=tied, minlength=len(out)) > 1)[0]
    if len(multi):
        rows = np.nonzero(tied & np.isin(runs, multi))[0]
        at = order[rows]
        rid = pc.cast(tbl.column("request_id").take(pa.array(at)), pa.binary()).to_pylist()
        ss = tbl.column("ss").take(pa.array(at)).to_pylist()
        best: dict = {}
        for r, i, b, s0 in zip(runs[rows].tolist(), at.tolist(), rid, ss):
            key = (b is None, b or b"", s0 is None, s0 or 0, i)
            if r not in best or key < best[r]:
                best[r] = key
        for r, key in best.items():
            out[r] = key[-1]
    return out


def longest_run_record(span: dict | None, groups: list, parts: list[str], known: tuple | None = None) -> dict | None:
    """``longest_run`` of metrics.json: the single longest verbatim span the matcher reported
    (``span``: a row of :func:`longest_per` with the ``gid`` of its group in ``groups``), its
    text cut from its generation's completion: ``known`` (``(request id, completion)`` of the first
    generation with that id, kept by the generations pass) when it is that span's, else read again."""
    if span is None:
        return None
    if known is not None and known[0] == span["request_id"]:
        comp = known[1]
    else:
        comp = completion_bytes(parts, span["request_id"])
    raw = comp[span["ss"]:span["se"]] if comp is not None else b""
    attack, variant = groups[span["gid"]].attack, groups[span["gid"]].variant
    return {"tokens": int(span["mt"]), "bytes": int(span["mb"]), "text": raw.decode("utf-8", "replace"),
            "source": (span["source"] or b"").decode("utf-8", "replace"), "doc_id": span["doc_id"],
            "doc_offset": span["doc_offset"], "request_id": span["request_id"], "attack": attack,
            "variant": variant, "occurrences": span["occurrences"]}


@dataclass
class MatchIndex:
    """What the report keeps of matches.parquet.

    ``memorized``: request id -> its spans with ``tokens >= W`` as tuples ``(span_start,
    span_end, tokens, shard, doc_id (-1: null), doc_offset, occurrences, source, None)``, in file
    order; ``per_request``: a table of each request id with any span, ``s<i>_sum`` = its spans
    of at least ``THRESHOLDS[i]`` tokens and (columns of :func:`span_table`) its longest
    tokenized span, None when the file holds no span; ``run_length_counts[k]``: spans of exactly
    k tokens; ``spans``: rows; ``untokenized``: rows without a token count; ``min_tokens``: the
    matcher's threshold (metadata, else inferred) and ``thresholds_ok[i]``: ``THRESHOLDS[i] >=
    min_tokens`` (a figure below the threshold is not measured)."""

    path: str
    meta: dict
    memorized: dict = field(default_factory=lambda: defaultdict(list))
    per_request: pa.Table | None = None
    run_length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    spans: int = 0
    untokenized: int = 0
    min_seen: int | None = None
    min_tokens: int = 0
    min_tokens_source: str = ""
    thresholds_ok: list = field(default_factory=list)

    def memorized_request_ids(self) -> pa.Array:
        return pa.array(list(self.memorized.keys()), type=pa.string())

    def longest_row(self) -> int | None:
        """The row of ``per_request`` holding the longest tokenized span of the whole file (the order
        of :func:`longest_per`), None without one. When a generation carries its request id, that
        span is the run's longest run: the longest over the generations is taken over a subset of
        these rows that then includes the longest of all."""
        t = self.per_request
        if t is None or "mt" not in t.column_names or t.num_rows == 0:
            return None
        if t.column("mt").null_count:
            valid = np.nonzero(t.column("mt").is_valid().to_numpy(zero_copy_only=False))[0]
            got = longest_rows(t.take(pa.array(valid))) if len(valid) else None
        else:
            valid, got = np.arange(t.num_rows), longest_rows(t)
        if got is not None:
            return int(valid[got[0]])
        at = int(pc.sort_indices(t, sort_keys=_LONGEST_ORDER)[0].as_py())    # nulls last
        return at if t.column("mt")[at].is_valid else None


_SHORT_ID = 16      # bytes: ids up to this long are hashed from two 8-byte words


def _id_hashes(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash of each value of a string column, a function of the value's bytes alone (the
    lookup compares every candidate in full, so the hash only has to spread). Values of <= 16 bytes
    (trawl's request ids: 16 hex digits) are mixed from their two little-endian 8-byte words and
    length, the word read through an unaligned view of the column's bytes; longer ones get the
    window hash (:func:`reports.windows.hash_ranges`)."""
    data, off = binary_buffers(ids)
    start, ln = off[:-1], np.diff(off)
    out = np.zeros(len(ln), dtype=np.uint64)
    short = ln <= _SHORT_ID
    if not short.all():
        long_ = np.nonzero(~short)[0]
        out[long_] = hash_ranges(data, start[long_], off[1:][long_])
    rows = np.nonzero(short)[0]
    if len(rows):
        st, n = start[rows], ln[rows]
        if len(ln) and bool((ln == _SHORT_ID).all()):
            # every id 16 bytes (trawl's): laid end to end, their words are the bytes read as uint64
            # pairs, no gather (the bytes copied when not 8-byte aligned); the same words as below
            raw = data[int(off[0]):int(off[0]) + _SHORT_ID * len(ln)]
            words = raw.view("<u8") if raw.ctypes.data % 8 == 0 else np.frombuffer(raw.tobytes(), "<u8")
            pairs = words.reshape(-1, 2)
            first, second = pairs[:, 0], pairs[:, 1]
        else:
            pad = np.concatenate([data, np.zeros(_SHORT_ID, dtype=np.uint8)])
            w64 = words_at(pad)

            def word(at, m):            # the first m (0..8) bytes at ``at``, little-endian, the rest 0
                return w64[at] & low_bytes_mask(m)
            first, second = word(st, n), word(st + 8, n - 8)
        with np.errstate(over="ignore"):
            h = (first ^ (n.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(29)
            h = (h ^ second) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(32)
            h *= np.uint64(0xD6E8FEB86659FD93)
            h ^= h >> np.uint64(29)
        out[rows] = h
    return out


class RequestLookup:
    """The rows of the matches' per-request table holding given request ids: the inner join of
    that table with the generations on ``request_id`` (nulls match nothing), one batch of
    generations at a time. The ids are found by their hashes, then every candidate is compared in
    full, so a hash collision cannot join two different ids; should two of the table's ids share a
    hash, a dict is used instead.

    A hash is looked up in the table's sorted hashes through a bucket table: bucket ``h >> shift``
    (the top bits) holds the sorted positions ``bucket_start[b] .. bucket_start[b + 1]``, about one
    hash each with ``2^bits >= 2 n`` buckets, so a look-up reads a bucket's few hashes instead of
    binary-searching all of them (17 dependent cache misses per id at 120,000 ids: 0.18 s per 1M
    generations). The table's hashes are distinct here, so the position found is the one
    ``searchsorted`` finds whenever the hash is present (tests/reports: equal to the binary search);
    hashes that crowd into a few buckets (not spread over the top bits) use the binary search."""

    MAX_BUCKET = 8          # more hashes than this in one bucket: the binary search instead

    def __init__(self, ids):
        ids = as_string(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
        self.ids = ids
        rows = np.nonzero(ids.is_valid().to_numpy(zero_copy_only=False))[0]
        h = _id_hashes(ids)[rows]
        order = np.argsort(h, kind="stable")
        self.hash, self.row = h[order], rows[order]
        self.by_id = None
        if len(self.hash) > 1 and bool((self.hash[1:] == self.hash[:-1]).any()):
            self.by_id = {r: i for i, r in enumerate(ids.to_pylist()) if r is not None}
        self.bucket_start = None
        if len(self.hash) and self.by_id is None:
            bits = max(1, min(30, int(2 * len(self.hash) - 1).bit_length()))
            self.shift = np.uint64(64 - bits)
            top = (self.hash >> self.shift).astype(np.int64)
            # int32 positions: 4-8 bytes per id besides the 16 of the sorted hashes and rows
            starts = np.searchsorted(top, np.arange((1 << bits) + 1, dtype=np.int64))
            starts = starts.astype(np.int32 if len(self.hash) < (1 << 31) else np.int64)
            if int(np.diff(starts).max()) <= self.MAX_BUCKET:
                self.bucket_start = starts

    def _positions(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in col, positions in self.hash)`` of the hashes ``h`` present in the table."""
        if self.bucket_start is None:
            at = np.minimum(np.searchsorted(self.hash, h), len(self.hash) - 1)
            pos = np.nonzero(self.hash[at] == h)[0]
            return pos, at[pos]
        b = (h >> self.shift).astype(np.int64)
        lo, hi = self.bucket_start[b], self.bucket_start[b + 1]
        pending = np.nonzero(hi > lo)[0]
        lo, hi = lo[pending], hi[pending]
        found_pos, found_at = [], []
        while len(pending):             # the j-th hash of every bucket still searched (at most MAX_BUCKET rounds)
            hit = self.hash[lo] == h[pending]
            found_pos.append(pending[hit])
            found_at.append(lo[hit])
            lo = lo + 1
            more = ~hit & (lo < hi)
            pending, lo, hi = pending[more], lo[more], hi[more]
        if not found_pos:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos, at = np.concatenate(found_pos), np.concatenate(found_at)
        order = np.argsort(pos, kind="stable")
        return pos[order], at[order]

    def find(self, col) -> tuple[np.ndarray, np.ndarray]:
        """``(table rows, positions in col)`` of the values of ``col`` found in the table."""
        col = as_string(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
        if self.by_id is not None:
            got = [self.by_id.get(r, -1) if r is not None else -1 for r in col.to_pylist()]
            got = np.array(got, dtype=np.int64)
            pos = np.nonzero(got >= 0)[0]
            return got[pos], pos
        if not len(self.hash) or not len(col):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos, at = self._positions(_id_hashes(col))
        if col.null_count:
            valid = col.is_valid().to_numpy(zero_copy_only=False)[pos]
            pos, at = pos[valid], at[valid]
        rows = self.row[at]
        same = pc.fill_null(pc.equal(self.ids.take(pa.array(rows)), col.take(pa.array(pos))), False)
        keep = same.to_numpy(zero_copy_only=False)
        return rows[keep], pos[keep]


def read_matches(run_dir: str, parts: list[str], W: int, batch_rows: int, warnings: list[str]) -> MatchIndex:
    """The matches pass: stream matches.parquet into a :class:`MatchIndex` (warnings appended:
    a matches file older than the generations, an inferred threshold)."""
    mpath = os.path.join(run_dir, "matches.parquet")
    if not os.path.exists(mpath):
        raise ReportError(f"{run_dir}: no matches.parquet (run the matcher on this run first)")
    mpf = open_parquet(mpath, REQUIRED_MATCH_COLUMNS)
    newest = max(parts, key=os.path.getmtime)
    if os.path.getmtime(newest) > os.path.getmtime(mpath) + 1:
        warnings.append(f"matches.parquet is older than {os.path.relpath(newest, run_dir)}: generations added "
                        "since the matcher ran are counted as unmatched; rerun the matcher for exact figures")
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in (mpf.schema_arrow.metadata or {}).items()}
    mi = MatchIndex(mpath, meta)
    small_aggs: list[pa.Table] = []        # per request_id: counts per threshold
    longest_parts: list[pa.Table] = []     # per request_id: its longest span
    for batch in iter_batches(mpf, mpath, [c for c in MATCH_COLUMNS if c in mpf.schema_arrow.names], batch_rows):
        if batch.num_rows == 0:
            continue
        tok = _count_tokens(mi, batch)
        rids = as_string(batch.column("request_id"))
        small_aggs.append(_threshold_counts(rids, tok))
        keep = np.nonzero(tok >= 0)[0]      # the longest run is measured in tokens: tokenized spans only
        if len(keep):
            longest_parts.append(longest_per(span_table(batch, rids, tok, keep), "request_id"))
        _keep_memorized(mi, batch, tok, W)
    mi.per_request = _merge_per_request(small_aggs, longest_parts)
    _resolve_min_tokens(mi, W, warnings)
    return mi


def _count_tokens(mi: MatchIndex, batch: pa.RecordBatch) -> np.ndarray:
    """The batch's token counts (-1: none), added to the span count, run lengths and smallest span."""
    mi.spans += batch.num_rows
    tcol = batch.column("tokens")
    if tcol.null_count:     # spans of generations without token offsets (matched by bytes)
        mi.untokenized += tcol.null_count
        tcol = pc.fill_null(tcol, -1)
    tok = tcol.to_numpy(zero_copy_only=False).astype(np.int64)
    if (tok >= 0).any():
        bmin = int(tok[tok >= 0].min())
        mi.min_seen = bmin if mi.min_seen is None else min(mi.min_seen, bmin)
    bc = np.bincount(np.clip(tok, 0, None))
    if len(bc) > len(mi.run_length_counts):
        bc[: len(mi.run_length_counts)] += mi.run_length_counts
        mi.run_length_counts = bc
    else:
        mi.run_length_counts[: len(bc)] += bc
    return tok


def _threshold_counts(rids: pa.Array, tok: np.ndarray) -> pa.Table:
    """Per request id of the batch: ``s<i>_sum`` = its spans of at least ``THRESHOLDS[i]`` tokens."""
    cols = {"request_id": rids}
    for i, t in enumerate(THRESHOLDS):
        cols[f"s{i}"] = pa.array((tok >= t).astype(np.int64))
    return pa.table(cols).group_by(["request_id"], use_threads=False).aggregate([(f"s{i}", "sum") for i in range(len(THRESHOLDS))])


def _keep_memorized(mi: MatchIndex, batch: pa.RecordBatch, tok: np.ndarray, W: int) -> None:
    """Keep the batch's spans of at least ``W`` tokens under their request id."""
    big = np.nonzero(tok >= W)[0]
    if not len(big):
        return
    sub = batch.take(pa.array(big))
    n = sub.num_rows

    def g(name, default=None):
        return sub.column(name).to_pylist() if name in sub.schema.names else [default] * n

    sources = text(sub.column("source")) if "source" in sub.schema.names else [""] * n
    for r, s, e, tk, sh, d, do, oc, src in zip(text(sub.column("request_id")), g("span_start"), g("span_end"),
                                               g("tokens"), g("shard", 0), g("doc_id"), g("doc_offset"),
                                               g("occurrences", 1), sources):
        mi.memorized[r].append((int(s), int(e), int(tk), int(sh or 0), -1 if d is None else int(d),
                                int(do or 0), int(oc or 1), src, None))


def _merge_per_request(small_aggs: list[pa.Table], longest_parts: list[pa.Table]) -> pa.Table | None:
    """One row per request id: the batches' threshold counts summed, its longest span joined on.

    On arrays: the batches' request ids are dictionary-encoded once (codes in the order of first
    appearance; Arrow's ``group_by`` orders its groups otherwise), the counts summed
    per code by ``np.bincount`` (exact below 2^53; beyond, and for a null id, Arrow as before), and each
    request's longest span (the batches' longest, of :func:`longest_per`) chosen by one stable
    lexsort of (code, tokens descending, bytes descending, start): within one request id that is
    :func:`longest_per`'s order, ties to the first in file order as its stable sort. Equal to the
    ``group_by`` and left ``join`` of Arrow (:func:`_merge_per_request_arrow`, tests/reports) but for
    the order of the rows, which no figure reads (sums per group, a total order for the longest)."""
    if not small_aggs:
        return None
    small_tbl = pa.concat_tables(small_aggs)
    sums = [f"s{i}_sum" for i in range(len(THRESHOLDS))]
    enc = pc.dictionary_encode(small_tbl.column("request_id").combine_chunks())
    if enc.indices.null_count:          # a null request id (Arrow groups the nulls as one key)
        return _merge_per_request_arrow(small_aggs, longest_parts)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    nreq = len(enc.dictionary)
    if nreq == small_tbl.num_rows:      # each id in one batch only: the rows are the groups, in order
        merged = small_tbl.select(["request_id"] + sums)
    else:
        cols = {"request_id": enc.dictionary}
        for c in sums:
            v = small_tbl.column(c).to_numpy(zero_copy_only=False).astype(np.int64)
            if int(np.abs(v).max()) * len(v) >= 1 << 53:        # beyond float64's exact integers
                return _merge_per_request_arrow(small_aggs, longest_parts)
            cols[c] = pa.array(np.bincount(codes, weights=v, minlength=nreq).astype(np.int64))
        merged = pa.table(cols)
    if not longest_parts:
        return merged
    lt = pa.concat_tables(longest_parts)
    lcode = pc.index_in(lt.column("request_id"), value_set=merged.column("request_id"))
    if lcode.null_count:
        return _merge_per_request_arrow(small_aggs, longest_parts)
    lcode = lcode.to_numpy(zero_copy_only=False).astype(np.int64)
    col = {c: lt.column(c).to_numpy(zero_copy_only=False) for c in ("mt", "mb", "ss")}
    if any(col[c].dtype.kind not in "iu" for c in col) or any(lt.column(c).null_count for c in col):
        return _merge_per_request_arrow(small_aggs, longest_parts)
    mt, mb, ss = (col[c].astype(np.int64) for c in ("mt", "mb", "ss"))
    if any(len(x) and int(x.min()) == np.iinfo(np.int64).min for x in (mt, mb)):
        return _merge_per_request_arrow(small_aggs, longest_parts)
    order = np.lexsort((ss, -mb, -mt, lcode))        # stable: the first in file order among ties
    first = np.ones(len(order), dtype=bool)
    first[1:] = lcode[order][1:] != lcode[order][:-1]
    best = np.full(len(merged), -1, dtype=np.int64)
    best[lcode[order][first]] = order[first]
    picked = lt.drop_columns(["request_id"]).take(pa.array(best, mask=best < 0))
    for name in picked.column_names:
        merged = merged.append_column(name, picked.column(name))
    return merged


def _merge_per_request_arrow(small_aggs: list[pa.Table], longest_parts: list[pa.Table]) -> pa.Table | None:
    """:func:`_merge_per_request` by Arrow's ``group_by`` and ``join`` (the reference, and the path
    for a null request id or sums beyond float64's exact integers)."""
    if not small_aggs:
        return None
    small_tbl = pa.concat_tables(small_aggs)
    if len(small_aggs) > 1:
        small_tbl = small_tbl.group_by(["request_id"], use_threads=False).aggregate(
            [(f"s{i}_sum", "sum") for i in range(len(THRESHOLDS))])
        small_tbl = small_tbl.rename_columns([c[:-4] if c.endswith("_sum_sum") else c
                                              for c in small_tbl.column_names])
    if longest_parts:
        # each request's longest span rides along the per-request table (one join with the groups later)
        small_tbl = small_tbl.join(longest_per(pa.concat_tables(longest_parts), "request_id"), "request_id",
                                   join_type="left outer", use_threads=False)
    return small_tbl


def _resolve_min_tokens(mi: MatchIndex, W: int, warnings: list[str]) -> None:
    """The matcher's threshold: matches.parquet's ``min_tokens`` metadata, else the smallest span
    (at most W; warned); above W is a ReportError (no W-token window could be measured)."""
    if "min_tokens" in mi.meta:
        try:
            mi.min_tokens = int(mi.meta["min_tokens"])
            mi.min_tokens_source = "matches.parquet metadata"
        except ValueError:
            raise ReportError(f"{mi.path}: metadata min_tokens={mi.meta['min_tokens']!r} is not an integer") from None
    else:
        mi.min_tokens = min(mi.min_seen if mi.min_seen is not None else W, W)
        mi.min_tokens_source = "inferred (no min_tokens in matches.parquet metadata)"
        warnings.append("matches.parquet has no min_tokens metadata; the matcher threshold was inferred "
                        f"as {mi.min_tokens} from the smallest span")
    if mi.min_tokens > W:
        raise ReportError(f"{mi.path}: the matcher ran with min_tokens={mi.min_tokens}, above the {W}-token "
                          f"window; rerun the matcher with --min-tokens {W} or lower")
    mi.thresholds_ok = [t >= mi.min_tokens for t in THRESHOLDS]
