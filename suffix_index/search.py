"""Vectorized binary search over a memory-mapped suffix array.

Every function here takes a batch of patterns, each a slice ``G[xs[i]:xs[i]+xl[i]]``
of one ``uint8`` buffer ``G`` (the generations of a batch, concatenated), and
searches them all at once with NumPy: each binary-search step is a handful of
array operations over the whole batch, whatever its size.

The comparison keeps, for each pattern, the longest common prefix (LCP) with the
suffixes at both ends of its current interval and starts comparing at the
smaller of the two (the classic Manber-Myers refinement), and compares in chunks
of growing width (8, 32, 128, ... bytes), so that a pattern that diverges early
costs one small gather per step and one that matches hundreds of bytes costs a
few wide ones.

Byte order is the suffix array's: plain unsigned bytes, a suffix that ends (end of
the shard) sorts before any longer string it is a prefix of.
"""
from __future__ import annotations

import numpy as np

from suffix_index.errors import IndexFormatError

CHUNKS = (8, 32, 128, 512, 2048)
_AR = {w: np.arange(w, dtype=np.int64) for w in CHUNKS}


def checked_pointers(ptr: np.ndarray, n: int, name) -> np.ndarray:
    """``ptr`` as int64, raising :class:`IndexFormatError` naming ``name`` if any is ``>= n``.

    Every pointer the searches read goes through here: a damaged ``.sa`` entry
    must stop the query, never yield wrong (non-maximal, misplaced) results.
    """
    ptr = np.asarray(ptr).astype(np.int64)
    if ptr.size and (int(ptr.max()) >= n or int(ptr.min()) < 0):
        bad = int(ptr[(ptr >= n) | (ptr < 0)][0])
        raise IndexFormatError(
            f"{name or 'suffix array'}: pointer {bad} out of range (shard has {n} bytes); "
            "corrupted suffix array, rebuild the index"
        )
    return ptr


def lcp_compare(text: np.ndarray, G: np.ndarray, pos: np.ndarray, xs: np.ndarray, xl: np.ndarray,
                m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LCP of each pattern with the suffix ``text[pos:]``, given the first ``m`` bytes agree.

    Returns ``(l, less)``: ``l`` (``<= xl``) and, where ``l < xl``, whether the suffix
    is smaller than the pattern at byte ``l`` (true too when the suffix has ended).
    """
    N = len(text)
    P = len(pos)
    l = m.astype(np.int64, copy=True)
    less = np.zeros(P, dtype=bool)
    todo = np.arange(P)
    gmax = len(G) - 1
    ci = 0
    while todo.size:
        W = CHUNKS[min(ci, len(CHUNKS) - 1)]
        ci += 1
        ar = _AR[W]
        base = l[todo]
        idx = base[:, None] + ar  # (T, W) offsets into pattern/suffix
        cpos = pos[todo][:, None] + idx
        cvalid = cpos < N
        np.minimum(cpos, N - 1, out=cpos)
        cb = text[cpos].astype(np.int16)
        cb[~cvalid] = -1
        xlt = xl[todo][:, None]
        gidx = xs[todo][:, None] + idx
        np.minimum(gidx, gmax, out=gidx)
        gb = G[gidx].astype(np.int16)
        gb[idx >= xlt] = -2  # past the pattern: never equal
        ne = cb != gb
        has = ne.any(axis=1)
        first = np.where(has, ne.argmax(axis=1), W)
        l[todo] = base + first
        if has.any():
            rows = np.flatnonzero(has)
            f = first[rows]
            less[todo[rows]] = cb[rows, f] < gb[rows, f]
        todo = todo[~has]
    np.minimum(l, xl, out=l)
    return l, less


def sa_search(text: np.ndarray, sa: np.ndarray, G: np.ndarray, xs: np.ndarray, xl: np.ndarray,
              upper: bool = False, name=None, trace: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary-search each pattern in the suffix array.

    ``upper=False``: the first rank whose suffix is ``>=`` the pattern (a suffix that
    starts with the pattern counts as ``>=``): the start of the pattern's range.
    ``upper=True``: the first rank whose suffix does not start with the pattern and is
    greater: the end of the range. Returns ``(rank, lcp_before, lcp_at)``: the LCP
    of the pattern with the suffixes at ``rank - 1`` and ``rank`` (0 out of range).
    With ``upper=False``, ``max(lcp_before, lcp_at)`` is the length of the longest
    prefix of the pattern that occurs in the shard.

    ``trace`` (a list) receives, per step, ``(ranks, positions, lengths)``: the suffix-array
    entries read and, for each, the text bytes ``[position, position + length)`` the comparison
    depended on. The result is a function of those values only, so a caller that checks the
    blocks holding them knows the answer is the one an undamaged index gives.
    """
    P = len(xs)
    N = len(sa)
    lo = np.full(P, -1, dtype=np.int64)
    hi = np.full(P, N, dtype=np.int64)
    llcp = np.zeros(P, dtype=np.int64)
    rlcp = np.zeros(P, dtype=np.int64)
    if P == 0 or N == 0:
        return hi, llcp, rlcp
    xs = np.asarray(xs, dtype=np.int64)
    xl = np.asarray(xl, dtype=np.int64)
    act = np.arange(P)
    while act.size:
        a_lo = lo[act]
        a_hi = hi[act]
        mid = (a_lo + a_hi) >> 1
        pos = checked_pointers(sa[mid], len(text), name)
        m = np.minimum(llcp[act], rlcp[act])
        l, less = lcp_compare(text, G, pos, xs[act], xl[act], m)
        if trace is not None:
            trace.append((mid, pos, np.minimum(l + 1, xl[act])))
        full = l >= xl[act]
        right = (less & ~full) | (full & upper)
        ri = act[right]
        lo[ri] = mid[right]
        llcp[ri] = l[right]
        li = act[~right]
        hi[li] = mid[~right]
        rlcp[li] = l[~right]
        act = act[(hi[act] - lo[act]) > 1]
    return hi, llcp, rlcp


def sa_range(text: np.ndarray, sa: np.ndarray, G: np.ndarray, xs: np.ndarray, xl: np.ndarray,
             name=None, trace: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` ranks of the suffixes that start with each pattern (count = hi - lo).
    ``trace``: see :func:`sa_search`."""
    lo, _, _ = sa_search(text, sa, G, xs, xl, upper=False, name=name, trace=trace)
    hi, _, _ = sa_search(text, sa, G, xs, xl, upper=True, name=name, trace=trace)
    return lo, hi
