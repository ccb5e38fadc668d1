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
all shingles of a chunk of texts at once, bands grouped with ``numpy.unique``,
candidate pairs checked in bulk. The clusters are the connected components of
"shares a band and agrees on >= threshold x 128 signature values", which is what
inserting the texts one by one into datasketch's index and joining each with
its accepted candidates gives, whatever the order (tests/reports check both
against datasketch itself, and the clusters against exact Jaccard).
"""
from __future__ import annotations

import functools
import re
import zlib

import numpy as np

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


def signatures(texts: list[str], num_perm: int = NUM_PERM, seed: int = SEED) -> np.ndarray:
    """The MinHash signature of every text, ``(len(texts), num_perm)`` uint32."""
    a, b = permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    crc = zlib.crc32
    i = 0
    while i < len(texts):
        hashes: list[int] = []
        counts: list[int] = []
        j = i
        while j < len(texts) and (j == i or len(hashes) < CHUNK_SHINGLES):
            sh = _shingle_list(texts[j])
            hashes.extend(map(crc, sh))
            counts.append(len(sh))
            j += 1
        h = _fmix32(np.array(hashes, dtype=np.uint32))
        starts = np.concatenate([[0], np.cumsum(counts[:-1], dtype=np.int64)])
        buf = np.empty((min(32, num_perm), len(h)), dtype=np.uint32)
        with np.errstate(over="ignore"):
            for lo in range(0, num_perm, 32):      # (32 permutations x shingles) at a time: bounded memory
                hi = min(lo + 32, num_perm)
                ph = buf[:hi - lo]
                np.multiply(a[lo:hi, None], h[None, :], out=ph)
                np.add(ph, b[lo:hi, None], out=ph)
                out[i:j, lo:hi] = np.minimum.reduceat(ph, starts, axis=1).T
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
    """Blocks ``(band, i, j)`` of pairs (arrays, i > j) of texts whose band has the same 64-bit key
    (every pair agreeing on the whole band, and rarely one that does not: the caller compares the
    band itself); a pair colliding in several bands comes once per band. At most about CHUNK_PAIRS
    pairs per block."""
    for k in range(bands):
        band = sig[:, k * rows:(k + 1) * rows].astype(np.uint64)
        key = np.zeros(len(sig), dtype=np.uint64)      # a 64-bit mix of the band: equal bands, equal keys
        with np.errstate(over="ignore"):
            for c in range(rows):
                key = (key ^ band[:, c]) * np.uint64(0x9E3779B97F4A7C15)
                key ^= key >> np.uint64(29)
        _u, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        multi = np.nonzero(cnt > 1)[0]
        if not len(multi):
            continue
        members = np.argsort(inv.ravel(), kind="stable")          # by bucket, then text number
        bounds = np.concatenate([[0], np.cumsum(cnt)])
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
    first text)."""
    n = len(texts)
    parent = list(range(n))
    capped = n > max_texts
    m = min(n, max_texts)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if m > 1:
        sig = signatures(texts[:m])
        bands, rows = lsh_params(threshold, NUM_PERM)
        need = threshold * NUM_PERM
        root = np.arange(m)
        for k, i, j in _bucket_pairs(sig, bands, rows):
            keep = root[i] != root[j]              # pairs already joined need no check (exact: union is idempotent)
            i, j = i[keep], j[keep]
            band = slice(k * rows, (k + 1) * rows)
            same = np.all(sig[i, band] == sig[j, band], axis=1)    # the band itself, not only its 64-bit key
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
