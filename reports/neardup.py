"""Near-duplicate clustering of memorized texts (MinHash LSH, vectorised).

Several memorized spans are often pieces or variants of one training document
(a licence header with a different year, the same article from two mirrors).
To count *unique memorized documents*, every distinct memorized text is
shingled into word 5-grams (character 5-grams for texts of fewer than five
words), each shingle hashed with CRC-32, into a 128-permutation MinHash, and the
signatures banded as a MinHash LSH index with a Jaccard threshold (0.5 by
default) does; texts whose signatures collide in a band and whose estimated
Jaccard similarity reaches the threshold are joined (union-find). The number of
resulting clusters is ``unique_memorized_documents``. Above ``max_texts``
distinct texts only the first ``max_texts`` are clustered and the rest each
count as their own cluster (reported as ``capped``).

The computation is datasketch's (``MinHash(num_perm=128, seed=1,
hashfunc=zlib.crc32)``, datasketch >= 2.0's default "affine32" scheme: the
CRC-32 premixed with the MurmurHash3 finalizer, then ``a_k h + b_k mod 2^32``
with ``a_k, b_k`` drawn from ``numpy.random.RandomState(1)``; ``MinHashLSH``'s
(bands, rows) minimising the equally weighted false-positive and false-negative
areas), done on arrays instead of one Python object per text: signatures for
all shingles of a chunk of texts at once (the word 5-grams of ASCII texts found
on arrays, the CRC-32 of every shingle table-driven on arrays: zlib's values),
bands grouped with ``numpy.unique``, candidate pairs checked in bulk. The clusters are the connected components of
"shares a band and agrees on >= threshold x 128 signature values", which is what
inserting the texts one by one into datasketch's index and joining each with
its accepted candidates gives, whatever the order (tests/reports check both
against datasketch itself, and the clusters against exact Jaccard).
"""
from __future__ import annotations

import functools
import re

import numpy as np

from reports.inputs import ASCII_LOWER, words_at

NUM_PERM = 128
SEED = 1
SHINGLE = "word 5-grams (character 5-grams below 5 words), lower-cased"
CHUNK_SHINGLES = 65_536          # shingles per signature block (x 128 x 4 bytes: 32 MB)
CHUNK_PAIRS = 131_072            # candidate pairs compared per block (x 128 x 2 x 4 bytes)
_WORD = re.compile(r"\w+", re.UNICODE)
_WORD_BYTES = re.compile(rb"\w+")
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


def _shingles(text: str) -> set[bytes]:
    """The text's shingles (a set)."""
    return set(_shingle_list(text))


def _shingle_list(text: str) -> list[bytes]:
    """The text's shingles, repeats allowed (a MinHash is the same over a list or its set)."""
    if text.isascii():              # the same words and bytes, found on bytes (\w is [A-Za-z0-9_] in ASCII)
        words = _WORD_BYTES.findall(text.lower().encode("ascii"))
        if len(words) >= 5:
            return [b" ".join(g) for g in zip(words, words[1:], words[2:], words[3:], words[4:])]
    low = text.lower()
    words = _WORD.findall(low)
    if len(words) >= 5:
        return [" ".join(g).encode("utf-8") for g in zip(words, words[1:], words[2:], words[3:], words[4:])]
    if len(low) < 5:
        return [low.encode("utf-8", "replace")] if low else [b""]
    return [low[i:i + 5].encode("utf-8", "replace") for i in range(len(low) - 4)]


@functools.lru_cache(maxsize=4)
def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the affine permutations, uint32 (a odd), as datasketch >= 2.0 draws them."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = (np.uint32(x) for x in _FMIX32)
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


