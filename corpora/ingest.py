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
from pathlib import Path
from typing import Iterable

from corpora.errors import CorpusError
from corpora.locations import is_url
from corpora.readers import Record, read_sources
from corpora.shards import (DEFAULT_MAX_SHARD_BYTES, MANIFEST_NAME, Corpus, IngestStats, ShardWriter, finish_corpus,
                            metadata_json_default, open_corpus, prepare_output_dir)


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
                meta = json.dumps(rec.metadata, ensure_ascii=False, default=metadata_json_default) if rec.metadata else "{}"
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
        finish_corpus(tmp, out, writer.shards, stats, max_shard_bytes=max_shard_bytes,
                      keep_duplicates=keep_duplicates, extra_manifest=extra_manifest)
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

    ``executor`` (:mod:`corpora.executor`): on Ray, workers read the input files and write the
    shards (:mod:`corpora.ingest_workers`: read, then this process decides numbering, duplicates
    and shard boundaries, then workers write), so the corpus is byte for byte the one a local
    ingest writes; it is published once, atomically, as always.

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
    extra = {"inputs": sources, "text_field": text_field, "id_field": id_field}
    if executor is not None and executor.kind != "local":
        from corpora.ingest_workers import ingest_on_workers

        return ingest_on_workers(
            executor, sources, out_dir, text_field=text_field, id_field=id_field, max_shard_bytes=max_shard_bytes,
            keep_duplicates=keep_duplicates, skip_binary=skip_binary, overwrite=overwrite, progress=progress,
            extra_manifest=extra)
    records = read_sources(sources, text_field=text_field, id_field=id_field, skip_binary=skip_binary)
    return ingest_records(
        records, out_dir, max_shard_bytes=max_shard_bytes, keep_duplicates=keep_duplicates,
        overwrite=overwrite, progress=progress, inputs=[s for s in sources if not is_url(s)], extra_manifest=extra,
    )
