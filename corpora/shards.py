"""Corpus folder on disk: Arrow IPC shards of bounded size plus ``corpus.json``.

Layout and schema are fixed by ``docs/CONTRACTS.md`` section 1. Guarantees:

* a shard holds at most ``max_shard_bytes`` bytes of UTF-8 text (default 1 GiB),
  except a single document larger than that, which gets a shard of its own;
* shards are Arrow IPC *file* format, so a reader can memory-map them
  (:meth:`Corpus.table` is zero-copy);
* ``doc_id`` is dense (0..N-1) in ingest order across shards;
* :func:`open_corpus` validates the manifest (format, version, that every shard
  exists with the recorded size) and raises :class:`CorpusError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from corpora.errors import CorpusError
from corpora.locations import is_url
from corpora.storage import (ManifestFields, check_output_dir, clean_stale_temps, commit_output_dir, read_manifest,
                             utcnow, write_json_atomic, writing)

CORPUS_FORMAT = "trawl-corpus"
CORPUS_FORMAT_VERSION = 1
MANIFEST_NAME = "corpus.json"
DEFAULT_MAX_SHARD_BYTES = 1 << 30
BATCH_TEXT_BYTES = 32 << 20  # flush a record batch at about this much text

SHARD_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("ext_id", pa.string()),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("metadata", pa.string()),
    ]
)


@dataclass
class Document:
    """A corpus document (also what ``SuffixIndex.document`` returns)."""

    doc_id: int
    source: str
    ext_id: str | None
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.arrow"


def sha256_file(path: str | os.PathLike, chunk: int = 16 << 20, on_bytes=None) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces; ``on_bytes(n)`` is called per piece."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            if on_bytes is not None:
                on_bytes(len(b))
    return h.hexdigest()


class ShardWriter:
    """Append documents; rolls over to a new shard when the text budget is reached.

    Call :meth:`add` per document (text must be non-empty valid UTF-8, ids are
    assigned here) and :meth:`close` once; :attr:`shards` then lists
    ``{"name", "documents", "text_bytes", "sha256"}`` per shard.

    ``first_doc_id`` and ``name`` (the file name of the writer's i-th shard, default
    :func:`shard_name`) let a worker write one shard of a corpus under a staged name
    (:mod:`corpora.ingest_workers`): the bytes depend only on the documents and their ids.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, *, first_doc_id: int = 0,
                 name=None):
        if max_shard_bytes <= 0:
            raise ValueError("max_shard_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = int(max_shard_bytes)
        self.shards: list[dict[str, Any]] = []
        self.next_doc_id = int(first_doc_id)
        self._name = name or shard_name
        self._writer: pa.RecordBatchFileWriter | None = None
        self._sink = None
        self._shard_docs = 0
        self._shard_bytes = 0
        self._cols: dict[str, list] = {n: [] for n in SHARD_SCHEMA.names}
        self._batch_bytes = 0

    def add(self, source: str, text: str, ext_id: str | None, metadata_json: str, nbytes: int) -> int:
        if self._writer is not None and self._shard_bytes + nbytes > self.max_shard_bytes and self._shard_docs:
            self._finish_shard()
        if self._writer is None:
            self._start_shard()
        doc_id = self.next_doc_id
        self.next_doc_id += 1
        c = self._cols
        c["doc_id"].append(doc_id)
        c["source"].append(source)
        c["ext_id"].append(ext_id)
        c["text"].append(text)
        c["metadata"].append(metadata_json)
        self._shard_docs += 1
        self._shard_bytes += nbytes
        self._batch_bytes += nbytes
        if self._batch_bytes >= BATCH_TEXT_BYTES or len(c["doc_id"]) >= 65536:
            self._flush_batch()
        return doc_id

    # every write below names its shard when it fails (a full disk: storage.WriteError, one line)
    def _start_shard(self) -> None:
        path = self.out_dir / self._name(len(self.shards))
        with writing(path):
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_file(self._sink, SHARD_SCHEMA)
        self._shard_docs = 0
        self._shard_bytes = 0

    def _flush_batch(self) -> None:
        if not self._cols["doc_id"]:
            return
        arrays = [pa.array(self._cols[f.name], type=f.type) for f in SHARD_SCHEMA]
        assert self._writer is not None
        with writing(self.out_dir / self._name(len(self.shards))):
            self._writer.write_batch(pa.record_batch(arrays, schema=SHARD_SCHEMA))
        self._cols = {n: [] for n in SHARD_SCHEMA.names}
        self._batch_bytes = 0

    def _finish_shard(self) -> None:
        self._flush_batch()
        assert self._writer is not None and self._sink is not None
        name = self._name(len(self.shards))
        path = self.out_dir / name
        with writing(path):
            self._writer.close()
            self._sink.close()
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        self.shards.append(
            {"name": name, "documents": self._shard_docs, "text_bytes": self._shard_bytes,
             "sha256": sha256_file(path)}
        )
        self._writer = None
        self._sink = None

    def close(self) -> None:
        if self._writer is not None:
            self._finish_shard()


class Corpus:
    """A corpus folder opened for reading (see :func:`open_corpus`)."""

    def __init__(self, path: Path, manifest: dict[str, Any], location: str | None = None):
        self.path = Path(path)
        self.location = location or str(path)   # what the user named: the path, or the store's URL
        self.manifest = manifest
        self.shards: list[Path] = [self.path / s["name"] for s in manifest["shards"]]

    @property
    def documents(self) -> int:
        return int(self.manifest["documents"])

    @property
    def text_bytes(self) -> int:
        return int(self.manifest["text_bytes"])

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.manifest.get("stats", {}))

    def table(self, shard: int) -> pa.Table:
        """The shard's rows, memory-mapped (zero-copy)."""
        path = self.shards[shard]
        try:
            return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{path}: corrupt or unreadable corpus shard: {exc}") from None

    def check_shard(self, shard: int) -> None:
        """Compare a shard with its sha256 in ``corpus.json`` (when recorded): a damaged byte of text
        is a :class:`CorpusError` naming the shard, never another document. One read of the file."""
        path = self.shards[shard]
        want = self.manifest["shards"][shard].get("sha256")
        if not want:
            return
        try:
            got = sha256_file(path)
        except OSError as exc:
            raise CorpusError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if got != want:
            raise CorpusError(f"{path}: checksum mismatch (corpus.json says {want}, file has {got}); the shard is "
                              f"damaged, re-ingest the corpus")

    def iter_documents(self) -> Iterator[Document]:
        for i in range(len(self.shards)):
            t = self.table(i)
            for batch in t.to_batches():
                d = batch.to_pydict()
                for j in range(batch.num_rows):
                    yield Document(
                        doc_id=d["doc_id"][j], source=d["source"][j], ext_id=d["ext_id"][j],
                        text=d["text"][j], metadata=json.loads(d["metadata"][j] or "{}"),
                    )

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, documents={self.documents}, text_bytes={self.text_bytes})"