@functools.lru_cache(maxsize=1)
def _crc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CRC-32 (zlib's reflected polynomial 0xEDB88320) as lookup tables: one byte, two bytes, and
    four bytes split in a low and a high half (the register update is linear over GF(2), so four
    bytes of register ``x`` step to ``LO[x & 0xFFFF] ^ HI[x >> 16]``)."""
    r = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        r = np.where(r & 1, (r >> np.uint32(1)) ^ np.uint32(0xEDB88320), r >> np.uint32(1)).astype(np.uint32)
    t1 = r

    def zero_bytes(x: np.ndarray, k: int) -> np.ndarray:     # k steps of a zero byte
        for _ in range(k):
            x = t1[x & np.uint32(0xFF)] ^ (x >> np.uint32(8))
        return x

    x = np.arange(65536, dtype=np.uint32)
    return t1, zero_bytes(x, 2), zero_bytes(x, 4), zero_bytes(x << np.uint32(16), 4)


def crc32_many(buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``zlib.crc32(buf[s:s + l])`` for every (start, length), uint32, on arrays: the rows sorted by
    length, four bytes of every row still running per step (table-driven), then a two-byte and a
    one-byte step for the rows whose length is not a multiple of four."""
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    t1, t2, lo, hi = _crc_tables()
    padded = bytes(buf) + b"\0\0\0\0"
    b8 = np.frombuffer(padded, dtype=np.uint8)
    # the little-endian 32-bit word at every byte offset, copied once into an aligned array: gathers
    # from the unaligned view take NumPy's slow element-by-element path at every step below (the
    # buffer is a chunk's shingles, so the copy is small and sequential)
    w32 = np.ascontiguousarray(words_at(padded, 4))
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.max()) < 1 << 15:    # a stable sort of int16 is a radix sort
        order = np.argsort((-lengths).astype(np.int16), kind="stable")
    else:
        order = np.argsort(-lengths, kind="stable")
    s = np.asarray(starts, dtype=np.int64)[order]
    ln = lengths[order]
    words = ln >> 2
    reg = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    m16, s16 = np.uint32(0xFFFF), np.uint32(16)
    kmax = int(words[0])
    # rows with more than k whole words: a prefix of the rows sorted by length (descending)
    active = np.searchsorted(-words, -np.arange(kmax), side="left")
    for k in range(kmax):
        a = int(active[k])
        x = reg[:a] ^ w32.take(s[:a] + 4 * k)       # take: faster than [] on these gathers
        y = lo.take(x & m16)
        y ^= hi.take(x >> s16)
        reg[:a] = y
    tail = s + 4 * words
    rem = ln & 3
    two = np.flatnonzero(rem >= 2)
    if len(two):
        x = reg[two] ^ (w32.take(tail[two]) & m16)
        reg[two] = t2.take(x & m16) ^ (x >> s16)
        tail[two] += 2
    one = np.flatnonzero(rem & 1)
    if len(one):
        x = reg[one] ^ b8.take(tail[one]).astype(np.uint32)
        reg[one] = t1.take(x & np.uint32(0xFF)) ^ (x >> np.uint32(8))
    out = np.empty(n, dtype=np.uint32)
    out[order] = reg ^ np.uint32(0xFFFFFFFF)
    return out


_WORD_LUT = np.zeros(256, dtype=bool)           # \w of a bytes pattern: [A-Za-z0-9_]
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_":
    _WORD_LUT[_c] = True


# a byte of ASCII text as it stands in the words joined by single spaces: a word byte lower-cased,
# any other byte a space (the one byte kept after each word)
_WORD_BYTE = bytes(int(_WORD_LUT[c]) for c in range(256))       # 1 for a word byte (a bytes.translate table)
_JOINED = bytes(ASCII_LOWER[c] if _WORD_LUT[c] else 32 for c in range(256))


