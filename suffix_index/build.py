"""Build a byte-level suffix-array index from a corpus folder.

One index shard per corpus shard (``docs/CONTRACTS.md`` §2):

* ``shard-NNNNN.bytes``: for each document, the byte ``0xFF`` then its UTF-8 text.
  ``0xFF`` never occurs in UTF-8, so no match can run across two documents;
* ``shard-NNNNN.sa``: the suffix array of the ``.bytes`` file, built by
  libdivsufsort through pydivsufsort, stored little-endian as ``uint32`` while the
  shard is under 2 GiB (``uint64`` above);
* ``shard-NNNNN.docs.arrow``: the document table (doc_id, start, length, source,
  ext_id, metadata), ``start`` being the offset of the document's first text byte
  in ``.bytes``.

Guarantees:

* **atomic**: everything is written under ``INDEX.tmp-<pid>`` and renamed to
  ``INDEX`` when complete (manifest last); a failed or interrupted build leaves no
  ``INDEX`` (an existing one is only replaced with ``overwrite=True``). The
  manifest and document tables are fsynced; the big ``.bytes``/``.sa`` files only
  with ``fsync=True`` (``--fsync``), since flushing them costs the disk's write
  time for 5 bytes per corpus byte; their checksums let ``verify`` detect damage
  after a power failure;
* **memory**: a shard of ``n`` bytes needs about ``5n`` bytes of RAM (the bytes and
  the 32-bit suffix array, nothing else of that size): the text is streamed from
  the Arrow shard a record batch at a time, the suffix array is written straight
  from the buffer libdivsufsort filled, and checksums are computed from memory;
* **parallel**: with ``jobs > 1`` shards are built in separate processes (each
  needing its own ``5n``);
* **deterministic**: the same corpus gives byte-identical ``.bytes``/``.sa``/docs files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from corpora.storage import (check_output_dir, clean_stale_temps, commit_output_dir, utcnow, write_json_atomic,
                             writing)
from suffix_index.errors import IndexFormatError
from suffix_index.manifest import (
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    MANIFEST_NAME,
    BLOCK_SIZE,
    block_checksums,
    load_manifest,
    shard_base,
)

SEPARATOR = 0xFF
MAX_32BIT_BYTES = (1 << 31) - 1  # libdivsufsort's 32-bit entry point takes n <= INT32_MAX

DOCS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("ext_id", pa.string()),
        pa.field("metadata", pa.string()),
    ]
)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("trawl", "pydivsufsort", "numpy", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _sha256_into(buf: np.ndarray, out: dict, key: str) -> None:
    out[key] = hashlib.sha256(memoryview(buf).cast("B")).hexdigest()
    out[f"{key}_blocks"] = block_checksums(buf)


def _write_array(path: Path, arr: np.ndarray, fsync: bool) -> None:
    with writing(path), open(path, "wb") as f:   # a full disk: one line naming the file
        arr.tofile(f)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


class _ShardHash:
    """sha256 of a corpus shard computed in a thread while Arrow reads the same file.

    The file is read anyway (sequential reads; the second reader hits the page
    cache, and hashlib releases the GIL), so the check costs no extra disk pass.
    """

    def __init__(self, path: Path, expected: str | None):
        self.path = path
        self.expected = expected
        self.got: str | None = None
        self.error: OSError | None = None
        self._t = None
        if expected:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()

    def _run(self) -> None:
        from corpora.shards import sha256_file

        try:
            self.got = sha256_file(self.path, chunk=4 << 20)
        except OSError as exc:
            self.error = exc

    def check(self) -> None:
        """Raise :class:`corpora.CorpusError` if the file's sha256 is not the recorded one."""
        from corpora import CorpusError

        if self._t is None:
            return
        self._t.join()
        self._t = None
        if self.error is not None:
            raise CorpusError(f"{self.path}: cannot read: {self.error.strerror or self.error}")
        if self.got != self.expected:
            raise CorpusError(f"{self.path}: checksum mismatch (corpus.json says {self.expected}, file has "
                              f"{self.got}); the shard is damaged, re-ingest the corpus")


