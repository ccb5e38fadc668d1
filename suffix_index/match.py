"""Batched matching: every maximal verbatim span of many generations at once.

Definition (the tests check it against brute force). For a generation ``g`` (bytes)
a span ``[s, e)`` is reported iff

* ``g[s:e]`` occurs in the corpus inside one document (so never across the
  ``0xFF`` separators; a ``0xFF`` byte in a generation is never part of a span),
* it is maximal: ``g[s-1:e]`` and ``g[s:e+1]`` do not occur (or are out of range),
  both taken over the **whole** corpus, all shards together;
* it is long enough: with token offsets (token ``i`` covers ``[off[i], off[i+1])``,
  the last one ends at ``len(g)``), at least ``min_tokens`` tokens lie fully
  inside it; without, ``e - s >= min_bytes``.

Each span carries the number of occurrences over all shards and one occurrence:
the lowest ``(shard, position)``.

Algorithm (seed and extend over the suffix arrays). Let ``L`` be the fewest
bytes a qualifying span can have (``min_bytes``, or the shortest run of
``min_tokens`` consecutive tokens). With seeds of ``q <= L`` bytes placed every
``s = L - q + 1`` bytes, every qualifying span contains a whole seed, and the seed
``p`` it contains first starts at most ``s - 1`` bytes after the span. So:

1. for every seed position ``p`` compute the matching statistic ``ms[p]`` (the
   longest prefix of ``g[p:]`` in the corpus) with one batched binary search per
   shard (:mod:`suffix_index.search`: 8-byte word compares, each search started from the
   shard's :class:`~suffix_index.search.PrefixSample`); seeds with ``ms[p] < q`` are done;
2. for a hit seed, the spans starting in its zone ``(p - s, p]`` are found right to
   left: with ``r = p + ms[p]``, binary-search the smallest start ``a`` in the zone
   for which ``g[a:r]`` occurs; ``[a, r)`` is maximal unless ``g[a-1:r]`` occurs too;
   then continue from ``a - 1`` with its own ``ms``. When ``g[x:r]`` (``x`` the seed or the
   continuation point) occurs at most ``BACKWARD_MAX_OCCURRENCES`` times per shard, ``a`` is read
   off the corpus instead: ``g[a:r]`` occurs iff some occurrence of ``g[x:r]`` is preceded by
   ``g[a:x]``, so ``a = x -`` the longest backward match before those occurrences (one range
   search and a few word compares instead of a search over starts, which stays for the rest and
   probes 3 starts per round). Ends of spans only decrease,
   so the loop stops as soon as nothing of length ``L`` can remain. A seed whose
   predecessor seed reaches the same end has nothing of its own (its zone's spans
   are not left-maximal) and costs nothing;
3. count the reported spans in every shard and locate the first occurrence.

All steps are vectorized over the whole batch. Memory: the mapped index plus
arrays proportional to the batch (its bytes, a few integers per seed).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from suffix_index.search import PrefixSample, backward_match, checked_pointers, sa_occurs, sa_range, sa_search

SEPARATOR = 0xFF
DEFAULT_MIN_TOKENS = 50
BYTES_PER_TOKEN = 4  # min_bytes default = BYTES_PER_TOKEN * min_tokens
_PROBE_D = 4   # the zone search is 4-ary (measured at 1 GB: 2-, 8- and 16-ary were slower)
_PROBE_K = np.arange(1, _PROBE_D, dtype=np.int64)   # its probes, in quarters of the interval
BACKWARD_MAX_OCCURRENCES = 128   # a span's extension reads before each occurrence, up to this many (measured: 8-1024)
SEED_MIN, SEED_MAX = 12, 32   # seed length bounds (seed_length)
SAMPLE_STRIDE = 256  # every 256th suffix's first 8 bytes (search.PrefixSample): 1/32 byte per corpus byte


@dataclass(frozen=True)
class Span:
    """A maximal verbatim span of a generation found in the corpus."""

    key: Any
    start: int
    end: int
    tokens: int | None
    shard: int
    doc_id: int
    doc_offset: int
    occurrences: int
    source: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class _Gen:
    key: Any
    base: int  # offset in G
    n: int
    ends: np.ndarray | None  # token end offsets
    offs: np.ndarray | None
    L: int  # minimum span length in bytes (0: no span possible)


def seed_length(L: int) -> int:
    """Seed length for a minimum span length ``L``: long enough to be rare, short enough to space seeds."""
    return int(min(L, max(SEED_MIN, min(SEED_MAX, L // 2))))


def token_arrays(offsets, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sanitized token starts and ends for a generation of ``n`` bytes.

    Offsets are clipped to ``[0, n]`` and made non-decreasing (a server that
    returns something odd gets tokens of length 0 there, never a crash).
    """
    off = np.asarray(offsets, dtype=np.int64).ravel()
    off = np.clip(off, 0, n)
    off = np.maximum.accumulate(off) if off.size else off
    ends = np.empty_like(off)
    if off.size:
        ends[:-1] = off[1:]
        ends[-1] = n
    return off, ends