def open_corpus(path: str | os.PathLike) -> Corpus:
    """Open a corpus folder written by :func:`corpora.ingest`; validates its manifest. A URL
    (:mod:`corpora.locations`) is read through this node's checked cache (:func:`corpora.stores.fetch_folder`)."""
    from corpora.locations import is_url

    if is_url(path):
        from corpora.stores import fetch_folder

        local = fetch_folder(str(path), kind="corpus", manifest_name=MANIFEST_NAME, listing=corpus_files)
        corpus = open_corpus(local)
        corpus.location = str(path)
        return corpus
    path = Path(path)
    manifest = _checked_manifest(path, check_files=True)
    return Corpus(path, manifest)


def corpus_files(path: Path) -> list[tuple[str, str, None]]:
    """The shard files ``corpus.json`` in ``path`` lists, with their sha256 (what a store's reader
    downloads and checks); the manifest checked as :func:`open_corpus` does, the files not yet there."""
    manifest = _checked_manifest(Path(path), check_files=False)
    out = []
    for i, s in enumerate(manifest["shards"]):
        if not s.get("sha256"):
            raise CorpusError(f"{Path(path) / MANIFEST_NAME}: corrupt manifest (shards[{i}].sha256 is missing; a corpus "
                              f"read from a store needs every shard's checksum)")
        out.append((s["name"], s["sha256"], None))
    return out