def _read_corpus_shard(path: Path, n_docs: int, text_bytes: int,
                       sha256: str | None = None) -> tuple[np.ndarray, pa.Table]:
    """Stream an Arrow corpus shard into ``0xFF doc 0xFF doc ...`` bytes + the docs table.

    With ``sha256`` (the corpus.json entry's), the file is hashed while it is read
    and a mismatch raises :class:`corpora.CorpusError` (checked first, so a damaged
    shard is reported as such even when Arrow cannot parse it).
    """
    hashing = _ShardHash(path, sha256)
    try:
        buf, table = _read_corpus_shard_body(path, n_docs, text_bytes)
    except Exception:
        hashing.check()
        raise
    hashing.check()
    return buf, table


def _read_corpus_shard_body(path: Path, n_docs: int, text_bytes: int) -> tuple[np.ndarray, pa.Table]:
    from corpora import CorpusError

    n = text_bytes + n_docs
    buf = np.empty(n, dtype=np.uint8)
    pos = 0
    doc_batches = []
    try:
        src = pa.OSFile(str(path), "rb")  # read, not mmap: keeps the shard out of our RSS
        reader = pa.ipc.open_file(src)
        for bi in range(reader.num_record_batches):
            batch = reader.get_batch(bi)
            k = batch.num_rows
            if k == 0:
                continue
            text = batch.column("text")
            if text.type != pa.large_string():
                text = text.cast(pa.large_string())
            offs = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + k + 1]
            data = np.frombuffer(text.buffers()[2], dtype=np.uint8) if text.buffers()[2] is not None else np.empty(0, np.uint8)
            o0, o1 = int(offs[0]), int(offs[-1])
            size = o1 - o0 + k
            if pos + size > n:
                raise CorpusError(f"{path}: holds more text than its corpus.json entry says; re-ingest the corpus")
            chunk = np.insert(data[o0:o1], offs[:-1] - o0, SEPARATOR)
            buf[pos : pos + size] = chunk
            del chunk
            lengths = np.diff(offs)
            starts = pos + (offs[:-1] - o0) + np.arange(1, k + 1, dtype=np.int64)
            # take() copies the small columns: a slice would keep the whole batch (text included) alive
            every = pa.array(np.arange(k))
            doc_batches.append(
                pa.record_batch(
                    [batch.column("doc_id").take(every), pa.array(starts), pa.array(lengths),
                     batch.column("source").take(every), batch.column("ext_id").take(every),
                     batch.column("metadata").take(every)],
                    schema=DOCS_SCHEMA,
                )
            )
            pos += size
            del batch, text, data, offs
        src.close()
        pa.default_memory_pool().release_unused()
    except pa.ArrowException as exc:
        raise CorpusError(f"{path}: corrupt corpus shard: {exc}") from None
    except KeyError as exc:
        raise CorpusError(f"{path}: corpus shard lacks column {exc}") from None
    if pos != n:
        raise CorpusError(f"{path}: holds {pos} bytes, its corpus.json entry says {n}; re-ingest the corpus")
    table = pa.Table.from_batches(doc_batches, schema=DOCS_SCHEMA)
    try:  # one chunk, so that readers get zero-copy NumPy views of start/doc_id/length
        table = table.combine_chunks()
    except pa.ArrowInvalid:  # over 2 GiB of source/metadata strings: stay chunked (readers then copy)
        pass
    return buf, table


def suffix_array(buf: np.ndarray) -> np.ndarray:
    """Suffix array of ``buf`` (uint8) via pydivsufsort, as uint32 (or uint64 past 2 GiB).

    pydivsufsort fills a buffer of its own that NumPy wraps without a copy; the
    result is reinterpreted (not converted) as unsigned.
    """
    from pydivsufsort import divsufsort

    if len(buf) == 0:
        return np.empty(0, dtype=np.uint32)
    if len(buf) <= MAX_32BIT_BYTES:
        sa = divsufsort(buf)
        return sa.view(np.uint32)
    sa = divsufsort(buf, force64=True)
    return sa.view(np.uint64)


