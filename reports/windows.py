"""Memorized windows of a batch of generations, on arrays: the tokens each span covers, the
tokens of a generation inside some span, and a 62-bit hash of every W-token window's bytes.

Definitions (:mod:`reports.metrics`): token ``i`` of a generation covers bytes
``[o[i], o[i + 1])`` of its completion (the last token runs to the end), offsets clipped to
``[0, len]`` and made non-decreasing as the matcher does; a span ``[s, e)`` covers the tokens
``a .. b`` with ``a`` = the first token starting at or after ``s`` and ``b`` = the last token
ending at or before ``e``; its windows are the W-token runs ``k .. k + W - 1`` with ``a <= k``
and ``k + W - 1 <= b``.

**The window hash.** A window's bytes ``x_0 .. x_{n-1}`` hash to ``(h_1 << 31) | h_2`` with
``h_j = sum_i (x_i + 1) B_j^i mod (2^31 - 1)`` for two fixed bases ``B_j`` (a polynomial hash;
``x_i + 1`` so that trailing NUL bytes change it). Two different windows collide in one base
with probability about ``1 / (2^31 - 1)`` for text that was not built against these bases (at
most ``n / (2^31 - 1)`` over a random choice of base, Schwartz-Zippel), so with ``u`` unique
windows about ``u^2 / 2^63`` colliding pairs are expected (ten million windows: about 1e-5):
the unique-window counts are exact in practice. A prime modulus, not ``2^64``: polynomial
hashes modulo a power of two collide on Thue-Morse strings whatever the base.

It is computed for all windows of a batch at once: a prefix sum ``P`` of ``(x_i + 1) B^i``
over the completions' bytes (block-wise, exact in uint64), then ``(P[end] - P[start]) *
B^-start`` per window. :func:`window_hash` is the same hash of one byte string in plain Python
(the tests' reference). Guarantees: the figures equal a byte-by-byte computation
(tests/reports/test_window_hash.py: random, empty, non-ASCII, long repeats, Thue-Morse).
"""
from __future__ import annotations

import functools

import numpy as np

MOD = (1 << 31) - 1
BASES = (1_364_423_081, 977_521_433)      # fixed, drawn once at random in [2^29, 2^31 - 1)
BLOCK = 1 << 16                           # bytes per prefix block: (x + 1) B^i < 2^39, a block sums < 2^55;
# small enough that a run's arrays (8 bytes a byte) stay in cache and in the heap glibc reuses: with
# 1 MB blocks each run allocated fresh 8 MB arrays (about 27,000 page faults at 1M generations) and
# the window hashes took 0.27-0.29 s there against 0.15 s now
DESCRIPTION = "two polynomial hashes modulo 2^31-1 of the window's bytes (62 bits)"
_M = np.uint64(MOD)
_S31 = np.uint64(31)


def window_hash(data: bytes) -> int:
    """The hash of one byte string (module docstring), in plain Python."""
    out = 0
    for base in BASES:
        h, p = 0, 1
        for x in data:
            h = (h + (x + 1) * p) % MOD
            p = p * base % MOD
        out = (out << 31) | h
    return out


def _reduce(x: np.ndarray) -> np.ndarray:
    """``x mod (2^31 - 1)`` of uint64 values (any), as uint64."""
    x = (x & _M) + (x >> _S31)
    x = (x & _M) + (x >> _S31)
    return np.where(x >= _M, x - _M, x)


@functools.lru_cache(maxsize=len(BASES))
def _powers(base: int) -> tuple[np.ndarray, np.ndarray]:
    """``B^i`` and ``B^-i`` mod MOD for i < BLOCK (uint64)."""
    out = []
    for b in (base, pow(base, MOD - 2, MOD)):
        pw = np.ones(BLOCK, dtype=np.uint64)
        m = 1
        while m < BLOCK:                      # pw[m:2m] = pw[:m] * b^m
            pw[m:2 * m] = pw[:m] * np.uint64(pow(b, m, MOD)) % _M
            m *= 2
        out.append(pw)
    return out[0], out[1]