def _checked_manifest(path: Path, check_files: bool) -> dict[str, Any]:
    if not path.is_dir():   # a user's "no such folder" reads better as what was expected there
        raise CorpusError(f"{path}: not a corpus folder (no such directory)")
    manifest = read_manifest(path, MANIFEST_NAME, fmt=CORPUS_FORMAT, version=CORPUS_FORMAT_VERSION, error=CorpusError,
                             kind="corpus", build="trawl corpus ingest", upgrade="re-ingest the corpus")
    check = ManifestFields(path / MANIFEST_NAME, CorpusError)   # each field a reader uses, its type
    # fields a reader of documents does not need may be absent (a hand-made corpus.json); present, typed
    check.count(manifest, "documents", "documents", optional=True)
    check.count(manifest, "text_bytes", "text_bytes", optional=True)
    if "stats" in manifest:
        check.table(manifest["stats"], "stats")
    for i, s in enumerate(check.listing(manifest, "shards", "shards")):
        check.table(s, f"shards[{i}]")
        name = check.file_name(s, "name", f"shards[{i}].name")
        check.count(s, "documents", f"shards[{i}].documents", optional=True)
        check.count(s, "text_bytes", f"shards[{i}].text_bytes", optional=True)
        check.text(s, "sha256", f"shards[{i}].sha256", optional=True)
        sp = path / name
        if check_files and not sp.is_file():
            raise CorpusError(f"{sp}: corpus shard missing")
    return manifest


# -- writing a corpus folder: the counts, the staging folder, the one publication ----------------
@dataclass
class IngestStats:
    read: int = 0
    skipped_empty: int = 0
    repaired_utf8: int = 0
    exact_duplicates: int = 0
    documents: int = 0
    text_bytes: int = 0

    def as_manifest(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k not in ("documents", "text_bytes")}


def metadata_json_default(o):
    """``json.dumps(default=)`` for a record's metadata: bytes as UTF-8 (bad bytes replaced), else ``str``."""
    if isinstance(o, (bytes, bytearray)):
        return o.decode("utf-8", "replace")
    return str(o)


def prepare_output_dir(out: Path, overwrite: bool, inputs=()) -> tuple[Path, Path]:
    """Check ``out`` (see :func:`corpora.storage.check_output_dir`: ``--force`` replaces only a
    corpus folder trawl made), remove temporary folders that killed ingests left beside it, and
    return ``(out, tmp)``: ``out`` absolute and a fresh temporary sibling folder to write into."""
    if is_url(out):   # never a local folder named "s3:": URLs go through ingest() / publish_corpus()
        from corpora.errors import StoreError

        raise StoreError(f"{out}: a corpus for a URL is written by ingest() or publish_corpus(), not here")
    out = check_output_dir(out, marker=MANIFEST_NAME, kind="corpus", overwrite=overwrite, error=CorpusError,
                           inputs=inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"{out.parent}: cannot create the folder ({exc.strerror or exc})") from None
    clean_stale_temps(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with writing(tmp):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    return out, tmp


def finish_corpus(tmp: Path, out: Path, shards: list[dict], stats: IngestStats, *, max_shard_bytes: int,
                  keep_duplicates: bool, extra_manifest: dict | None) -> None:
    """Write ``corpus.json`` into the finished temporary folder ``tmp`` and rename it to ``out``:
    the one publication of a corpus, whoever wrote its shards (this process or workers). A corpus
    without documents is refused here."""
    if stats.documents == 0:
        raise CorpusError(
            f"no documents: all {stats.read} records were empty/duplicates/skipped "
            f"({stats.skipped_empty} empty, {stats.exact_duplicates} duplicates); {out} not written"
        )
    manifest = {
        "format": CORPUS_FORMAT,
        "format_version": CORPUS_FORMAT_VERSION,
        "shards": shards,
        "documents": stats.documents,
        "text_bytes": stats.text_bytes,
        "stats": stats.as_manifest(),
        "max_shard_bytes": max_shard_bytes,
        "duplicates": "kept" if keep_duplicates else "dropped",
        "created_at": utcnow(),
    }
    if extra_manifest:
        manifest.update(extra_manifest)
    write_json_atomic(tmp / MANIFEST_NAME, manifest)
    with writing(out):
        commit_output_dir(tmp, out)