def build_shard(corpus_shard: str, out_dir: str, index: int, n_docs: int, text_bytes: int,
                fsync: bool = False, sha256: str | None = None) -> dict[str, Any]:
    """Build one index shard (runs in a worker process when jobs > 1); returns its manifest entry.

    ``sha256``: the corpus shard's checksum from corpus.json, verified while reading.
    """
    out = Path(out_dir)
    base = shard_base(index)
    t0 = time.perf_counter()
    buf, docs = _read_corpus_shard(Path(corpus_shard), n_docs, text_bytes, sha256)
    t_read = time.perf_counter() - t0
    names = {"bytes": f"{base}.bytes", "sa": f"{base}.sa", "docs": f"{base}.docs.arrow"}
    sums: dict[str, str] = {}
    # hash + write the text while libdivsufsort (which releases the GIL) sorts
    failed: list[BaseException] = []

    def write_text():
        try:
            _write_array(out / names["bytes"], buf, fsync)
            _sha256_into(buf, sums, "bytes")
        except BaseException as exc:   # raised in the caller below (a full disk: its one-line WriteError)
            failed.append(exc)

    side = threading.Thread(target=write_text)
    side.start()
    t1 = time.perf_counter()
    sa = suffix_array(buf)
    t_sort = time.perf_counter() - t1
    side.join()
    if failed:
        raise failed[0]
    # write and checksum the suffix array at the same time (both release the GIL)
    hasher = threading.Thread(target=_sha256_into, args=(sa, sums, "sa"))
    hasher.start()
    _write_array(out / names["sa"], sa, fsync)
    hasher.join()
    width = sa.dtype.itemsize
    del sa
    with writing(out / names["docs"]):
        with pa.OSFile(str(out / names["docs"]), "wb") as sink:
            with pa.ipc.new_file(sink, DOCS_SCHEMA) as w:
                w.write_table(docs)
        with open(out / names["docs"], "rb+") as f:
            os.fsync(f.fileno())
    sums["docs"] = hashlib.sha256((out / names["docs"]).read_bytes()).hexdigest()
    first = int(docs.column("doc_id")[0].as_py()) if docs.num_rows else 0
    return {
        "name": base,
        "bytes": int(len(buf)),
        "text_bytes": int(text_bytes),
        "documents": int(docs.num_rows),
        "first_doc_id": first,
        "pointer_width": width,
        "files": {k: {"name": names[k], "size": (out / names[k]).stat().st_size, "sha256": sums[k],
                      **({"blocks": {"size": BLOCK_SIZE, "crc32": sums[f"{k}_blocks"]}} if k != "docs" else {})}
                  for k in names},
        "seconds": {"read": round(t_read, 3), "sort": round(t_sort, 3), "total": round(time.perf_counter() - t0, 3)},
    }


def shard_memory(text_bytes: int, n_docs: int) -> int:
    """Bytes of RAM a shard's build needs (declared to the scheduler): the ``n`` bytes of text and
    separators, the suffix array (4 or 8 bytes per byte), and 64 MiB for the interpreter and the
    document table."""
    n = int(text_bytes) + int(n_docs)
    return n * (1 + (4 if n <= MAX_32BIT_BYTES else 8)) + (64 << 20)


def build_shard_whole(corpus_shard: str, out_dir: str, index: int, n_docs: int, text_bytes: int,
                      fsync: bool = False, sha256: str | None = None) -> dict[str, Any]:
    """:func:`build_shard` into a folder of this attempt's own, then its files moved into
    ``out_dir``: a worker killed mid-write leaves only that folder (removed with the temporary
    index), never a half-written ``shard-NNNNN.*`` beside the finished ones."""
    import uuid

    from corpora.executor import crash_once_hook

    out = Path(out_dir)
    part = out / f".part-{shard_base(index)}-{uuid.uuid4().hex}"
    part.mkdir()
    try:
        crash_once_hook()   # the fault tests' worker death, with the part folder half made
        entry = build_shard(corpus_shard, str(part), index, n_docs, text_bytes, fsync, sha256)
        for f in entry["files"].values():
            os.replace(part / f["name"], out / f["name"])
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return entry


