"""Deterministic benchmark corpus from real text on this machine (helper of bench_index.py).

Walks, in this order, /usr/share/doc, /usr/share/man, /usr/include,
/usr/lib/python3*, the Python installation (sys.base_prefix, e.g. /root/.pyenv),
the site-packages of the running Python, then the rest of /usr/share and
/usr/lib (a folder already walked is not walked again); each directory's files
in sorted order; ``.gz`` files are decompressed; binary files (a NUL byte in the first
8 KiB) and exact duplicates are skipped; stops once ``size`` bytes of text are
collected (the last file is cut at a character boundary so the corpus has
exactly ``size`` bytes or a few less). Same machine, same files => same corpus.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import os
import site
import sys
from pathlib import Path
from typing import Iterator

from corpora import ingest_records
from corpora.readers import Record, decode_bytes


def roots() -> list[Path]:
    out = [Path("/usr/share/doc"), Path("/usr/share/man"), Path("/usr/include")]
    out += [Path(p) for p in sorted(glob.glob("/usr/lib/python3*"))]
    out.append(Path(sys.base_prefix))
    out += [Path(p) for p in site.getsitepackages()]
    out += [Path("/usr/share"), Path("/usr/lib")]
    seen, res = set(), []
    for p in out:
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            res.append(p)
    return res


def iter_files() -> Iterator[Path]:
    done: set[Path] = set()
    for root in roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d).resolve() not in done)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    yield p
        done.add(root.resolve())


def records(size: int) -> Iterator[Record]:
    total = 0
    seen: set[bytes] = set()
    for p in iter_files():
        if total >= size:
            return
        try:
            if p.stat().st_size > 64 << 20:
                continue
            with open(p, "rb") as f:
                head = f.read(8192)
                if b"\0" in head and p.suffix != ".gz":
                    continue
                data = head + f.read()
            if p.suffix == ".gz":
                data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile, ValueError):
            continue
        if not data or b"\0" in data[:8192]:
            continue
        text, _ = decode_bytes(data)
        enc = text.encode("utf-8")
        if len(enc) > size - total:
            enc = enc[: size - total]
            text = enc.decode("utf-8", "ignore")
            enc = text.encode("utf-8")
            if not enc:
                return
        h = hashlib.blake2b(enc, digest_size=16).digest()
        if h in seen:
            continue
        seen.add(h)
        total += len(enc)
        yield Record(source=str(p), text=text)


def build_corpus(out: str | os.PathLike, size: int, progress: bool = True):
    return ingest_records(records(size), out, overwrite=True, progress=progress, keep_duplicates=True,
                          extra_manifest={"inputs": ["bench:" + ",".join(map(str, roots()))], "size": size})
