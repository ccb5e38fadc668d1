"""Ingest: read sources, clean, deduplicate and write a corpus folder.

:func:`ingest` is what ``trawl corpus ingest`` runs. Guarantees:

* **atomic**: the folder is written under ``OUT.tmp-<pid>`` and renamed to ``OUT``
  only when complete; a failure leaves no ``OUT`` (and an existing ``OUT`` is
  replaced only with ``overwrite=True``, once the new one is complete);
* **counted**: ``IngestStats`` says how many records were read, skipped because
  their text was empty (or null), repaired (invalid UTF-8 or lone surrogates
  replaced with U+FFFD, see :mod:`corpora.readers`) and exact duplicates (same
  text, byte for byte, as an earlier document; dropped unless ``keep_duplicates``);
* **not empty**: a corpus without documents (every record empty, a duplicate or
  skipped) is a :class:`CorpusError`, never an empty folder;
* **deterministic**: the same inputs give the same shards, ids and checksums
  (``created_at`` aside).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from corpora.errors import CorpusError
from corpora.locations import is_url
from corpora.readers import Record, read_sources
from corpora.shards import (
    CORPUS_FORMAT,
    CORPUS_FORMAT_VERSION,
    DEFAULT_MAX_SHARD_BYTES,
    MANIFEST_NAME,
    Corpus,
    ShardWriter,
    open_corpus,
)
from corpora.storage import (check_output_dir, clean_stale_temps, commit_output_dir, utcnow, write_json_atomic,
                             writing)


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


def _json_default(o):
    if isinstance(o, (bytes, bytearray)):
        return o.decode("utf-8", "replace")
    return str(o)


def progress_enabled(quiet: bool = False) -> bool:
    """Progress bars only for a person watching: a tty on stderr and not ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def publish_corpus(url: str, overwrite: bool, build) -> Corpus:
    """The corpus ``build(local_folder)`` writes, published at ``url`` (:mod:`corpora.stores`: built
    in a staging folder, then the shards and ``corpus.json`` last); opened from this node's cache."""
    from corpora.stores import build_and_publish

    built, cached = build_and_publish(url, kind="corpus", manifest_name=MANIFEST_NAME, overwrite=overwrite,
                                      build=build)
    corpus = open_corpus(cached) if cached is not None else built
    corpus.location = url
    return corpus


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


