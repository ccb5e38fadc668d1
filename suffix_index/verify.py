"""Check an index on disk: checksums and sampled suffix order.

:func:`verify_index` recomputes every file's sha256 and compares it with the
manifest (skipped by ``--quick``), checks that every pointer of each ``.sa`` is
in range and that the array has a permutation's fingerprint (one chunked pass,
also in quick mode), and that sampled adjacent suffixes are in strictly
increasing order (comparing up to the first difference). It raises
:class:`IndexFormatError` naming the first bad file, or returns a report dict.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from corpora.shards import sha256_file
from suffix_index.errors import IndexFormatError, check_int
from suffix_index.manifest import FILE_KINDS, load_manifest


POINTER_CHUNK = 1 << 22  # pointers checked per vectorised step


def check_pointers(sa: np.ndarray, n: int, name, chunk: int = POINTER_CHUNK) -> None:
    """Every pointer of ``sa`` is in ``[0, n)`` and the array is permutation-shaped.

    One sequential pass over the (memory-mapped) array in chunks: the maximum, the
    sum and the sum of squares (mod 2**64) of the pointers. A permutation of
    ``0..n-1`` has ``max == n - 1`` and the known sums; one damaged entry changes
    both sums, so a single bad pointer is always caught (several could only cancel
    in both sums at once by design, not by accident).
    """
    if len(sa) != n:
        raise IndexFormatError(f"{name}: {len(sa)} pointers for {n} bytes; rebuild the index")
    if n == 0:
        return
    s1 = np.uint64(0)
    s2 = np.uint64(0)
    with np.errstate(over="ignore"):
        for i in range(0, n, chunk):
            c = np.asarray(sa[i : i + chunk]).astype(np.uint64)
            mx = int(c.max())
            if mx >= n:
                j = i + int(np.argmax(c >= n))
                raise IndexFormatError(
                    f"{name}: pointer {mx} at rank {j} out of range (shard has {n} bytes); "
                    "corrupted suffix array, rebuild the index"
                )
            s1 += c.sum(dtype=np.uint64)
            s2 += (c * c).sum(dtype=np.uint64)
    mod = 1 << 64
    want1 = (n * (n - 1) // 2) % mod
    want2 = ((n - 1) * n * (2 * n - 1) // 6) % mod
    if int(s1) != want1 or int(s2) != want2:
        raise IndexFormatError(f"{name}: not a permutation of the shard's positions (corrupted suffix array); "
                               "rebuild the index")


def _suffix_less(text: np.ndarray, a: int, b: int, step: int = 256) -> bool:
    """True iff suffix a < suffix b (bytewise, a suffix that ends first is smaller)."""
    n = len(text)
    off = 0
    while True:
        ca = text[a + off : min(a + off + step, n)]
        cb = text[b + off : min(b + off + step, n)]
        k = min(len(ca), len(cb))
        ne = np.flatnonzero(ca[:k] != cb[:k])
        if ne.size:
            i = int(ne[0])
            return bool(ca[i] < cb[i])
        if len(ca) != len(cb):
            return len(ca) < len(cb)
        if k == 0:
            return False  # same suffix
        off += step


def verify_index(index_dir: str | os.PathLike, samples: int = 10000, checksums: bool = True,
                 progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Verify ``index_dir``; returns ``{"shards", "files_checked", "pairs_checked", "pointers_checked"}``.

    Always (also with ``checksums=False``, ``trawl index verify --quick``): every
    suffix-array pointer is range-checked and the array's permutation fingerprint
    compared (:func:`check_pointers`), and ``samples`` adjacent pairs per shard are
    checked for order.
    """
    from suffix_index.engine import SuffixIndex

    samples = check_int("samples", samples, 0)

    index_dir = Path(index_dir)
    m = load_manifest(index_dir)
    bar = None
    if checksums and progress:
        import sys

        from tqdm import tqdm

        total = sum(int(s["files"][k]["size"]) for s in m["shards"] for k in FILE_KINDS)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify", file=sys.stderr)
    files = 0
    if checksums:
        for s in m["shards"]:
            for kind in FILE_KINDS:
                f = s["files"][kind]
                p = index_dir / f["name"]
                got = sha256_file(p, on_bytes=bar.update if bar else None)
                if got != f["sha256"]:
                    if bar:
                        bar.close()
                    raise IndexFormatError(f"{p}: checksum mismatch (corrupted file); rebuild the index")
                files += 1
    if bar:
        bar.close()
    rng = np.random.default_rng(seed)
    pairs = 0
    pointers = 0
    with SuffixIndex.open(index_dir) as idx:
        for sh in idx.shards:
            n = len(sh.sa)
            sa_name = index_dir / sh.entry["files"]["sa"]["name"]
            check_pointers(sh.sa, len(sh.text), sa_name)
            pointers += n
            # documents: separators where the table says
            starts = sh.doc_starts
            if starts.size and (np.asarray(sh.text[starts - 1]) != 0xFF).any():
                raise IndexFormatError(
                    f"{index_dir / sh.entry['files']['docs']['name']}: document starts do not follow separators"
                )
            if n < 2 or samples == 0:
                continue
            k = min(samples, n - 1)
            ranks = np.unique(rng.integers(0, n - 1, size=k))
            a = np.asarray(sh.sa[ranks], dtype=np.int64)
            b = np.asarray(sh.sa[ranks + 1], dtype=np.int64)
            if (a >= n).any() or (b >= n).any():
                raise IndexFormatError(f"{sa_name}: pointer out of range (corrupted suffix array)")
            # fast path: first bytes decide most pairs
            ta, tb = sh.text[a], sh.text[b]
            bad = ta > tb
            if bad.any():
                raise IndexFormatError(f"{sa_name}: suffixes out of order at rank {int(ranks[np.argmax(bad)])}")
            for r, x, y in zip(ranks[ta == tb].tolist(), a[ta == tb].tolist(), b[ta == tb].tolist()):
                if not _suffix_less(sh.text, x, y):
                    raise IndexFormatError(f"{sa_name}: suffixes out of order at rank {r}")
            pairs += int(ranks.size)
    return {"shards": len(m["shards"]), "files_checked": files, "pairs_checked": pairs, "pointers_checked": pointers}