def _ascii_shingles(texts: list[str]):
    """Word 5-grams of ASCII texts on arrays, exactly :func:`_shingle_list`'s for texts of >= 5
    words: the words (lower-cased ``\\w+`` runs) of all texts laid out once, each followed by one
    space, and each shingle a (start, length) in that buffer. Returns (buffer, starts, lengths,
    shingles per text, mask of the texts handled: those of >= 5 words)."""
    lens = np.fromiter(map(len, texts), np.int64, len(texts))
    text = "\0".join(["", *texts, ""]).encode("ascii")   # \0 is no word byte: every word starts and ends inside
    tstart = np.cumsum(lens + 1) - lens                 # text i at 1 + (its predecessors and their NULs)
    w = np.frombuffer(text.translate(_WORD_BYTE), dtype=bool)
    bounds = np.flatnonzero(w[1:] != w[:-1]) + 1        # word starts and ends in the raw text, alternating
    ws, we = bounds[0::2], bounds[1::2]
    wl = we - ws
    first = np.searchsorted(ws, tstart)                 # each text's first word, and its count
    nw = np.searchsorted(ws, tstart + lens) - first
    off = np.cumsum(wl + 1) - wl - 1                    # word k at off[k] in the words joined by spaces
    # the word bytes and the byte after each word, in order: that byte becomes the joining space
    keep = w.copy()
    keep[we] = True
    buf = np.frombuffer(text, dtype=np.uint8)[keep].tobytes().translate(_JOINED)
    ok = nw >= 5
    per = np.where(ok, nw - 4, 0)
    k = np.arange(int(per.sum()), dtype=np.int64) + np.repeat(first - (np.cumsum(per) - per), per)
    st = off.take(k)
    return buf, st, (off + wl).take(k + 4) - st, per[ok], ok


def signatures(texts: list[str], num_perm: int = NUM_PERM, seed: int = SEED) -> np.ndarray:
    """The MinHash signature of every text, ``(len(texts), num_perm)`` uint32. The shingles of
    ASCII texts of >= 5 words are found on arrays (:func:`_ascii_shingles`), the others' by
    :func:`_shingle_list`, and all shingles CRC-32-hashed on arrays (:func:`crc32_many`: zlib's
    values)."""
    a, b = permutations(num_perm, seed)
    n = len(texts)
    out = np.empty((n, num_perm), dtype=np.uint32)
    is_ascii = np.fromiter(map(str.isascii, texts), bool, n)
    upto = np.concatenate([[0], np.cumsum(np.fromiter(map(len, texts), np.int64, n))])
    i = 0
    while i < n:
        # texts i..j-1: up to the first whose characters before it reach 2 CHUNK_SHINGLES (shingles <= characters)
        j = min(n, max(i + 1, int(np.searchsorted(upto, upto[i] + 2 * CHUNK_SHINGLES, side="left"))))
        rows = np.arange(i, j)
        asc_rows = rows[is_ascii[i:j]].tolist()
        asc = [texts[r] for r in asc_rows]
        slow_rows = rows[~is_ascii[i:j]].tolist()
        groups = []
        if asc:
            buf, st, ln, per, ok = _ascii_shingles(asc)
            rows = np.asarray(asc_rows, dtype=np.int64)
            groups.append((rows[ok], crc32_many(buf, st, ln), per))
            slow_rows += rows[~ok].tolist()
        if slow_rows:
            sh = [_shingle_list(texts[r]) for r in slow_rows]
            flat = [s for x in sh for s in x]
            ln = np.fromiter(map(len, flat), np.int64, len(flat))
            groups.append((np.asarray(slow_rows, dtype=np.int64), crc32_many(b"".join(flat), np.cumsum(ln) - ln, ln),
                           np.fromiter(map(len, sh), np.int64, len(sh))))
        for rows, crcs, counts in groups:
            if not len(rows):
                continue
            h = _fmix32(crcs)
            starts = np.cumsum(counts) - counts
            buf = np.empty((min(32, num_perm), len(h)), dtype=np.uint32)
            with np.errstate(over="ignore"):
                for lo in range(0, num_perm, 32):      # (32 permutations x shingles) at a time: bounded memory
                    hi = min(lo + 32, num_perm)
                    ph = buf[:hi - lo]
                    np.multiply(a[lo:hi, None], h[None, :], out=ph)
                    np.add(ph, b[lo:hi, None], out=ph)
                    out[rows, lo:hi] = np.minimum.reduceat(ph, starts, axis=1).T
        i = j
    return out


