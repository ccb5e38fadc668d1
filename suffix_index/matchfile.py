"""Generations in, ``matches.parquet`` out (``docs/CONTRACTS.md`` §3 and §4).

:func:`read_generations` accepts a run folder (``RUN/generations/*.parquet``), one
generations Parquet file, or a folder of Parquet parts, and yields
``((run_id, request_id), completion_bytes, token_offsets)`` in file order, a
record batch at a time (memory bounded by the batch).

:func:`match_to_parquet` runs the matcher over them and writes the matches file
atomically (``NAME.tmp-<pid>``, fsync, rename) with the key-value metadata
``min_tokens``, ``min_bytes``, ``index_manifest_sha256`` (plus ``index`` and
``trawl_matches_format``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpora.storage import MATCHES_SCHEMA, PARQUET_ERRORS, PARQUET_READ_OPTIONS, first_line, write_parquet_atomic
from suffix_index.errors import MatchInputError

MATCHES_FORMAT_VERSION = 1
REQUIRED_COLUMNS = ("run_id", "request_id", "completion")

def generation_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files a GENERATIONS argument names (see module docstring)."""
    from corpora.locations import require_local

    require_local(path, "GENERATIONS (a run folder or generations file)")
    p = Path(path)
    if not p.exists():
        raise MatchInputError(f"{p}: no such file or folder")
    if p.is_file():
        return [p]
    sub = p / "generations"
    folder = sub if sub.is_dir() else p
    files = sorted(f for f in folder.glob("*.parquet") if f.is_file())
    if not files:
        raise MatchInputError(f"{folder}: no generations (*.parquet) found")
    return files


def default_output(path: str | os.PathLike) -> Path | None:
    """``RUN/matches.parquet`` when GENERATIONS is a run folder, else None."""
    p = Path(path)
    if p.is_dir() and (p / "generations").is_dir():
        return p / "matches.parquet"
    return None


def _check_types(f: Path, schema: pa.Schema) -> None:
    """The columns the matcher reads have the contract's types (docs/CONTRACTS.md §3); else one line."""
    def text_like(t):
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)

    for name in ("run_id", "request_id"):
        t = schema.field(name).type
        if not text_like(t):
            raise MatchInputError(f"{f}: column {name!r} is {t}, not a string (not a generations file?)")
    t = schema.field("completion").type
    if not (text_like(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise MatchInputError(f"{f}: column 'completion' is {t}, not a string")
    if "token_offsets" in schema.names:
        t = schema.field("token_offsets").type
        if not (pa.types.is_null(t) or ((pa.types.is_list(t) or pa.types.is_large_list(t))
                                        and (pa.types.is_integer(t.value_type) or pa.types.is_null(t.value_type)))):
            raise MatchInputError(f"{f}: column 'token_offsets' is {t}, not a list of integers")


def check_offsets(f, row: int, request_id, off: np.ndarray, n: int) -> None:
    """Token offsets are byte offsets into the completion: each in ``[0, n]`` and none smaller than the
    one before (several tokens may share a position: docs/CONTRACTS.md §3); else one line naming the
    file and the row, never spans computed from made-up token boundaries."""
    if not off.size:
        return
    if off.min() < 0 or off.max() > n:
        bad = int(off[(off < 0) | (off > n)][0])
        raise MatchInputError(f"{f}: row {row} (request {request_id}): token offset {bad} lies outside its "
                              f"completion of {n} bytes")
    drops = np.flatnonzero(np.diff(off) < 0)
    if drops.size:
        i = int(drops[0])
        raise MatchInputError(f"{f}: row {row} (request {request_id}): token offsets decrease ({int(off[i])} then "
                              f"{int(off[i + 1])} at token {i + 1})")


def read_generations(path: str | os.PathLike, batch_rows: int = 1000) -> Iterator[tuple[tuple[str, str], bytes, Any]]:
    for f in generation_files(path):
        try:
            pf = pq.ParquetFile(f, **PARQUET_READ_OPTIONS)
            names = pf.schema_arrow.names
        except PARQUET_ERRORS as exc:
            raise MatchInputError(f"{f}: not a readable Parquet file ({first_line(exc)})") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise MatchInputError(f"{f}: no column {', '.join(map(repr, missing))} (not a generations file?)")
        _check_types(f, pf.schema_arrow)
        cols = list(REQUIRED_COLUMNS) + (["token_offsets"] if "token_offsets" in names else [])
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                d = batch.to_pydict()
                offs = d.get("token_offsets") or [None] * batch.num_rows
                for run_id, req, comp, off in zip(d["run_id"], d["request_id"], d["completion"], offs):
                    data = (comp or "").encode("utf-8", "replace") if not isinstance(comp, bytes) else comp
                    if off is not None:
                        off = np.asarray([-1 if o is None else o for o in off], dtype=np.int64)
                        check_offsets(f, row, req, off, len(data))
                    row += 1
                    yield (run_id, req), data, off
        except PARQUET_ERRORS as exc:   # e.g. OSError: a page checksum mismatch, a short read
            raise MatchInputError(f"{f}: corrupt Parquet data ({first_line(exc)})") from None


def check_output_file(out: str | os.PathLike) -> Path:
    """``out`` as a Path when it may be written as the matches file: not a folder, and not below a file."""
    from corpora.locations import require_local

    require_local(out, "the matches file")
    out = Path(out)
    if out.is_dir():
        raise MatchInputError(f"{out}: is a folder; --out names the matches file to write "
                              f"(e.g. {out / 'matches.parquet'})")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise MatchInputError(f"{out}: cannot write there ({parent} is a file, not a folder)")
    return out


def spans_table(spans, gens_text: dict | None = None) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in MATCHES_SCHEMA}
    for s, text in spans:
        run_id, req = s.key
        cols["run_id"].append(run_id)
        cols["request_id"].append(req)
        cols["span_start"].append(s.start)
        cols["span_end"].append(s.end)
        cols["tokens"].append(s.tokens)
        cols["shard"].append(s.shard)
        cols["doc_id"].append(s.doc_id)
        cols["doc_offset"].append(s.doc_offset)
        cols["occurrences"].append(s.occurrences)
        cols["source"].append(s.source)
        cols["text"].append(text)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in MATCHES_SCHEMA}, schema=MATCHES_SCHEMA)