def ingest_records(
    records: Iterable[Record],
    out_dir: str | os.PathLike,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    keep_duplicates: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    extra_manifest: dict | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> Corpus:
    """Write ``records`` as a corpus folder at ``out_dir`` and return it opened. ``inputs``: the
    files and folders the records come from (``out_dir`` may neither hold nor lie inside one)."""
    out, tmp = prepare_output_dir(out_dir if is_url(out_dir) else Path(out_dir), overwrite, inputs)
    stats = IngestStats()
    seen: set[bytes] = set()
    try:
        writer = ShardWriter(tmp, max_shard_bytes=max_shard_bytes)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(unit="B", unit_scale=True, desc="ingest", file=sys.stderr)
        for rec in records:
            stats.read += 1
            text = rec.text
            if not text:
                stats.skipped_empty += 1
                continue
            if rec.repaired:
                stats.repaired_utf8 += 1
            data = text.encode("utf-8")
            if not keep_duplicates:
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if digest in seen:
                    stats.exact_duplicates += 1
                    continue
                seen.add(digest)
            try:
                meta = json.dumps(rec.metadata, ensure_ascii=False, default=_json_default) if rec.metadata else "{}"
            except (RecursionError, ValueError) as exc:
                raise CorpusError(f"{rec.source}: metadata cannot be stored as JSON "
                                  f"({'nested too deeply' if isinstance(exc, RecursionError) else exc})") from None
            writer.add(rec.source, text, rec.ext_id, meta, len(data))
            stats.documents += 1
            stats.text_bytes += len(data)
            if bar is not None:
                bar.update(len(data))
        writer.close()
        if bar is not None:
            bar.close()
        if stats.documents == 0:
            raise CorpusError(
                f"no documents: all {stats.read} records were empty/duplicates/skipped "
                f"({stats.skipped_empty} empty, {stats.exact_duplicates} duplicates); {out} not written"
            )
        manifest = {
            "format": CORPUS_FORMAT,
            "format_version": CORPUS_FORMAT_VERSION,
            "shards": writer.shards,
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_corpus(out)


def ingest(
    sources: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    keep_duplicates: bool = False,
    skip_binary: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    executor=None,
) -> Corpus:
    """Ingest files/folders (see :mod:`corpora.readers` for the formats) into ``out_dir``.

    ``executor`` (:mod:`corpora.executor`): on Ray, the input files are read by workers in parallel
    (:func:`read_units`: one unit per file, a folder's files in groups of ``FILES_PER_UNIT``) and
    their records numbered, deduplicated and sharded here in input order, so the corpus is the one
    a local ingest writes; it is published once, atomically, as always.

    Sources and ``out_dir`` may be URLs (:mod:`corpora.locations`): inputs are fetched a file at a
    time; a corpus for a store is written to a local staging folder and published
    (:func:`corpora.stores.build_and_publish`: the data files, then ``corpus.json`` last).

    Returns the opened :class:`Corpus`; ``corpus.stats`` has the counts.
    """
    sources = [str(s) for s in sources]
    if not sources:
        raise CorpusError("no input given")
    if is_url(out_dir):
        return publish_corpus(
            str(out_dir), overwrite,
            lambda local: ingest(sources, local, text_field=text_field, id_field=id_field,
                                 max_shard_bytes=max_shard_bytes, keep_duplicates=keep_duplicates,
                                 skip_binary=skip_binary, overwrite=True, progress=progress, executor=executor))
    if executor is not None and executor.kind != "local":
        records = _parallel_records(executor, sources, text_field, id_field, skip_binary)
    else:
        records = read_sources(sources, text_field=text_field, id_field=id_field, skip_binary=skip_binary)
    return ingest_records(
        records, out_dir, max_shard_bytes=max_shard_bytes, keep_duplicates=keep_duplicates,
        overwrite=overwrite, progress=progress, inputs=[s for s in sources if not is_url(s)],
        extra_manifest={"inputs": sources, "text_field": text_field, "id_field": id_field},
    )


FILES_PER_UNIT = 64


def read_units(sources: list[str]) -> list[tuple[str, list[str]]]:
    """The input as units of work, in input order: ``("source", [file])`` for a data file (JSONL,
    Parquet, Arrow or text), ``("files", [paths])`` for up to ``FILES_PER_UNIT`` files of a folder."""
    from corpora.readers import input_kind, iter_directory_files

    units: list[tuple[str, list[str]]] = []
    for src in sources:
        if is_url(src):   # a URL's files are listed and fetched by the worker that reads it
            units.append(("source", [src]))
            continue
        path = Path(src)
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        if input_kind(path) != "dir":
            units.append(("source", [src]))
            continue
        files = [str(p) for p in iter_directory_files(path)]
        for i in range(0, len(files), FILES_PER_UNIT):
            units.append(("files", files[i:i + FILES_PER_UNIT]))
    return units


def read_unit(kind: str, paths: list[str], text_field: str, id_field: str | None, skip_binary: bool) -> list[Record]:
    """The records of one unit (runs on a worker)."""
    from corpora.executor import crash_once_hook
    from corpora.readers import read_text_file

    crash_once_hook()   # the fault tests' worker death, mid-read
    if kind == "files":
        return [r for r in (read_text_file(Path(p), skip_binary=skip_binary) for p in paths) if r is not None]
    return list(read_sources(paths, text_field=text_field, id_field=id_field, skip_binary=skip_binary))


def _parallel_records(executor, sources, text_field, id_field, skip_binary):
    units = read_units(sources)
    for records in executor.imap(read_unit, [(k, p, text_field, id_field, skip_binary) for k, p in units]):
        yield from records
