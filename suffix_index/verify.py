"""Check an index on disk: checksums and the order of every suffix.

:func:`verify_index` recomputes every file's sha256 and compares it with the
manifest (skipped by ``--quick``), checks that every pointer of each ``.sa`` is
in range and that the array has a permutation's fingerprint (one chunked pass),
and that every adjacent pair of suffixes is in strictly increasing order
(:func:`check_order`, linear time, also in quick mode). It raises
:class:`IndexFormatError` naming the first bad file, or returns a report dict.
"""
from __future__ import annotations

import os
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


def check_order(text: np.ndarray, sa: np.ndarray, name, chunk: int = POINTER_CHUNK) -> int:
    """Every adjacent pair of ``sa`` in strictly increasing suffix order, in linear time; returns
    the pairs checked.

    The criterion of Burkhardt and Kärkkäinen (2003): a permutation ``SA`` of the positions is
    the suffix array of ``T`` iff for every rank ``i``, with ``x = SA[i]``, ``y = SA[i + 1]`` and
    ``ISA`` the inverse permutation (``ISA[n] = -1``: the empty suffix is the smallest),
    ``T[x] < T[y]``, or ``T[x] == T[y]`` and ``ISA[x + 1] < ISA[y + 1]``. So two swapped pointers,
    or any other misordering, are caught wherever they are, and repetitive text costs no more than
    any other (comparing suffixes byte by byte took quadratic time on a repeated document). Cost:
    one pass to build ``ISA`` (4 bytes per corpus byte while a shard is under 2 GiB) and one pass
    of gathers; also a true permutation check (every position has a rank).
    """
    n = len(sa)
    if n < 2:
        return 0
    isa = np.full(n + 1, -2, dtype=np.int32 if n < (1 << 31) - 1 else np.int64)
    isa[n] = -1
    for i in range(0, n, chunk):
        isa[np.asarray(sa[i:i + chunk])] = np.arange(i, min(i + chunk, n), dtype=isa.dtype)
    missing = np.flatnonzero(isa[:n] == -2)
    if missing.size:
        raise IndexFormatError(f"{name}: position {int(missing[0])} has no rank: not a permutation of the shard's "
                               "positions (corrupted suffix array); rebuild the index")
    for i in range(0, n - 1, chunk):
        j = min(i + chunk, n - 1)
        a = np.asarray(sa[i:j], dtype=np.int64)
        b = np.asarray(sa[i + 1:j + 1], dtype=np.int64)
        ta, tb = text[a], text[b]
        bad = (ta > tb) | ((ta == tb) & (isa[a + 1] >= isa[b + 1]))
        if bad.any():
            raise IndexFormatError(f"{name}: suffixes out of order at rank {i + int(np.argmax(bad))} (corrupted "
                                   "suffix array); rebuild the index")
    return n - 1


def verify_index(index_dir: str | os.PathLike, samples: int = 10000, checksums: bool = True,
                 progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Verify ``index_dir``; returns ``{"shards", "files_checked", "pairs_checked", "pointers_checked"}``.

    Always (also with ``checksums=False``, ``trawl index verify --quick``): every
    suffix-array pointer is range-checked and the array's permutation fingerprint
    compared (:func:`check_pointers`), and every adjacent pair is checked for order
    (:func:`check_order`) unless ``samples`` is 0. ``samples`` is otherwise no longer a count: the
    order check is complete (it was a sample of pairs, which let two swapped pointers pass).
    """
    from suffix_index.engine import SuffixIndex

    samples = check_int("samples", samples, 0)

    from suffix_index.manifest import local_index

    index_dir = local_index(index_dir)   # a URL: this node's copy, its checksums compared as it came
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
            if samples:
                pairs += check_order(sh.text, sh.sa, sa_name)
    return {"shards": len(m["shards"]), "files_checked": files, "pairs_checked": pairs, "pointers_checked": pointers}
