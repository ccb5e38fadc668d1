"""Check an index on disk: checksums and sampled suffix order.

:func:`verify_index` recomputes every file's sha256 and compares it with the
manifest, checks that each ``.sa`` is a permutation-shaped array of in-range
pointers on a sample, and that sampled adjacent suffixes are in strictly
increasing order (comparing up to the first difference). It raises
:class:`IndexFormatError` naming the first bad file, or returns a report dict.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from suffix_index.errors import IndexFormatError
from suffix_index.manifest import FILE_KINDS, load_manifest


def _sha256_path(path: Path, on_bytes: Callable[[int], None] | None = None, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            if on_bytes:
                on_bytes(len(b))
    return h.hexdigest()


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
    """Verify ``index_dir``; returns ``{"shards", "files_checked", "pairs_checked"}``."""
    from suffix_index.engine import SuffixIndex

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
                got = _sha256_path(p, bar.update if bar else None)
                if got != f["sha256"]:
                    if bar:
                        bar.close()
                    raise IndexFormatError(f"{p}: checksum mismatch (corrupted file); rebuild the index")
                files += 1
    if bar:
        bar.close()
    rng = np.random.default_rng(seed)
    pairs = 0
    with SuffixIndex.open(index_dir) as idx:
        for sh in idx.shards:
            n = len(sh.sa)
            sa_name = index_dir / sh.entry["files"]["sa"]["name"]
            if n < 2:
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
            # documents: separators where the table says
            starts = sh.doc_starts
            if starts.size and (np.asarray(sh.text[starts - 1]) != 0xFF).any():
                raise IndexFormatError(
                    f"{index_dir / sh.entry['files']['docs']['name']}: document starts do not follow separators"
                )
    return {"shards": len(m["shards"]), "files_checked": files, "pairs_checked": pairs}