def hash_ranges(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The hash (:func:`window_hash`) of ``data[starts[k]:ends[k]]`` for every k (uint64).
    ``data``: uint8; ``0 <= starts <= ends <= len(data)``."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    out = np.zeros(len(starts), dtype=np.uint64)
    if not len(starts):
        return out
    x = data.astype(np.uint64) + np.uint64(1)
    if len(x) < BLOCK:          # one block: the prefix sums are exact, reduced only at the windows
        for base in BASES:
            pw, ipw = _powers(base)
            pref = np.empty(len(x) + 1, dtype=np.uint64)
            pref[0] = 0
            np.cumsum(x * pw[:len(x)], out=pref[1:])
            out = (out << _S31) | _reduce(_reduce(pref[ends] - pref[starts]) * ipw[starts])
        return out
    nblocks = -(-len(x) // BLOCK)
    sb, so = starts // BLOCK, starts % BLOCK
    for base in BASES:
        pw, ipw = _powers(base)
        # pref[i] = sum_{k < i} (x_k + 1) B^k mod MOD, block by block (a block's sum is exact in uint64)
        pref = np.zeros(len(x) + 1, dtype=np.uint64)
        carry = 0
        for blk in range(nblocks):
            lo, hi = blk * BLOCK, min(len(x), (blk + 1) * BLOCK)
            c = np.cumsum(x[lo:hi] * pw[:hi - lo])
            scale = np.uint64(pow(base, lo, MOD))
            pref[lo + 1:hi + 1] = _reduce(_reduce(c) * scale + np.uint64(carry))
            carry = int(pref[hi])
        diff = _reduce(pref[ends] + _M - pref[starts])
        # times B^-start: B^-(block * BLOCK) * B^-(start within the block)
        iblk = np.array([pow(base, -(b * BLOCK), MOD) for b in range(nblocks + 1)], dtype=np.uint64)
        inv = _reduce(ipw[so] * iblk[sb])
        out = (out << _S31) | _reduce(diff * inv)
    return out


def hash_windows(data: np.ndarray, row_start: np.ndarray, win_row: np.ndarray, win_start: np.ndarray,
                 win_end: np.ndarray) -> np.ndarray:
    """:func:`hash_ranges` of windows given in rows: row ``j``'s bytes start at ``row_start[j]`` of
    ``data`` (rows laid end to end, ``row_start`` with the end appended), window ``k`` is
    ``[win_start[k], win_end[k])`` of row ``win_row[k]`` (rows ascending). Rows are hashed in
    runs of at most BLOCK bytes (exact prefix sums), a longer row on its own."""
    out = np.zeros(len(win_row), dtype=np.uint64)
    if not len(win_row):
        return out
    rows = np.unique(win_row)
    lo_row = 0
    while lo_row < len(rows):
        first = rows[lo_row]
        limit = row_start[first] + BLOCK
        hi_row = max(lo_row + 1, int(np.searchsorted(row_start[rows + 1], limit, side="right")))
        last = rows[hi_row - 1]
        w0, w1 = np.searchsorted(win_row, [first, last + 1])
        base = row_start[first]
        at = row_start[win_row[w0:w1]] - base
        out[w0:w1] = hash_ranges(data[base:row_start[last + 1]], at + win_start[w0:w1], at + win_end[w0:w1])
        lo_row = hi_row
    return out


def hash_span_windows(data: np.ndarray, row_start: np.ndarray, span_row: np.ndarray, nwin: np.ndarray,
                      win_start: np.ndarray, win_end: np.ndarray) -> np.ndarray:
    """:func:`hash_windows` of windows given per span: span ``j`` lies in row ``span_row[j]`` (rows
    ascending) and owns the next ``nwin[j]`` windows (byte ranges of that row). Equal to
    ``hash_windows(data, row_start, np.repeat(span_row, nwin), win_start, win_end)``.

    Only the bytes some window covers are hashed: each span's windows lie in ``[lowest start,
    highest end)`` of its row, those ranges are laid end to end and the windows shifted into them.
    A window's hash depends on its bytes alone (the prefix difference is scaled by ``B^-start``),
    so moving the bytes does not change it; the prefix sums, the costly part, then run over the
    memorized part of the completions instead of all of them (about half of them in the benchmark
    run, where a memorized passage is 50-200 of 256 tokens)."""
    nwin = np.asarray(nwin, dtype=np.int64)
    if not len(win_start):
        return np.zeros(0, dtype=np.uint64)
    has = np.nonzero(nwin > 0)[0]
    first = (np.cumsum(nwin) - nwin)[has]
    lo = np.minimum.reduceat(win_start, first)
    hi = np.maximum.reduceat(win_end, first)
    seg = hi - lo
    if int(seg.sum()) >= len(data):     # overlapping spans: nothing saved
        return hash_windows(data, row_start, np.repeat(span_row, nwin), win_start, win_end)
    at = row_start[span_row[has]] + lo
    packed = np.concatenate([data[a:a + n] for a, n in zip(at.tolist(), seg.tolist())])
    pstart = np.zeros(len(has) + 1, dtype=np.int64)
    np.cumsum(seg, out=pstart[1:])
    per = nwin[has]
    shift = np.repeat(lo, per)
    return hash_windows(packed, pstart, np.repeat(np.arange(len(has), dtype=np.int64), per),
                        win_start - shift, win_end - shift)


def row_windows(offsets: np.ndarray, row_start: np.ndarray, row_len: np.ndarray, span_row: np.ndarray,
                span_start: np.ndarray, span_end: np.ndarray, W: int):
    """The tokens and windows of spans, for rows (generations) with token offsets.

    ``offsets``: every row's token offsets laid end to end (row ``j``'s are
    ``offsets[row_start[j]:row_start[j + 1]]``, at least one each); ``row_len``: each row's
    completion length in bytes; ``span_row``, ``span_start``, ``span_end``: the spans (byte
    ranges of their row's completion), rows ascending.

    Returns ``(o, ends, a, b, n_windows, win_start, win_end)``: the offsets clipped to
    ``[0, row_len]`` and made non-decreasing per row, each token's end, each span's covered
    token range ``[a, b)`` (``b = a`` when it covers none), its number of windows, and every
    window's byte range in its row (spans in order, windows in order inside a span)."""
    nrows = len(row_len)
    ntok = np.diff(row_start)
    row_of_tok = np.repeat(np.arange(nrows, dtype=np.int64), ntok)
    o = np.clip(offsets.astype(np.int64), 0, row_len[row_of_tok])
    big = np.int64(1) << np.int64(33)          # rows apart: a row's values lie in [j * big, j * big + 2^32]
    key = o + row_of_tok * big
    np.maximum.accumulate(key, out=key)        # per row (each row's keys exceed the previous row's)
    o = key - row_of_tok * big
    ends = np.empty_like(o)
    ends[:-1] = o[1:]
    last = row_start[1:] - 1
    ends[last] = row_len
    ekey = ends + row_of_tok * big
    base = span_row.astype(np.int64) * big
    lim = np.int64(1) << np.int64(32)
    s = np.clip(span_start.astype(np.int64), -1, lim)
    e = np.clip(span_end.astype(np.int64), -1, lim)
    rs = row_start[span_row]
    a = np.searchsorted(key, base + s, side="left") - rs              # first token starting at or after s
    b = np.searchsorted(ekey, base + e, side="right") - rs - 1        # last token ending at or before e
    covers = b - a + 1 >= 1
    b = np.where(covers, b + 1, a)
    nwin = np.maximum(b - a - W + 1, 0)
    total = int(nwin.sum())
    first = np.repeat(np.cumsum(nwin) - nwin, nwin)
    k = np.arange(total, dtype=np.int64) - first + np.repeat(a + rs, nwin)    # global token index of each window
    return o, ends, a, b, nwin, o[k], ends[k + W - 1]


def covered_tokens(span_row: np.ndarray, a: np.ndarray, b: np.ndarray, nrows: int) -> np.ndarray:
    """Per row: the tokens inside some span's range ``[a, b)`` (each counted once)."""
    if not len(a):
        return np.zeros(nrows, dtype=np.int64)
    order = np.lexsort((a, span_row))
    r, sa, sb = span_row[order].astype(np.int64), a[order], b[order]
    big = np.int64(1) << np.int64(33)
    reach = np.maximum.accumulate(sb + r * big) - r * big        # furthest end so far in the row (inclusive)
    prev = np.empty_like(reach)
    prev[0] = 0
    prev[1:] = reach[:-1]
    newrow = np.ones(len(r), dtype=bool)
    newrow[1:] = r[1:] != r[:-1]
    prev[newrow] = 0
    add = np.maximum(sb - np.maximum(sa, prev), 0)
    return np.bincount(r, weights=add, minlength=nrows).astype(np.int64)
