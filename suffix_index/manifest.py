"""The index manifest (``manifest.json``): format, shards, checksums, build parameters.

Format ``trawl-suffix-index`` version 1 (``docs/CONTRACTS.md`` §2)::

    {"format": "trawl-suffix-index", "format_version": 1,
     "bytes": 1234,            # total size of the .bytes files (text + one 0xFF per document)
     "text_bytes": 1200, "documents": 34,
     "shards": [{"name": "shard-00000", "bytes": 1234, "text_bytes": 1200, "documents": 34,
                 "first_doc_id": 0, "pointer_width": 4,
                 "files": {"bytes": {"name": "shard-00000.bytes", "size": 1234, "sha256": "..."},
                           "sa":    {"name": "shard-00000.sa", "size": 4936, "sha256": "..."},
                           "docs":  {"name": "shard-00000.docs.arrow", "size": 999, "sha256": "..."}}}],
     "build": {"corpus": "/abs/CORPUS", "corpus_manifest_sha256": "...", "jobs": 2,
               "tools": {"trawl": "...", "pydivsufsort": "0.0.20", "numpy": "...", "pyarrow": "..."},
               "started_at": "...", "seconds": 12.3}}

:func:`load_manifest` validates everything a reader relies on (format, version,
that every file exists with the recorded size) and raises
:class:`IndexFormatError` naming the file otherwise; checksums are only compared by
``verify`` (reading gigabytes on every open would defeat memory mapping).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from corpora.storage import ManifestFields, read_manifest
from suffix_index.errors import IndexFormatError

INDEX_FORMAT = "trawl-suffix-index"
INDEX_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FILE_KINDS = ("bytes", "sa", "docs")


BLOCK_SIZE = 1 << 20   # the .bytes and .sa files' checksummed blocks


def block_checksums(buf, block: int = BLOCK_SIZE) -> list[int]:
    """CRC-32 of each ``block``-byte block of a buffer (the last one may be shorter)."""
    import zlib

    view = memoryview(buf).cast("B")
    return [zlib.crc32(view[i:i + block]) for i in range(0, len(view), block)]


def shard_base(i: int) -> str:
    return f"shard-{i:05d}"


def manifest_sha256(index_dir: str | os.PathLike) -> str:
    """sha256 of the manifest file's bytes: identifies an index build."""
    return hashlib.sha256((Path(index_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def index_files(index_dir: Path) -> list[tuple[str, str, int]]:
    """``(name, sha256, size)`` of every file the manifest in ``index_dir`` lists (what a store's
    reader downloads and checks: :func:`corpora.stores.fetch_folder`); the manifest checked as
    :func:`load_manifest` does, the files not yet there."""
    m = load_manifest(index_dir, check_files=False)
    return [(s["files"][k]["name"], s["files"][k]["sha256"], int(s["files"][k]["size"]))
            for s in m["shards"] for k in FILE_KINDS]


def local_index(path: str | os.PathLike) -> Path:
    """The index folder to map for ``path``: the path itself, or for a URL (``s3://...``,
    :mod:`corpora.locations`) this node's copy, downloaded once and checked against the manifest's
    sha256s (:func:`corpora.stores.fetch_folder`)."""
    from corpora.locations import is_url

    if not is_url(path):
        return Path(path)
    from corpora.stores import fetch_folder

    return fetch_folder(str(path), kind="index", manifest_name=MANIFEST_NAME, listing=index_files)


def load_manifest(index_dir: str | os.PathLike, check_files: bool = True) -> dict[str, Any]:
    index_dir = Path(index_dir)
    mpath = index_dir / MANIFEST_NAME
    m = read_manifest(index_dir, MANIFEST_NAME, fmt=INDEX_FORMAT, version=INDEX_FORMAT_VERSION, error=IndexFormatError,
                      kind="index", build="trawl index build", upgrade="rebuild it with 'trawl index build'")
    check = ManifestFields(mpath, IndexFormatError)   # each field a reader uses, its type
    for key in ("bytes", "text_bytes", "documents"):
        check.count(m, key, key)
    if "build" in m:
        check.table(m["build"], "build")
    shards = check.listing(m, "shards", "shards")
    for i, s in enumerate(shards):
        check.table(s, f"shards[{i}]")
        for key in ("bytes", "text_bytes", "documents", "first_doc_id"):
            check.count(s, key, f"shards[{i}].{key}")
        if s.get("pointer_width") not in (4, 8) or isinstance(s.get("pointer_width"), bool):
            check._fail(f"shards[{i}].pointer_width", s.get("pointer_width"), "4 or 8")
        files = check.table(s.get("files"), f"shards[{i}].files")
        for kind in FILE_KINDS:
            f = check.table(files.get(kind), f"shards[{i}].files.{kind}")
            check.file_name(f, "name", f"shards[{i}].files.{kind}.name")
            check.count(f, "size", f"shards[{i}].files.{kind}.size")
            check.text(f, "sha256", f"shards[{i}].files.{kind}.sha256")
            if "blocks" in f:   # optional (indexes built before it have none): CRC-32 per block
                key = f"shards[{i}].files.{kind}.blocks"
                blocks = check.table(f["blocks"], key)
                bsize = check.count(blocks, "size", f"{key}.size", minimum=1)
                crcs = check.listing(blocks, "crc32", f"{key}.crc32")
                if len(crcs) != -(-f["size"] // bsize) or not all(
                        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 32 for c in crcs):
                    check._fail(f"{key}.crc32", f"{len(crcs)} entries",
                                f"{-(-f['size'] // bsize)} CRC-32 values, one per block")
        if check_files:
            for kind in FILE_KINDS:
                f = files[kind]
                p = index_dir / f["name"]
                if not p.is_file():
                    raise IndexFormatError(f"{p}: index file missing (shard {s.get('name')})")
                size = p.stat().st_size
                if size != int(f["size"]):
                    raise IndexFormatError(
                        f"{p}: size {size} bytes, the manifest says {f['size']} (truncated or replaced?); "
                        "rebuild the index"
                    )
    return m
