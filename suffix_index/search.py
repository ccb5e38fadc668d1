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
    ptr = np.asarray(ptr)
    signed = ptr.dtype.kind != "u"   # the .sa files are unsigned: no pointer below 0 to look for
    ptr = ptr.astype(np.int64)
    if ptr.size and (int(ptr.max()) >= n or (signed and int(ptr.min()) < 0)):
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


_THR = np.array([1 << (8 * i) for i in range(1, 8)], dtype=np.uint64)   # a word's highest nonzero byte
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
WORD_CHUNKS = (1, 4, 16, 64, 256)   # 8-byte words compared per row and round (growing)
_WAR = {w: np.arange(0, 8 * w, 8, dtype=np.int64) for w in WORD_CHUNKS}


def word_view(buf: np.ndarray) -> np.ndarray:
    """Every 8-byte window of ``buf`` as one little-endian ``uint64`` (``len(buf) - 7`` of them,
    overlapping: a view with a 1-byte stride, nothing copied)."""
    n = max(0, len(buf) - 7)
    if n == 0:
        return np.zeros(0, dtype="<u8")
    return np.ndarray((n,), dtype="<u8", buffer=buf, offset=0, strides=(1,))


def _masks(rem: np.ndarray) -> np.ndarray:
    """Mask of the first ``rem`` bytes (big-endian order: the high ones) of a word; ``rem`` clipped to 0..8."""
    r = np.clip(rem, 0, 8).astype(np.uint64)
    sh = (np.uint64(8) - r) * np.uint64(8)
    m = np.where(r == 0, np.uint64(0), _ALL << np.minimum(sh, np.uint64(63)))
    return m