def build_index(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    fsync: bool = False,
    executor=None,
) -> dict[str, Any]:
    """Build the index of the corpus at ``corpus_dir`` into ``out_dir``; returns the manifest.

    ``executor`` (:mod:`corpora.executor`): where the shards are built; default: this machine with
    ``jobs`` processes. On Ray, one task per shard declaring the memory it needs
    (:func:`shard_memory`), each shard written under a name of its own and moved into the
    temporary index folder only when whole, so a retried or killed task never leaves half a shard
    in what is published.

    ``fsync=True`` flushes the ``.bytes``/``.sa`` files to disk before the rename
    (durable across a power failure, at the disk's write speed: about 5 bytes per
    corpus byte); by default only the small files are, and the big ones reach the
    disk with the normal writeback — ``trawl index verify`` tells a damaged index.
    """
    from corpora import CorpusError, open_corpus
    from corpora.shards import MANIFEST_NAME as CORPUS_MANIFEST
    from suffix_index.errors import check_int

    from corpora.storage import ManifestFields

    jobs = check_int("jobs", jobs, 1)
    from corpora.locations import is_url

    if is_url(out_dir):   # built in a local staging folder, then published: data files, manifest.json last
        from corpora.stores import build_and_publish

        manifest, _ = build_and_publish(
            str(out_dir), kind="index", manifest_name=MANIFEST_NAME, overwrite=overwrite,
            build=lambda local: build_index(corpus_dir, local, jobs=jobs, overwrite=True, progress=progress,
                                            fsync=fsync, executor=executor))
        return manifest
    corpus = open_corpus(corpus_dir)   # a URL: this node's checked copy (corpora.stores)
    corpus_name = corpus.location if is_url(corpus_dir) else str(Path(corpus_dir).resolve())
    corpus_dir = corpus.path
    check = ManifestFields(Path(corpus_dir) / CORPUS_MANIFEST, CorpusError)   # what a build needs is there
    check.count(corpus.manifest, "documents", "documents")
    for i, s in enumerate(corpus.manifest["shards"]):
        check.count(s, "documents", f"shards[{i}].documents")
        check.count(s, "text_bytes", f"shards[{i}].text_bytes")
    if corpus.documents == 0 or not corpus.shards:
        raise CorpusError(f"{corpus.location}: the corpus has no documents; nothing to index")
    # --force replaces only an index folder trawl made, never the corpus, the current folder or others
    out = check_output_dir(out_dir, marker=MANIFEST_NAME, kind="index", overwrite=overwrite,
                           error=IndexFormatError, inputs=[corpus_dir])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexFormatError(f"{out.parent}: cannot create the folder ({exc.strerror or exc})") from None
    clean_stale_temps(out)   # what killed builds left beside it (a dead pid's INDEX.tmp-PID)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(tmp):
        tmp.mkdir()
    started = utcnow()
    t0 = time.perf_counter()
    specs = [
        (str(p), str(tmp), i, int(s["documents"]), int(s["text_bytes"]), bool(fsync), s.get("sha256"))
        for i, (p, s) in enumerate(zip(corpus.shards, corpus.manifest["shards"]))
    ]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(s[4] + s[3] for s in specs), unit="B", unit_scale=True, desc="index build", file=sys.stderr)
    entries: list[dict[str, Any] | None] = [None] * len(specs)
    try:
        if executor is not None and executor.kind != "local":
            def done(i, entry):
                entries[i] = entry
                if bar is not None:
                    bar.update(specs[i][4] + specs[i][3])

            executor.map(build_shard_whole, specs, memory=[shard_memory(s[4], s[3]) for s in specs], on_done=done)
        elif jobs == 1 or len(specs) <= 1:
            for spec in specs:
                entries[spec[2]] = build_shard(*spec)
                if bar is not None:
                    bar.update(spec[4] + spec[3])
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(specs)), mp_context=get_context("spawn")) as pool:
                futs = {pool.submit(build_shard, *spec): spec for spec in specs}
                for fut in as_completed(futs):
                    spec = futs[fut]
                    entries[spec[2]] = fut.result()
                    if bar is not None:
                        bar.update(spec[4] + spec[3])
        if bar is not None:
            bar.close()
        for part in tmp.glob(".part-*"):   # what killed (then retried) tasks left: never published
            shutil.rmtree(part, ignore_errors=True)
        manifest = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "bytes": sum(e["bytes"] for e in entries),
            "text_bytes": sum(e["text_bytes"] for e in entries),
            "documents": sum(e["documents"] for e in entries),
            "shards": entries,
            "build": {
                "corpus": corpus_name,
                "corpus_manifest_sha256": hashlib.sha256((Path(corpus_dir) / CORPUS_MANIFEST).read_bytes()).hexdigest(),
                "jobs": jobs,
                "executor": getattr(executor, "kind", "local"),
                "separator": SEPARATOR,
                "tools": _tool_versions(),
                "started_at": started,
                "seconds": round(time.perf_counter() - t0, 3),
            },
        }

        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        load_manifest(tmp)  # self-check before publishing
        with writing(out):
            commit_output_dir(tmp, out)
    except BaseException:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
