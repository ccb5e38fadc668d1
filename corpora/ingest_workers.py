"""Ingest on workers: input files read and shards written by the executor's workers (Ray), the
corpus byte for byte the one :func:`corpora.ingest.ingest_records` writes in one process.

Exact deduplication, dense document ids and shard boundaries depend on the order of all the
records, so the work runs in three steps (two on workers, one here):

1. **read** (one task per unit of :func:`read_units`): a worker reads its files
   once, writes their non-empty records to a *segment* (an Arrow IPC file, staged inside the
   corpus's temporary folder under a name of its own attempt) and returns, per record, the blake2b
   digest of its text (what local ingest deduplicates on) and its UTF-8 length, plus the unit's
   counts and the first reader error, if any;
2. **decide** (this process, in input order): which records are kept (first occurrence of a text),
   their ids, and where each shard starts and ends (the rule of :class:`corpora.shards.ShardWriter`).
   A reader error or unstorable metadata is raised where local ingest would meet it, so the same
   input gives the same one-line error;
3. **write** (one task per shard): a worker takes its shard's records from the segments and
   writes the shard with a :class:`ShardWriter` started at the shard's first id, under a staged
   name ``.stage-NNNNN-<uuid>.arrow``, and returns its entry (documents, bytes, sha256).

Then this process renames each returned stage to ``shard-NNNNN.arrow``, removes the segments and
any stage a killed (then retried) attempt left, writes ``corpus.json`` and publishes the folder
once (:func:`corpora.shards.finish_corpus`). Every file is inside the temporary folder until that
rename, so no half-written shard is ever under the corpus's name, and a failed run leaves nothing.

The temporary folder must be on a path every worker sees (a shared file system).
Limits: a unit is a whole data file (one JSONL file is read by one worker), and the driver holds
16 bytes per distinct text for deduplication, as local ingest does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpora.errors import CorpusError
from corpora.locations import is_url
from corpora.shards import (IngestStats, ShardWriter, finish_corpus, metadata_json_default, open_corpus,
                            prepare_output_dir, shard_name)
from corpora.storage import writing

SEGMENT_SCHEMA = pa.schema([
    pa.field("source", pa.string()),
    pa.field("ext_id", pa.string()),
    pa.field("text", pa.large_string()),
    pa.field("metadata", pa.string()),
])
SEGMENT_BATCH_BYTES = 16 << 20
SEGMENT_PREFIX = ".seg-"
STAGE_PREFIX = ".stage-"


def _unit_records(kind: str, paths: list[str], text_field: str, id_field: str | None, skip_binary: bool):
    from corpora.readers import read_sources, read_text_file

    if kind == "files":
        for p in paths:
            rec = read_text_file(Path(p), skip_binary=skip_binary)
            if rec is not None:
                yield rec
    else:
        yield from read_sources(paths, text_field=text_field, id_field=id_field, skip_binary=skip_binary)


def read_unit_to_segment(tmp_dir: str, unit: int, kind: str, paths: list[str], text_field: str,
                         id_field: str | None, skip_binary: bool) -> dict:
    """Step 1, on a worker: the unit's non-empty records into a staged segment. Returns ``seg``
    (its file name, None without records), ``read``, ``empty``, ``repaired``, ``nbytes`` (int64
    per segment row), ``digests`` (16 bytes per row), ``bad_meta`` (``{row: message}``) and
    ``error`` (a reader's one-line error after the rows before it, or None)."""
    from corpora.executor import crash_once_hook

    crash_once_hook("read")   # the fault tests' worker death, before anything is written
    name = f"{SEGMENT_PREFIX}{unit:07d}-{uuid.uuid4().hex}.arrow"
    path = Path(tmp_dir) / name
    out = {"seg": None, "read": 0, "empty": 0, "repaired": 0, "bad_meta": {}, "error": None}
    nbytes: list[int] = []
    digests = bytearray()
    cols: dict[str, list] = {n: [] for n in SEGMENT_SCHEMA.names}
    batch = 0
    writer = sink = None

    def flush():
        nonlocal batch
        if cols["text"]:
            writer.write_batch(pa.record_batch([pa.array(cols[f.name], f.type) for f in SEGMENT_SCHEMA],
                                               schema=SEGMENT_SCHEMA))
            for v in cols.values():
                v.clear()
        batch = 0

    try:
        with writing(path):
            try:
                for rec in _unit_records(kind, paths, text_field, id_field, skip_binary):
                    out["read"] += 1
                    if not rec.text:
                        out["empty"] += 1
                        continue
                    if rec.repaired:
                        out["repaired"] += 1
                    data = rec.text.encode("utf-8")
                    try:
                        meta = (json.dumps(rec.metadata, ensure_ascii=False, default=metadata_json_default)
                                if rec.metadata else "{}")
                    except (RecursionError, ValueError) as exc:
                        meta = None
                        out["bad_meta"][len(nbytes)] = (
                            f"{rec.source}: metadata cannot be stored as JSON "
                            f"({'nested too deeply' if isinstance(exc, RecursionError) else exc})")
                    if writer is None:
                        sink = pa.OSFile(str(path), "wb")
                        writer = pa.ipc.new_file(sink, SEGMENT_SCHEMA)
                        out["seg"] = name
                    cols["source"].append(rec.source)
                    cols["ext_id"].append(rec.ext_id)
                    cols["text"].append(rec.text)
                    cols["metadata"].append(meta)
                    nbytes.append(len(data))
                    digests += hashlib.blake2b(data, digest_size=16).digest()
                    batch += len(data)
                    if batch >= SEGMENT_BATCH_BYTES or len(cols["text"]) >= 65536:
                        flush()
            except CorpusError as exc:   # decided in input order by the driver, as local ingest meets it
                out["error"] = str(exc)
            if writer is not None:
                flush()
                writer.close()
                sink.close()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    out["nbytes"] = np.asarray(nbytes, dtype=np.int64)
    out["digests"] = bytes(digests)
    return out


def plan_shards(results: list[dict], *, max_shard_bytes: int, keep_duplicates: bool, stats) -> list[dict]:
    """Step 2, here: the kept records and the shards, exactly as :func:`ingest_records` decides
    them from the same records in the same order. Returns one ``{"first_doc_id", "documents",
    "text_bytes", "pieces": [(segment name, row indices)]}`` per shard; fills ``stats``; raises the
    first error (reader or metadata) in input order."""
    seen: set[bytes] = set()
    shards: list[dict] = []
    cur: dict | None = None
    next_id = 0
    for r in results:
        stats.read += r["read"]
        stats.skipped_empty += r["empty"]
        stats.repaired_utf8 += r["repaired"]
        nb, dg, bad = r["nbytes"], r["digests"], r["bad_meta"]
        rows: list[int] = []

        def close_piece():
            if rows:
                cur["pieces"].append((r["seg"], np.asarray(rows, dtype=np.int64)))
                rows.clear()

        for i in range(len(nb)):
            if not keep_duplicates:
                d = dg[16 * i:16 * i + 16]
                if d in seen:
                    stats.exact_duplicates += 1
                    continue
                seen.add(d)
            if i in bad:
                raise CorpusError(bad[i])
            n = int(nb[i])
            if cur is None or (cur["text_bytes"] + n > max_shard_bytes and cur["documents"]):
                if cur is not None:
                    close_piece()
                cur = {"first_doc_id": next_id, "documents": 0, "text_bytes": 0, "pieces": []}
                shards.append(cur)
            rows.append(i)
            cur["documents"] += 1
            cur["text_bytes"] += n
            next_id += 1
            stats.documents += 1
            stats.text_bytes += n
        if cur is not None:
            close_piece()
        if r["error"]:
            raise CorpusError(r["error"])
    return shards


def write_shard(tmp_dir: str, index: int, first_doc_id: int, pieces: list[tuple[str, np.ndarray]]) -> dict:
    """Step 3, on a worker: shard ``index`` from its pieces of segments, under a staged name.
    Returns its manifest entry with ``name`` the staged file's."""
    from corpora.executor import crash_once_hook

    tmp = Path(tmp_dir)
    stage = f"{STAGE_PREFIX}{index:05d}-{uuid.uuid4().hex}.arrow"
    # no rollover: the driver drew this shard's boundaries with the same rule
    writer = ShardWriter(tmp, max_shard_bytes=1 << 62, first_doc_id=first_doc_id, name=lambda _: stage)
    try:
        for k, (seg, rows) in enumerate(pieces):
            spath = tmp / seg
            try:
                table = pa.ipc.open_file(pa.memory_map(str(spath), "r")).read_all()
            except (pa.ArrowException, OSError) as exc:
                raise CorpusError(f"{spath}: cannot read an ingest segment ({exc}); re-run the command") from None
            part = table.take(pa.array(rows))
            lengths = pc.binary_length(part.column("text")).to_pylist()
            src, ext, text, meta = (part.column(c).to_pylist() for c in ("source", "ext_id", "text", "metadata"))
            for j in range(part.num_rows):
                writer.add(src[j], text[j], ext[j], meta[j], lengths[j])
                if k == 0 and j == part.num_rows // 2:
                    crash_once_hook("write")   # the fault tests' worker death, the stage half written
        writer.close()
    except BaseException:
        (tmp / stage).unlink(missing_ok=True)
        raise
    if len(writer.shards) != 1:   # a broken plan, never silently different shards
        raise RuntimeError(f"shard {index}: wrote {len(writer.shards)} shards, planned 1")
    return writer.shards[0]


def ingest_on_workers(executor, sources: list[str], out_dir, *, text_field: str, id_field: str | None,
                      max_shard_bytes: int, keep_duplicates: bool, skip_binary: bool, overwrite: bool,
                      progress: bool, extra_manifest: dict | None):
    """:func:`corpora.ingest.ingest` with the reading and writing on ``executor``'s workers (see the
    module docstring). Returns the opened corpus."""


    out, tmp = prepare_output_dir(Path(out_dir), overwrite, [s for s in sources if not is_url(s)])
    bar = None
    try:
        units = read_units(sources)
        results = executor.map(read_unit_to_segment, [(str(tmp), u, kind, paths, text_field, id_field, skip_binary)
                                                      for u, (kind, paths) in enumerate(units)])
        stats = IngestStats()
        plan = plan_shards(results, max_shard_bytes=max_shard_bytes, keep_duplicates=keep_duplicates, stats=stats)
        del results
        if progress and plan:
            from tqdm import tqdm

            bar = tqdm(total=stats.text_bytes, unit="B", unit_scale=True, desc="ingest (shards)", file=sys.stderr)
        entries = executor.map(write_shard, [(str(tmp), i, s["first_doc_id"], s["pieces"]) for i, s in enumerate(plan)],
                               on_done=(lambda i, e: bar.update(e["text_bytes"])) if bar is not None else None)
        if bar is not None:
            bar.close()
        shards = []
        for i, e in enumerate(entries):
            name = shard_name(i)
            with writing(tmp / name):
                os.replace(tmp / e["name"], tmp / name)
            shards.append(dict(e, name=name))
        for p in tmp.iterdir():   # segments, and stages of attempts killed then retried: never published
            if p.name.startswith((SEGMENT_PREFIX, STAGE_PREFIX)):
                p.unlink()
        finish_corpus(tmp, out, shards, stats, max_shard_bytes=max_shard_bytes, keep_duplicates=keep_duplicates,
                       extra_manifest=extra_manifest)
    except BaseException:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_corpus(out)


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