def tokens_covered(offs: np.ndarray, ends: np.ndarray, start: int, end: int) -> int:
    """Number of tokens ``i`` with ``start <= off[i]`` and ``ends[i] <= end``."""
    i0 = int(np.searchsorted(offs, start, side="left"))
    i1 = int(np.searchsorted(ends, end, side="right"))
    return max(0, i1 - i0)


class Matcher:
    """Runs the batched algorithm over an opened index's shards.

    ``shards`` is a sequence of objects with ``text`` (uint8 array) and ``sa``
    (uint32/uint64 array) attributes, typically memory-mapped files.
    """

    def __init__(self, shards: Sequence[Any], sample_stride: int | None = SAMPLE_STRIDE):
        self.shards = list(shards)
        self.sample_stride = sample_stride
        self._samples: dict[int, PrefixSample | None] = {}
        self._samples_lock = threading.Lock()

    def __getstate__(self):   # picklable (a process pool, Ray): the samples are derived again there
        state = dict(self.__dict__)
        state["_samples"] = {}
        del state["_samples_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._samples_lock = threading.Lock()

    def sample(self, i: int) -> PrefixSample | None:
        """Shard ``i``'s :class:`PrefixSample` (derived on first use; None with ``sample_stride=None``)."""
        got = self._samples.get(i)
        if got is None and self.sample_stride and i not in self._samples:
            with self._samples_lock:
                if i not in self._samples:
                    sh = self.shards[i]
                    self._samples[i] = PrefixSample(sh.text, sh.sa, self.sample_stride, name=getattr(sh, "sa_path", None))
                got = self._samples[i]
        return got

    # ------------------------------------------------------------ primitives over all shards
    def ms(self, G: np.ndarray, xs: np.ndarray, xl: np.ndarray) -> np.ndarray:
        """Longest prefix of each pattern occurring in the corpus (max over shards)."""
        best = np.zeros(len(xs), dtype=np.int64)
        for i, sh in enumerate(self.shards):
            _, a, b = sa_search(sh.text, sh.sa, G, xs, xl, name=getattr(sh, "sa_path", None), sample=self.sample(i))
            np.maximum(best, np.maximum(a, b), out=best)
        return best

    def occurs(self, G: np.ndarray, xs: np.ndarray, xl: np.ndarray) -> np.ndarray:
        """Whether each pattern occurs in some shard (each shard searched for the patterns not yet found)."""
        found = np.zeros(len(xs), dtype=bool)
        for i, sh in enumerate(self.shards):
            rest = np.flatnonzero(~found)
            if not rest.size:
                break
            found[rest] = sa_occurs(sh.text, sh.sa, G, xs[rest], xl[rest], name=getattr(sh, "sa_path", None),
                                    sample=self.sample(i))
        return found

    # ------------------------------------------------------------ the algorithm
    def spans(self, gens: Sequence[tuple[Any, bytes, Any]], min_tokens: int = DEFAULT_MIN_TOKENS,
              min_bytes: int | None = None) -> list[tuple[Any, int, int, int | None, int, int, int]]:
        """Maximal spans of one batch as ``(gen_index, start, end, tokens, shard, pos, count)``.

        The batch's texts are packed into one byte array; its segments (runs without 0xFF at
        least ``L`` bytes long, ``L`` the fewest bytes ``min_tokens`` tokens take in that
        generation) are seeded every ``L - q + 1`` bytes with ``q``-byte seeds that any span of
        ``L`` bytes must contain; hit seeds are extended to maximal spans, right to left; spans
        under ``min_tokens`` tokens are dropped; then every span is counted in every shard.
        """
        if min_bytes is None:
            min_bytes = BYTES_PER_TOKEN * int(min_tokens)
        G, glist = self._pack(gens, min_tokens, min_bytes)
        if not glist or not self.shards:
            return []
        segs = _segments(G, glist)
        if segs is None:
            return []
        zones = self._hit_seeds(G, segs)
        A, B, S = self._extend(G, segs, *zones)
        if A.size == 0:
            return []
        res_gen, res_a, res_b, res_tok = _token_filter(A, B, S, segs.gen, glist, min_tokens, min_bytes)
        if not res_a:
            return []
        total, first_shard, first_pos = self._occurrences(G, res_a, res_b)
        out = []
        for j in range(len(res_a)):
            g = glist[res_gen[j]]
            out.append((res_gen[j], res_a[j] - g.base, res_b[j] - g.base, res_tok[j],
                        int(first_shard[j]), int(first_pos[j]), int(total[j])))
        return out

    @staticmethod
    def _pack(gens, min_tokens: int, min_bytes: int) -> tuple[np.ndarray, list[_Gen]]:
        """The batch's texts in one byte array (8 zero bytes after it) and one :class:`_Gen` each,
        with ``L``: the fewest bytes that ``min_tokens`` of its tokens take (``min_bytes`` without
        token offsets; 0 when it has fewer tokens)."""
        parts: list[bytes] = []
        glist: list[_Gen] = []
        base = 0
        for key, data, offsets in gens:
            if isinstance(data, str):
                data = data.encode("utf-8")
            n = len(data)
            offs = ends = None
            if offsets is not None:
                offs, ends = token_arrays(offsets, n)
                k = int(min_tokens)
                if k <= 0:
                    L = 1
                elif offs.size < k:
                    L = 0
                else:
                    L = max(1, int((ends[k - 1:] - offs[: offs.size - k + 1]).min()))
            else:
                L = max(1, int(min_bytes))
            glist.append(_Gen(key, base, n, ends, offs, L))
            parts.append(bytes(data))
            base += n
        return np.frombuffer(b"".join(parts) + b"\0" * 8, dtype=np.uint8), glist

    def _hit_seeds(self, G: np.ndarray, segs: "_Segments"):
        """Seeds that occur in the index and own a span: ``(x, right end, segment, zone left)``."""
        Ls = segs.L
        q = np.minimum(Ls, np.maximum(SEED_MIN, np.minimum(SEED_MAX, Ls // 2)))   # seed_length, per segment
        step = Ls - q + 1
        count = (segs.end - segs.start - q) // step + 1   # every segment is at least L >= q long
        sseg_a = np.repeat(np.arange(Ls.size), count)
        within = np.arange(sseg_a.size) - np.repeat(np.cumsum(count) - count, count)
        sp_a = segs.start[sseg_a] + within * step[sseg_a]
        sq_a = q[sseg_a]
        ss_a = step[sseg_a]
        ms = self.ms(G, sp_a, segs.end[sseg_a] - sp_a)
        r = sp_a + ms
        hit = ms >= sq_a
        # a seed whose predecessor (same segment) reaches the same end owns no span
        prev_same = np.zeros(len(sp_a), dtype=bool)
        if len(sp_a) > 1:
            same_seg = sseg_a[1:] == sseg_a[:-1]
            prev_same[1:] = same_seg & hit[:-1] & (r[:-1] >= r[1:])
        items = np.flatnonzero(hit & ~prev_same)
        seg = sseg_a[items]
        zl = np.maximum(sp_a[items] - ss_a[items] + 1, segs.start[seg])
        return sp_a[items], r[items], seg, zl

    def _extend(self, G: np.ndarray, segs: "_Segments", x, cur_r, seg, zl):
        """Every maximal span of each hit seed's zone, right to left: ``(starts, ends, segments)``,
        sorted and without repeats."""
        L_it = segs.L[seg]
        out_a: list[np.ndarray] = []
        out_b: list[np.ndarray] = []
        out_seg: list[np.ndarray] = []
        while x.size:
            floor = np.maximum(zl - 1, segs.start[seg])  # lowest start to try
            lo = floor - 1  # virtual: "does not occur"
            hi = x.copy()  # g[x:cur_r] occurs
            known = self._start_from_occurrences(G, x, cur_r, floor)
            if known is not None:   # found by reading backwards before each occurrence of g[x:cur_r]
                done, a_known = known
                hi[done] = a_known[done]
                lo[done] = hi[done] - 1
            act = np.flatnonzero(hi - lo > 1)
            while act.size:
                # a 4-ary search: 3 probes per zone in one batched query (a zone of s starts takes
                # log4(s) rounds instead of log2(s): part of each round's cost is per call)
                a_lo, a_hi = lo[act], hi[act]
                probes = a_lo[:, None] + ((a_hi - a_lo)[:, None] * _PROBE_K) // _PROBE_D
                probes = np.maximum(probes, a_lo[:, None] + 1)   # inside (lo, hi): a probe at hi is known
                r = np.broadcast_to(cur_r[act][:, None], probes.shape)
                occ = self.occurs(G, probes.ravel(), (r - probes).ravel()).reshape(probes.shape)
                # occurrence is monotone in the start (a suffix of an occurring string occurs):
                # the new hi is the first probe that occurs, the new lo the probe just before it
                first = np.where(occ.any(axis=1), occ.argmax(axis=1), _PROBE_K.size)
                rows = np.arange(act.size)
                hi[act] = np.where(first < _PROBE_K.size, probes[rows, np.minimum(first, _PROBE_K.size - 1)], a_hi)
                lo[act] = np.where(first > 0, probes[rows, np.maximum(first - 1, 0)], a_lo)
                act = act[(hi[act] - lo[act]) > 1]
            a = hi
            not_left_max = (zl - 1 >= segs.start[seg]) & (a == zl - 1)
            ok = ~not_left_max
            rep = ok & (cur_r - a >= L_it)
            out_a.append(a[rep])
            out_b.append(cur_r[rep])
            out_seg.append(seg[rep])
            cont = ok & (a > zl)
            if not cont.any():
                break
            x2 = a[cont] - 1
            seg2 = seg[cont]
            ms2 = self.ms(G, x2, segs.end[seg2] - x2)
            r2 = x2 + ms2
            zl2 = zl[cont]
            L2 = L_it[cont]
            keep = r2 - zl2 >= L2
            x, cur_r, seg, zl, L_it = x2[keep], r2[keep], seg2[keep], zl2[keep], L2[keep]
        if not out_a:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        A = np.concatenate(out_a)
        B = np.concatenate(out_b)
        S = np.concatenate(out_seg)
        order = np.lexsort((B, A))
        A, B, S = A[order], B[order], S[order]
        keep = np.ones(A.size, dtype=bool)
        keep[1:] = (A[1:] != A[:-1]) | (B[1:] != B[:-1])
        return A[keep], B[keep], S[keep]

    def _start_from_occurrences(self, G: np.ndarray, x: np.ndarray, r: np.ndarray, floor: np.ndarray,
                                max_occurrences: int | None = None):
        """The smallest ``a`` in ``[floor, x]`` with ``g[a:r]`` in the corpus, for each item whose
        ``g[x:r]`` (which occurs) occurs at most ``max_occurrences`` times in every shard:
        ``g[a:r]`` occurs iff some occurrence ``p`` of ``g[x:r]`` is preceded by ``g[a:x]``, so ``a``
        is ``x`` minus the longest backward match before those occurrences (capped at ``x - floor``).
        One range search of ``g[x:r]`` and a few word compares replace the search over starts.
        Returns ``(done, a)``, ``done`` marking the items answered; None when none is."""
        if max_occurrences is None:
            max_occurrences = BACKWARD_MAX_OCCURRENCES
        kmax = x - floor
        need = np.flatnonzero(kmax > 0)
        if not need.size:
            return None
        ok = np.ones(need.size, dtype=bool)
        best = np.zeros(need.size, dtype=np.int64)
        xn, ln, kn = x[need], r[need] - x[need], kmax[need]
        Gf = None
        for si, sh in enumerate(self.shards):
            name = getattr(sh, "sa_path", None)
            rest = np.flatnonzero(ok)
            if not rest.size:
                break
            lo_r, hi_r = sa_range(sh.text, sh.sa, G, xn[rest], ln[rest], name=name, sample=self.sample(si))
            cnt = hi_r - lo_r
            ok[rest[cnt > max_occurrences]] = False
            small = np.flatnonzero((cnt > 0) & (cnt <= max_occurrences))
            if not small.size:
                continue
            c = cnt[small]
            rep = np.repeat(small, c)
            ranks = lo_r[rep] + (np.arange(rep.size) - np.repeat(np.cumsum(c) - c, c))
            pos = checked_pointers(sh.sa[ranks], len(sh.text), name)
            if Gf is None:
                Gf = np.concatenate((np.zeros(8, dtype=np.uint8), G))   # words may start before byte 0
            items = rest[rep]
            back = backward_match(sh.text, Gf, pos, xn[items] + 8, kn[items])
            np.maximum.at(best, items, back)
        done = np.zeros(x.size, dtype=bool)
        done[need[ok]] = True
        a = x.copy()
        a[need] = xn - np.minimum(best, kn)
        return done, a

    def _occurrences(self, G: np.ndarray, res_a: list[int], res_b: list[int]):
        """Per span: occurrences summed over every shard, and the first occurrence (lowest shard,
        then lowest position)."""
        xa = np.array(res_a, dtype=np.int64)
        xlen = np.array(res_b, dtype=np.int64) - xa
        total = np.zeros(xa.size, dtype=np.int64)
        first_shard = np.full(xa.size, -1, dtype=np.int64)
        first_pos = np.full(xa.size, -1, dtype=np.int64)
        for si, sh in enumerate(self.shards):
            name = getattr(sh, "sa_path", None)
            lo_r, hi_r = sa_range(sh.text, sh.sa, G, xa, xlen, name=name, sample=self.sample(si))
            cnt = hi_r - lo_r
            total += cnt
            need = np.flatnonzero((first_shard < 0) & (cnt > 0))
            for j in need.tolist():
                first_shard[j] = si
                ptrs = checked_pointers(sh.sa[int(lo_r[j]) : int(hi_r[j])], len(sh.text), name)
                first_pos[j] = int(ptrs.min())
        return total, first_shard, first_pos


@dataclass
class _Segments:
    """Maximal runs of a batch without 0xFF, at least their generation's ``L`` long."""

    start: np.ndarray   # int64, into the packed batch
    end: np.ndarray
    L: np.ndarray
    gen: list[int]      # the generation of each segment


def _segments(G: np.ndarray, glist: list[_Gen]) -> _Segments | None:
    """Runs between 0xFF bytes and generation edges, at least their generation's ``L`` long, in
    generation and position order (sorted starts and sorted ends pair up: runs do not overlap)."""
    if not glist:
        return None
    base = np.array([g.base for g in glist], dtype=np.int64)
    n = np.array([g.n for g in glist], dtype=np.int64)
    L = np.array([g.L for g in glist], dtype=np.int64)
    ends = base + n
    ff = np.flatnonzero(G[: int(ends[-1])] == SEPARATOR)
    starts = np.sort(np.concatenate((base, ff + 1)))
    stops = np.sort(np.concatenate((ends, ff)))
    gen = np.searchsorted(ends, starts, side="right")   # the generation a (non-empty) run lies in
    gen = np.minimum(gen, len(glist) - 1)
    Lr = L[gen]
    keep = (Lr > 0) & (stops - starts >= Lr) & (stops > starts)
    if not keep.any():
        return None
    return _Segments(starts[keep], stops[keep], Lr[keep], gen[keep].tolist())


def _token_filter(A, B, S, seg_gen: list[int], glist: list[_Gen], min_tokens: int, min_bytes: int):
    """The spans that cover at least ``min_tokens`` tokens (``min_bytes`` bytes without offsets),
    as lists ``(generation, start, end, tokens)``."""
    res_gen, res_a, res_b, res_tok = [], [], [], []
    for a_, b_, s_ in zip(A.tolist(), B.tolist(), S.tolist()):
        gi = seg_gen[s_]
        g = glist[gi]
        tok = None
        if g.offs is not None:
            tok = tokens_covered(g.offs, g.ends, a_ - g.base, b_ - g.base)
            if tok < min_tokens:
                continue
        elif b_ - a_ < min_bytes:
            continue
        res_gen.append(gi)
        res_a.append(a_)
        res_b.append(b_)
        res_tok.append(tok)
    return res_gen, res_a, res_b, res_tok


def iter_batches(items: Iterable, size: int):
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