@functools.lru_cache(maxsize=16)
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) minimising the false-positive area below the threshold plus the false-negative
    area above it (weights 0.5 each), as datasketch's ``MinHashLSH`` chooses them. The integrands
    are polynomials of degree <= num_perm, so Gauss-Legendre quadrature with num_perm nodes is exact
    (up to rounding)."""
    x, w = np.polynomial.legendre.leggauss(num_perm)
    best, opt = float("inf"), (0, 0)

    def area(lo: float, hi: float, f) -> float:
        s = (hi - lo) / 2 * x + (hi + lo) / 2
        return float((hi - lo) / 2 * np.dot(w, f(s)))

    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = area(0.0, threshold, lambda s: 1 - (1 - s ** float(rows)) ** float(bands))
            fn = area(threshold, 1.0, lambda s: (1 - s ** float(rows)) ** float(bands))
            err = 0.5 * fp + 0.5 * fn
            if err < best:
                best, opt = err, (bands, rows)
    return opt


def _bucket_pairs(sig: np.ndarray, bands: int, rows: int):
    """Blocks ``(band, i, j)`` of pairs (arrays, i > j) of texts whose band has the same 32-bit key
    (every pair agreeing on the whole band, and rarely one that does not: the caller compares the
    band itself); a pair colliding in several bands comes once per band. At most about CHUNK_PAIRS
    pairs per block. Texts are numbered below 2^32."""
    for k in range(bands):
        band = np.ascontiguousarray(sig[:, k * rows:(k + 1) * rows])    # one pass over the rows, not one per column
        key = np.zeros(len(sig), dtype=np.uint64)      # a 64-bit mix of the band: equal bands, equal keys
        with np.errstate(over="ignore"):
            for c in range(rows):
                key ^= band[:, c]
                key *= np.uint64(0x9E3779B97F4A7C15)
                key ^= key >> np.uint64(29)
        # the high 32 bits of the key above the text number: one sort orders the texts by bucket,
        # then text number; the texts whose key occurs twice or more are the ones kept
        packed = np.sort((key >> np.uint64(32) << np.uint64(32)) | np.arange(len(key), dtype=np.uint64))
        sk = packed >> np.uint64(32)
        twice = np.zeros(len(key) + 1, dtype=bool)
        twice[1:-1] = sk[1:] == sk[:-1]
        twice = twice[1:] | twice[:-1]
        if not twice.any():
            continue
        members = (packed[twice] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        sk = sk[twice]
        bounds = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1], [True]]))
        cnt = np.diff(bounds)
        multi = np.arange(len(cnt))                 # every bucket left holds >= 2 texts
        # every pair (members[r], members[q]), q < r, of each bucket of >= 2 texts; a bucket of
        # more than CHUNK_PAIRS pairs is cut into runs of rows of its triangle
        size = cnt[multi]
        npairs = size * (size - 1) // 2
        small = multi[npairs <= CHUNK_PAIRS]
        if len(small):
            yield from _pairs_of_buckets(k, members, bounds[small], cnt[small])
        for bucket in multi[npairs > CHUNK_PAIRS].tolist():
            mem = members[bounds[bucket]:bounds[bucket + 1]]
            step = max(1, CHUNK_PAIRS // len(mem))
            for r0 in range(1, len(mem), step):                   # rows r of the triangle: pairs (mem[r], mem[:r])
                r = np.arange(r0, min(r0 + step, len(mem)))
                hi = np.repeat(r, r)
                lo = np.arange(len(hi)) - np.repeat(np.cumsum(r) - r, r)
                yield k, mem[hi], mem[lo]


def _pairs_of_buckets(k: int, members: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
    """Blocks ``(band, i, j)`` of all pairs inside the given buckets (``members[start:start + size]``
    each), about CHUNK_PAIRS pairs per block, on arrays."""
    npairs = sizes * (sizes - 1) // 2
    edges = np.concatenate([[0], np.cumsum(npairs)])
    b0 = 0
    while b0 < len(sizes):
        b1 = max(b0 + 1, int(np.searchsorted(edges, edges[b0] + CHUNK_PAIRS, side="right")) - 1)
        st, sz = starts[b0:b1], sizes[b0:b1]
        # rows r = 1 .. size-1 of each bucket, r pairs each
        nrow = sz - 1
        row_bucket = np.repeat(np.arange(len(sz)), nrow)
        r = np.arange(int(nrow.sum())) - np.repeat(np.cumsum(nrow) - nrow, nrow) + 1
        hi = np.repeat(r, r)
        lo = np.arange(len(hi)) - np.repeat(np.cumsum(r) - r, r)
        base = np.repeat(st[row_bucket], r)
        yield k, members[base + hi], members[base + lo]
        b0 = b1


def _roots(parent: list[int]) -> np.ndarray:
    """The root of every element of a union-find forest (pointer jumping on arrays)."""
    par = np.array(parent, dtype=np.int64)
    while True:
        nxt = par[par]
        if np.array_equal(nxt, par):
            return par
        par = nxt


def cluster_texts(texts: list[str], threshold: float = 0.5, max_texts: int = 200_000) -> dict:
    """Cluster ``texts`` (distinct strings) into near-duplicate groups.

    Returns ``{"clusters": int, "labels": list[int], "num_perm", "shingle", "summary"}``;
    ``labels[i]`` is the cluster of ``texts[i]`` (the index of its representative: the cluster's
    first text). The signatures of the first ``max_texts`` texts, then :func:`cluster_signatures`."""
    m = min(len(texts), max(int(max_texts), 0))
    sig = signatures(texts[:m]) if m > 1 else np.zeros((m, NUM_PERM), dtype=np.uint32)
    return cluster_signatures(sig, len(texts), threshold)


def cluster_signatures(sig: np.ndarray, n: int, threshold: float = 0.5) -> dict:
    """:func:`cluster_texts` of ``n`` texts from the signatures of the first ``len(sig)`` of them
    (:func:`signatures`, in the texts' order: those clustered; the others, when ``n > len(sig)``,
    each their own cluster, ``capped``)."""
    m = len(sig)
    if m > n:
        raise ValueError(f"{m} signatures for {n} texts")
    parent = list(range(n))
    capped = n > m

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if m > 1:
        bands, rows = lsh_params(threshold, NUM_PERM)
        need = threshold * NUM_PERM
        root = np.arange(m)
        for k, i, j in _bucket_pairs(sig, bands, rows):
            keep = root[i] != root[j]              # pairs already joined need no check (exact: union is idempotent)
            i, j = i[keep], j[keep]
            band = slice(k * rows, (k + 1) * rows)
            same = np.all(sig[i, band] == sig[j, band], axis=1)    # the band itself, not only its key
            i, j = i[same], j[same]
            ok = np.count_nonzero(sig[i] == sig[j], axis=1) >= need
            joined = False
            for a_, b_ in zip(i[ok].tolist(), j[ok].tolist()):
                ra, rb = find(a_), find(b_)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
                    joined = True
            if joined:
                root = _roots(parent[:m])
    labels = [find(i) for i in range(n)]
    clusters = len(set(labels))
    sizes = np.bincount(np.array(labels, dtype=np.int64), minlength=max(n, 1)) if n else np.zeros(0)
    summary = {
        "distinct_texts": n,
        "clusters": clusters,
        "largest_cluster": int(sizes.max()) if n else 0,
        "clusters_with_several_texts": int((sizes > 1).sum()) if n else 0,
        "threshold": threshold,
        "num_perm": NUM_PERM,
        "shingle": SHINGLE,
        "capped": capped,
        "clustered_texts": m,
    }
    return {"clusters": clusters, "labels": labels, "num_perm": NUM_PERM, "shingle": SHINGLE, "summary": summary}