def lcp_compare_words(text: np.ndarray, Tw: np.ndarray, G: np.ndarray, Gw: np.ndarray, pos: np.ndarray,
                      xs: np.ndarray, xl: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lcp_compare` 8 bytes at a time: the suffix's and the pattern's next bytes are read as
    big-endian 64-bit words (one gather each) and compared as integers; the first differing byte is
    the highest nonzero byte of their XOR. ``Tw``/``Gw``: :func:`word_view` of ``text``/``G``; ``G``
    must hold 8 bytes after every pattern. Rows whose suffix reaches the last 8 bytes of the text go
    to :func:`lcp_compare` (byte by byte: the suffix's end is a byte smaller than any)."""
    nT = len(Tw)
    gmax = len(Gw) - 1
    P = len(pos)
    l = m.astype(np.int64, copy=True)
    less = np.zeros(P, dtype=bool)
    todo = None   # the rows still comparing; None: all of them (the first round reads no index)
    slow: list[np.ndarray] = []
    ci = 0
    while todo is None or todo.size:
        W = WORD_CHUNKS[min(ci, len(WORD_CHUNKS) - 1)]
        ci += 1
        if todo is None:
            base, tpos, gpos, rem = l, pos + l, xs + l, xl - l
        else:
            base = l[todo]
            tpos, gpos, rem = pos[todo] + base, xs[todo] + base, xl[todo] - base
        near = tpos + 8 * W > nT
        if near.any():
            far = ~near
            slow.append(np.flatnonzero(near) if todo is None else todo[near])
            todo = np.flatnonzero(far) if todo is None else todo[far]
            base, tpos, gpos, rem = base[far], tpos[far], gpos[far], rem[far]
            if not todo.size:
                break
        if W == 1:
            tw = Tw[tpos].byteswap()
            gw = Gw[np.minimum(gpos, gmax, out=gpos)].byteswap()
            d = tw ^ gw
            short = rem < 8
            if short.any():
                d[short] &= _masks(rem[short])
            res = (d != 0) | short
            rows = np.flatnonzero(res)
            j = 0
            dj, twj, gwj = d[rows], tw[rows], gw[rows]
        else:
            off = _WAR[W]
            tw = Tw[tpos[:, None] + off].byteswap()
            gw = Gw[np.minimum(gpos[:, None] + off, gmax)].byteswap()
            remw = rem[:, None] - off
            d = tw ^ gw
            short = remw < 8
            if short.any():
                d[short] &= _masks(remw[short])
            resw = (d != 0) | short
            res = resw.any(axis=1)
            rows = np.flatnonzero(res)
            j = resw[rows].argmax(axis=1)
            dj, twj, gwj = d[rows, j], tw[rows, j], gw[rows, j]
        if rows.size:
            # the first differing byte inside the pattern is the first differing byte of the whole
            # words too (the mask keeps their leading bytes), so the words' order is the bytes' order
            diff = dj != 0
            b = 7 - np.searchsorted(_THR, dj, side="right")
            t = rows if todo is None else todo[rows]
            l[t] = np.where(diff, base[rows] + 8 * j + b, xl[t])
            less[t] = diff & (twj < gwj)
        nr = ~res
        nxt = np.flatnonzero(nr) if todo is None else todo[nr]
        l[nxt] = base[nr] + 8 * W
        todo = nxt
    if slow:
        s = np.concatenate(slow)
        ls, lesss = lcp_compare(text, G, pos[s], xs[s], xl[s], l[s])
        l[s] = ls
        less[s] = lesss
    np.minimum(l, xl, out=l)
    return l, less


def backward_match(text: np.ndarray, G: np.ndarray, pos: np.ndarray, gend: np.ndarray, kmax: np.ndarray) -> np.ndarray:
    """For each row, how many bytes just before ``text[pos]`` equal those just before ``G[gend]``
    (reading backwards), at most ``kmax``. ``G`` must hold at least 8 bytes before every ``gend - kmax``.
    Compares little-endian 64-bit words ending at the two positions: their highest bytes are the
    ones nearest the end, so the matched bytes are the XOR's leading zero bytes. Rows within a
    few words of the text's start are compared byte by byte."""
    P = len(pos)
    out = np.zeros(P, dtype=np.int64)
    if not P:
        return out
    Tw, Gw = word_view(text), word_view(G)
    pos = np.asarray(pos, dtype=np.int64)
    gend = np.asarray(gend, dtype=np.int64)
    kmax = np.asarray(kmax, dtype=np.int64)
    todo = np.flatnonzero(kmax > 0)
    ci = 0
    while todo.size:
        W = WORD_CHUNKS[min(ci, len(WORD_CHUNKS) - 1)]
        ci += 1
        k = out[todo]
        off = _WAR[W] + 8
        tp = pos[todo][:, None] - k[:, None] - off
        low = tp[:, -1] < 0
        if low.any():   # near the text's start: byte by byte (a few rows at most)
            for i in todo[low].tolist():
                p, g, n = int(pos[i]), int(gend[i]), int(out[i])
                while n < kmax[i] and p - n - 1 >= 0 and text[p - n - 1] == G[g - n - 1]:
                    n += 1
                out[i] = min(n, int(kmax[i]))
            todo, k, tp = todo[~low], k[~low], tp[~low]
            if not todo.size:
                break
        gp = gend[todo][:, None] - k[:, None] - off
        d = Tw[tp] ^ Gw[gp]
        nz = d != 0
        has = nz.any(axis=1)
        first = np.where(has, nz.argmax(axis=1), W)
        rows = np.arange(todo.size)
        dj = d[rows, np.minimum(first, W - 1)]
        eq = 7 - np.searchsorted(_THR, dj, side="right")
        got = k + 8 * first + np.where(has, eq, 0)
        out[todo] = np.minimum(got, kmax[todo])
        todo = todo[~has & (got < kmax[todo])]
    return out


class PrefixSample:
    """The first 8 bytes of every ``stride``-th suffix in suffix-array order, as big-endian ``uint64``
    words (sorted, since the suffixes are): one ``np.searchsorted`` of a pattern's first 8 bytes in it
    narrows the pattern's binary search from the whole array to about ``2 * stride`` ranks (more where
    the 8-byte prefix is frequent), so ``log2(N / stride)`` steps of the batched search -- each a
    random memory access per pattern -- become one compiled search over a small, cache-friendly array.

    Derived from the (checked) suffix array when first needed, never stored: it cannot be stale or
    damaged apart from the arrays it comes from, and reading it costs ``N / stride`` gathers (about
    0.1 s per GB of corpus at the default stride). A suffix within 8 bytes of the end reads as padded
    with zero bytes; the order stays non-decreasing, and :func:`sa_search` recomputes the LCP with such
    a suffix exactly when it bounds a pattern.
    """

    def __init__(self, text: np.ndarray, sa: np.ndarray, stride: int = 256, name=None):
        N = len(text)
        self.stride = int(stride)
        self.n = N
        pos = checked_pointers(sa[::self.stride], max(N, 1), name) if len(sa) else np.zeros(0, dtype=np.int64)
        padded = np.zeros(N + 8, dtype=np.uint8) if N < (1 << 16) else None
        if padded is not None:
            padded[:N] = text
            w = word_view(padded)[pos]
        else:
            Tw = word_view(text)
            inside = pos + 8 <= N
            w = np.zeros(pos.size, dtype="<u8")
            w[inside] = Tw[pos[inside]]
            for k in np.flatnonzero(~inside).tolist():   # the last 7 suffixes: at most 7 of them
                tail = bytes(text[int(pos[k]):]) + b"\0" * 8
                w[k] = np.frombuffer(tail[:8], dtype="<u8")[0]
        self.words = w.byteswap()
        self.near = np.flatnonzero(pos + 8 > N)   # samples read as padded (at most 7)
        if self.words.size > 1 and bool((self.words[1:] < self.words[:-1]).any()):
            raise IndexFormatError(f"{name or 'suffix array'}: suffixes out of order (corrupted suffix array); "
                                   "rebuild the index")

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)


def _word_lcp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Common leading bytes of big-endian words ``a != b``."""
    return 7 - np.searchsorted(_THR, a ^ b, side="right")


def sa_search(text: np.ndarray, sa: np.ndarray, G: np.ndarray, xs: np.ndarray, xl: np.ndarray,
              upper: bool = False, name=None, sample: PrefixSample | None = None,
              trace: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary-search each pattern in the suffix array.

    ``upper=False``: the first rank whose suffix is ``>=`` the pattern (a suffix that
    starts with the pattern counts as ``>=``): the start of the pattern's range.
    ``upper=True``: the first rank whose suffix does not start with the pattern and is
    greater: the end of the range. Returns ``(rank, lcp_before, lcp_at)``: the LCP
    of the pattern with the suffixes at ``rank - 1`` and ``rank`` (0 out of range).
    With ``upper=False``, ``max(lcp_before, lcp_at)`` is the length of the longest
    prefix of the pattern that occurs in the shard. ``sample``: the shard's
    :class:`PrefixSample`, to start each search from a few hundred ranks (same results).

    ``trace`` (a list; only without ``sample``, whose derivation reads much of the index) receives,
    per step, ``(ranks, positions, lengths)``: the suffix-array entries read and, for each, the text
    bytes ``[position, position + length)`` the comparison depended on (the word compare reads a
    few bytes more, which cannot change its answer). The result is a function of those values
    only, so a caller that checks the blocks holding them knows it is the undamaged index's.
    """
    hi, llcp, rlcp, _ = _search(text, sa, G, xs, xl, upper, name, sample, trace=trace)
    return hi, llcp, rlcp


def sa_occurs(text: np.ndarray, sa: np.ndarray, G: np.ndarray, xs: np.ndarray, xl: np.ndarray,
              name=None, sample: PrefixSample | None = None) -> np.ndarray:
    """Whether each pattern occurs in the shard: :func:`sa_search` stopped at the first suffix that
    starts with the pattern (a pattern that occurs costs no more steps once one is found)."""
    _, llcp, rlcp, found = _search(text, sa, G, xs, xl, False, name, sample, stop_found=True)
    return found


def _search(text, sa, G, xs, xl, upper, name, sample, stop_found=False, init=None, trace=None):
    """The batched binary search behind :func:`sa_search` (``(rank, lcp_before, lcp_at, found)``):
    ``stop_found`` drops a pattern at the first suffix that starts with it (``found``); ``init``
    ``(rows, lo, llcp)`` gives known lower bounds. Invariant: the suffix at ``lo`` is below the answer,
    the one at ``hi`` at or above it, ``llcp``/``rlcp`` their exact LCPs with the pattern."""
    P = len(xs)
    N = len(sa)
    lo = np.full(P, -1, dtype=np.int64)
    hi = np.full(P, N, dtype=np.int64)
    llcp = np.zeros(P, dtype=np.int64)
    rlcp = np.zeros(P, dtype=np.int64)
    found = np.zeros(P, dtype=bool)
    if P == 0 or N == 0:
        return hi, llcp, rlcp, found
    xs = np.asarray(xs, dtype=np.int64)
    xl = np.asarray(xl, dtype=np.int64)
    if len(G) < int((xs + xl).max()) + 8:   # the word compare reads 8 bytes past a pattern's last one
        G = np.concatenate((np.asarray(G, dtype=np.uint8), np.zeros(8, dtype=np.uint8)))
    Tw, Gw = word_view(text), word_view(G)
    if sample is not None and sample.words.size:
        _start_from_sample(sample, text, sa, G, Gw, xs, xl, lo, hi, llcp, rlcp, name)
    if init is not None:   # known bounds (rows, lo, llcp): a suffix at or below the answer
        rows, ilo, ilcp = init
        lo[rows] = ilo
        llcp[rows] = ilcp
    act = np.flatnonzero(hi - lo > 1)
    while act.size:
        a_lo = lo[act]
        a_hi = hi[act]
        mid = (a_lo + a_hi) >> 1
        pos = checked_pointers(sa[mid], len(text), name)
        m = np.minimum(llcp[act], rlcp[act])
        l, less = lcp_compare_words(text, Tw, G, Gw, pos, xs[act], xl[act], m)
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
        keep = (hi[act] - lo[act]) > 1
        if stop_found:
            found[act[full]] = True
            keep &= ~full
        act = act[keep]
    if stop_found:
        found |= (np.maximum(llcp, rlcp) >= xl)
    return hi, llcp, rlcp, found


def _start_from_sample(sample: PrefixSample, text, sa, G, Gw, xs, xl, lo, hi, llcp, rlcp, name) -> None:
    """Narrow ``[lo, hi]`` of each pattern of 8 bytes or more to the sampled suffixes around its
    first 8 bytes (strictly smaller and strictly greater words: valid bounds for both searches),
    with the exact LCP of the pattern with each bound."""
    N = len(text)
    big = np.flatnonzero(xl >= 8)
    if not big.size:
        return
    key = Gw[xs[big]].byteswap()
    words = sample.words
    order = np.argsort(key)   # sorted keys: NumPy's binary search reuses the previous key's bounds
    ks = key[order]
    i = np.empty(big.size, dtype=np.int64)
    i[order] = np.searchsorted(words, ks, side="left")
    j = i.copy()
    eq = np.flatnonzero(i < words.size)
    eq = eq[words[i[eq]] == key[eq]]   # only a key equal to some sampled word has a longer run
    if eq.size:
        j[eq] = np.searchsorted(words, key[eq], side="right")
    has_lo = i > 0
    has_hi = j < words.size
    il = np.maximum(i - 1, 0)
    jh = np.minimum(j, words.size - 1)
    lo[big] = np.where(has_lo, il * sample.stride, -1)
    hi[big] = np.where(has_hi, jh * sample.stride, N)
    llcp[big] = np.where(has_lo, _word_lcp(key, words[il]), 0)
    rlcp[big] = np.where(has_hi, _word_lcp(key, words[jh]), 0)
    # a bound within 8 bytes of the end read as padded with zeros: its LCP exactly, byte by byte
    if sample.near.size:
        for bound, lcp, ok, k in ((lo, llcp, has_lo, il), (hi, rlcp, has_hi, jh)):
            sel = ok & np.isin(k, sample.near)
            if sel.any():
                r = big[sel]
                p = checked_pointers(sa[bound[r]], N, name)
                lcp[r], _ = lcp_compare(text, G, p, xs[r], xl[r], np.zeros(r.size, dtype=np.int64))

def sa_range(text: np.ndarray, sa: np.ndarray, G: np.ndarray, xs: np.ndarray, xl: np.ndarray,
             name=None, sample: PrefixSample | None = None, trace: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` ranks of the suffixes that start with each pattern (count = hi - lo).
    ``trace``: every suffix-array entry and text range read (see :func:`sa_search`).

    The end of a range is searched from its start (known to start with the pattern), after one
    look at the next rank: most long patterns occur once or a few times."""
    if trace is not None and sample is not None:
        raise ValueError("a traced search reads no prefix sample")
    lo, _, at = sa_search(text, sa, G, xs, xl, upper=False, name=name, sample=sample, trace=trace)
    xs = np.asarray(xs, dtype=np.int64)
    xl = np.asarray(xl, dtype=np.int64)
    hi = lo.copy()
    occ = np.flatnonzero((at >= xl) & (lo < len(sa)))
    if not occ.size:
        return lo, hi
    nxt = lo[occ] + 1
    hi[occ] = nxt
    inside = nxt < len(sa)
    r = occ[inside]
    if r.size:
        if len(G) < int((xs[r] + xl[r]).max()) + 8:
            G = np.concatenate((np.asarray(G, dtype=np.uint8), np.zeros(8, dtype=np.uint8)))
        pos = checked_pointers(sa[nxt[inside]], len(text), name)
        l, _ = lcp_compare_words(text, word_view(text), G, word_view(G), pos, xs[r], xl[r],
                                 np.zeros(r.size, dtype=np.int64))
        if trace is not None:
            trace.append((nxt[inside], pos, np.minimum(l + 1, xl[r])))
        more = r[l >= xl[r]]   # the next suffix starts with the pattern too: search the end
        if more.size:
            h, _, _, _ = _search(text, sa, G, xs[more], xl[more], True, name, sample,
                                 init=(np.arange(more.size), lo[more] + 1, xl[more]), trace=trace)
            hi[more] = h
    return lo, hi