def match_to_parquet(index, generations: str | os.PathLike, out: str | os.PathLike, *, min_tokens: int = 50,
                     min_bytes: int | None = None, batch_size: int = 1000, progress: bool = False) -> dict[str, Any]:
    """Match every generation under ``generations`` against ``index``; write ``out``.

    Returns ``{"generations", "spans", "out"}``.
    """
    from suffix_index.engine import check_match_parameters
    from suffix_index.match import BYTES_PER_TOKEN, iter_batches

    min_tokens, min_bytes, batch_size = check_match_parameters(min_tokens, min_bytes, batch_size)
    out = check_output_file(out)
    eff_min_bytes = BYTES_PER_TOKEN * int(min_tokens) if min_bytes is None else int(min_bytes)
    rows: list[tuple[Any, str]] = []
    n_gen = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="gen", desc="match", file=sys.stderr)
    batches = iter_batches(read_generations(generations, batch_rows=batch_size), batch_size)
    if hasattr(index, "match_batches"):   # a distributed index: batches in flight at once
        matched = index.match_batches(batches, min_tokens, eff_min_bytes)
    else:
        matched = ((b, index.iter_match(b, min_tokens=min_tokens, min_bytes=eff_min_bytes, batch_size=batch_size))
                   for b in batches)
    for batch, spans in matched:
        n_gen += len(batch)
        texts = {}
        for key, data, _ in batch:
            texts[key] = data
        for s in spans:
            rows.append((s, texts[s.key][s.start : s.end].decode("utf-8", "replace")))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    table = spans_table(rows)
    meta = {
        "min_tokens": str(int(min_tokens)),
        "min_bytes": str(eff_min_bytes),
        "index_manifest_sha256": index.manifest_sha256,
        "index": getattr(index, "location", None) or str(Path(index.path).resolve()),
        "trawl_matches_format": str(MATCHES_FORMAT_VERSION),
        "generations": str(generations),
    }
    table = table.replace_schema_metadata({k: v for k, v in meta.items()})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, out)
    except OSError as exc:
        raise MatchInputError(f"{out}: cannot write the matches file ({exc.strerror or first_line(exc)})") from None
    return {"generations": n_gen, "spans": len(rows), "out": str(out)}
