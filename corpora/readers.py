"""Readers: turn input files into a stream of :class:`Record` objects.

Supported inputs (chosen by the file name, compression by the last suffix):

* JSON Lines: ``.jsonl``, ``.ndjson``, ``.json`` (one JSON object a line), plain or
  compressed with gzip (``.gz``) or Zstandard (``.zst``);
* Parquet: ``.parquet``, ``.pq``;
* Arrow IPC / Feather v2: ``.arrow``, ``.feather``, ``.ipc`` (file or stream format);
* a directory: every regular file below it, in sorted path order, is one text
  document (symlinks to files are followed, hidden files and ``__pycache__`` are
  skipped); a plain text file given directly is one document too.

Guarantees:

* records come in a deterministic order: the sources in the order given, a
  directory's files sorted by path, rows in file order;
* ``Record.text`` is always a ``str`` that encodes to valid UTF-8. **Repair
  policy**: bytes that are not valid UTF-8 (in text files and JSON lines) and lone
  surrogates (from JSON ``\\udXXX`` escapes or Arrow/Parquet strings) are each
  replaced by U+FFFD REPLACEMENT CHARACTER, following Python's ``errors="replace"``
  (one U+FFFD per maximal invalid subsequence); such a record has
  ``repaired=True`` and is counted in the ingest statistics;
* ``Record.metadata`` holds every other column/field of the row (JSON-serializable);
* bad input raises :class:`corpora.CorpusError` naming the file (and line): invalid
  JSON, a row that is not an object, a missing text field, a text field that is not
  a string, a binary file (a NUL byte in its first 8 KiB) in a directory, an
  unreadable or unknown file.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from corpora.errors import CorpusError
from corpora.locations import is_url
from corpora.storage import PARQUET_ERRORS, PARQUET_READ_OPTIONS, first_line

JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
ARROW_SUFFIXES = {".arrow", ".feather", ".ipc"}
COMPRESSION_SUFFIXES = {".gz", ".zst", ".zstd"}
BINARY_SNIFF_BYTES = 8192


@dataclass
class Record:
    """One input document before it is numbered and sharded."""

    source: str
    text: str | None
    ext_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    repaired: bool = False


def repair_text(text: str) -> tuple[str, bool]:
    """Return ``(text, repaired)`` with lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        # surrogatepass keeps *paired* surrogates correct; unpaired ones become U+FFFD
        return fixed, True


UTF8_BOM = b"\xef\xbb\xbf"


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """Decode UTF-8 bytes, replacing invalid sequences by U+FFFD; report whether any were."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True


def input_kind(path: Path) -> str:
    """Classify an input path: ``dir``, ``jsonl``, ``parquet``, ``arrow`` or ``text``."""
    if path.is_dir():
        return "dir"
    return kind_by_name(path)


def kind_by_name(path: Path) -> str:
    """A file's kind from its name alone: ``jsonl``, ``parquet``, ``arrow`` or ``text``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in JSONL_SUFFIXES:
        return "jsonl"
    if last in PARQUET_SUFFIXES:
        return "parquet"
    if last in ARROW_SUFFIXES:
        return "arrow"
    return "text"


def read_sources(
    sources: Iterable[str | os.PathLike],
    text_field: str = "text",
    id_field: str | None = None,
    skip_binary: bool = False,
) -> Iterator[Record]:
    """Yield the records of every source, in order (see the module docstring). A source given as
    a URL (``s3://``, ``hf://``, ...: :mod:`corpora.locations`) is read through :func:`read_url`."""
    for src in sources:
        if is_url(src):
            yield from read_url(str(src), text_field=text_field, id_field=id_field, skip_binary=skip_binary)
            continue
        path = Path(src)
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        kind = input_kind(path)
        if kind == "dir":
            yield from read_directory(path, skip_binary=skip_binary)
        elif kind == "jsonl":
            yield from read_jsonl(path, text_field, id_field)
        elif kind == "parquet":
            yield from read_parquet(path, text_field, id_field)
        elif kind == "arrow":
            yield from read_arrow(path, text_field, id_field)
        else:
            rec = read_text_file(path, skip_binary=skip_binary)
            if rec is not None:
                yield rec


# --------------------------------------------------------------------------- text files


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data[:BINARY_SNIFF_BYTES]


def read_text_file(path: Path, skip_binary: bool = False, source: str | None = None) -> Record | None:
    """One file, one document. Binary files raise (or return None with ``skip_binary``). ``source``:
    the name the record and the errors give the file (its URL when fetched from a store)."""
    shown = source or path
    try:
        data = _read_maybe_compressed(path, shown)
    except OSError as exc:
        raise CorpusError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    if _is_binary(data):
        if skip_binary:
            return None
        raise CorpusError(
            f"{shown}: binary file (NUL byte in the first {BINARY_SNIFF_BYTES} bytes); "
            "remove it or pass --skip-binary"
        )
    if data.startswith(UTF8_BOM):  # utf-8-sig: a BOM at the start of the file is not text
        data = data[len(UTF8_BOM):]
    text, repaired = decode_bytes(data)
    return Record(source=source or str(path), text=text, repaired=repaired)


def iter_directory_files(root: Path) -> Iterator[Path]:
    """Regular files below ``root`` in sorted order, skipping hidden entries and caches."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                yield p


def read_directory(root: Path, skip_binary: bool = False) -> Iterator[Record]:
    for p in iter_directory_files(root):
        rec = read_text_file(p, skip_binary=skip_binary)
        if rec is not None:
            yield rec


def _read_maybe_compressed(path: Path, shown=None) -> bytes:
    shown = shown or path
    suffix = path.suffix.lower()
    if suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as exc:   # BadGzipFile is an OSError
            raise CorpusError(f"{shown}: not a valid gzip file: {exc}") from None
    if suffix in (".zst", ".zstd"):
        import zstandard

        try:
            with _ZstdFrames(path, shown=shown) as f:
                return f.read()
        except zstandard.ZstdError as exc:
            raise CorpusError(f"{shown}: not a valid zstd file: {exc}") from None
    with open(path, "rb") as f:
        return f.read()


def _open_binary_stream(path: Path, shown=None) -> io.BufferedIOBase:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix in (".zst", ".zstd"):
        return io.BufferedReader(_ZstdFrames(path, shown=shown))
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a (multi-frame) Zstandard file, read frame by frame, that
    raises :class:`CorpusError` at the end when the last frame is incomplete: zstandard's
    ``stream_reader`` returns a truncated file's partial data as if it were whole."""

    def __init__(self, path: Path, chunk: int = 1 << 20, shown=None):
        import zstandard

        self.path, self.chunk = shown or path, chunk
        self._raw = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = None          # the frame being decompressed (None between frames)
        self._pending = b""        # compressed bytes read but not fed yet
        self._out = b""

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Decompress until some output is ready; False at the end of the file."""
        while not self._out:
            if not self._pending:
                self._pending = self._raw.read(self.chunk)
                if not self._pending:
                    if self._dobj is not None:
                        raise CorpusError(f"{self.path}: truncated zstd file (its last frame is incomplete)")
                    return False
            if self._dobj is None:
                self._dobj = self._dctx.decompressobj()
            data, self._pending = self._pending, b""
            self._out = self._dobj.decompress(data)
            if self._dobj.eof:
                self._pending = self._dobj.unused_data
                self._dobj = None
        return True

    def readinto(self, buf) -> int:
        if not self._fill():
            return 0
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


# --------------------------------------------------------------------------- JSON Lines


def _row_to_record(
    row: dict[str, Any], source: str, where: str, text_field: str, id_field: str | None
) -> Record:
    if text_field not in row:
        fields = ", ".join(sorted(map(str, row))[:10]) or "none"
        raise CorpusError(f"{where}: no field {text_field!r} (fields: {fields}); use --text-field")
    text = row[text_field]
    if text is not None and not isinstance(text, str):
        raise CorpusError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    ext_id = None
    if id_field is not None:
        if id_field not in row:
            raise CorpusError(f"{where}: no field {id_field!r} (the --id-field)")
        ext_id = None if row[id_field] is None else str(row[id_field])
    meta = {k: v for k, v in row.items() if k != text_field and k != id_field}
    repaired = False
    if text is not None:
        text, repaired = repair_text(text)
    return Record(source=source, text=text, ext_id=ext_id, metadata=meta, repaired=repaired)


def read_jsonl(path: Path, text_field: str = "text", id_field: str | None = None,
               name: str | None = None) -> Iterator[Record]:
    """One JSON object a line; blank lines are ignored; ``source`` is ``path#line`` (``name``: the
    file's name in sources and errors, its URL when fetched from a store)."""
    local, path = path, (name or path)
    try:
        stream = _open_binary_stream(Path(local), shown=path)
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror or exc}") from None
    lineno = 0
    try:
        with stream:
            for raw in stream:
                lineno += 1
                if lineno == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]  # utf-8-sig: a BOM at the start of the file is not text
                if not raw.strip():
                    continue
                line, bad_utf8 = decode_bytes(raw)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
                except RecursionError:
                    raise CorpusError(f"{path}:{lineno}: JSON nested too deeply to read") from None
                if not isinstance(row, dict):
                    raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rec = _row_to_record(row, f"{path}#{lineno}", f"{path}:{lineno}", text_field, id_field)
                rec.repaired = rec.repaired or bad_utf8
                yield rec
    except (OSError, EOFError, zlib.error) as exc:   # zlib.error: a damaged gzip stream
        raise CorpusError(f"{path}:{lineno + 1}: cannot read (truncated or corrupt?): {exc}") from None
    except Exception as exc:  # zstandard errors, etc.
        if isinstance(exc, CorpusError):
            raise
        if type(exc).__module__.startswith("zstandard"):
            raise CorpusError(f"{path}: not a valid zstd file: {exc}") from None
        raise


# --------------------------------------------------------------------------- Parquet / Arrow


def _iter_table_batches(path: Path, batches, schema, text_field: str, id_field: str | None) -> Iterator[Record]:
    import pyarrow as pa

    names = schema.names
    if text_field not in names:
        raise CorpusError(
            f"{path}: no column {text_field!r} (columns: {', '.join(names[:10])}); use --text-field"
        )
    if id_field is not None and id_field not in names:
        raise CorpusError(f"{path}: no column {id_field!r} (the --id-field)")
    ftype = schema.field(text_field).type
    if not (pa.types.is_string(ftype) or pa.types.is_large_string(ftype) or pa.types.is_binary(ftype)
            or pa.types.is_large_binary(ftype) or pa.types.is_null(ftype)):
        raise CorpusError(f"{path}: column {text_field!r} has type {ftype}, not a string")
    is_binary = pa.types.is_binary(ftype) or pa.types.is_large_binary(ftype)
    row = 0
    for batch in batches:
        batch.validate(full=True)   # damaged offsets or lengths are an ArrowInvalid here, not a crash below
        cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        texts = cols[text_field].to_pylist()
        ids = cols[id_field].to_pylist() if id_field is not None else None
        meta_names = [n for n in cols if n != text_field and n != id_field]
        meta_cols = {n: cols[n].to_pylist() for n in meta_names}
        for i, text in enumerate(texts):
            repaired = False
            if text is not None:
                if is_binary:
                    text, repaired = decode_bytes(text)
                else:
                    text, repaired = repair_text(text)
            meta = {n: meta_cols[n][i] for n in meta_names}
            ext = None if ids is None or ids[i] is None else str(ids[i])
            yield Record(source=f"{path}#{row}", text=text, ext_id=ext, metadata=meta, repaired=repaired)
            row += 1


def read_parquet(path: Path, text_field: str = "text", id_field: str | None = None,
                 name: str | None = None) -> Iterator[Record]:
    """Rows of a Parquet file; ``source`` is ``path#row`` (0-based; ``name`` as in :func:`read_jsonl`)."""
    import pyarrow.parquet as pq

    local, path = path, (name or path)
    try:
        pf = pq.ParquetFile(local, **PARQUET_READ_OPTIONS)   # pages with a checksum are verified
        schema = pf.schema_arrow
        schema.names
    except PARQUET_ERRORS as exc:
        raise CorpusError(f"{path}: not a readable Parquet file: {first_line(exc)}") from None
    try:
        yield from _iter_table_batches(path, pf.iter_batches(batch_size=4096), schema, text_field, id_field)
    except PARQUET_ERRORS as exc:   # e.g. OSError: a page checksum mismatch, a short read
        raise CorpusError(f"{path}: corrupt Parquet data: {first_line(exc)}") from None


def read_arrow(path: Path, text_field: str = "text", id_field: str | None = None,
               name: str | None = None) -> Iterator[Record]:
    """Rows of an Arrow IPC file or stream (Feather v2); ``source`` is ``path#row`` (``name`` as in
    :func:`read_jsonl`)."""
    import pyarrow as pa

    local, path = path, (name or path)
    try:
        source = pa.memory_map(str(local), "r")
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: cannot read: {first_line(exc)}") from None
    try:
        try:
            reader = pa.ipc.open_file(source)
            schema = reader.schema
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except PARQUET_ERRORS:   # not the file format (or its footer is damaged): try the stream format
            source.seek(0)
            try:
                reader = pa.ipc.open_stream(source)
                schema = reader.schema
            except PARQUET_ERRORS as exc:
                raise CorpusError(f"{path}: not an Arrow IPC file or stream: {first_line(exc)}") from None
            batches = iter(reader)
        yield from _iter_table_batches(path, batches, schema, text_field, id_field)
    except PARQUET_ERRORS as exc:   # the same failures as Parquet's: Arrow's, OSError, bad UTF-8 in names
        raise CorpusError(f"{path}: corrupt Arrow data: {first_line(exc)}") from None
    finally:
        source.close()


# --------------------------------------------------------------------------- URLs


def url_files(url: str) -> list[tuple[str, str, bool]]:
    """What the input URL names, in order: ``[(url of the file, path on its store, in_folder)]``.
    A URL of one object is that file; a folder (a prefix) is every object below it in sorted order,
    hidden names and ``__pycache__`` skipped, each a text document as a local folder's files are
    (``in_folder``); a URL with ``*``, ``?`` or ``[`` is a glob whose files are read by their suffix."""
    from corpora.locations import has_glob, open_location, store_errors

    loc = open_location(url)
    fs = loc.fs
    with store_errors(url, "list the input"):
        if has_glob(loc.path):
            cut = loc.path[:re.search(r"[*?\[]", loc.path).start()].rsplit("/", 1)[0]
            ucut = loc.url[:re.search(r"[*?\[]", loc.url).start()].rsplit("/", 1)[0]
            found = sorted(p for p in fs.glob(loc.path) if fs.isfile(p))
            if not found:
                raise CorpusError(f"{url}: no file matches")
            return [(ucut + p[len(cut):] if p.startswith(cut) else fs.unstrip_protocol(p), p, False) for p in found]
        if fs.isfile(loc.path):
            return [(loc.url, loc.path, False)]
        if not fs.isdir(loc.path):
            raise CorpusError(f"{url}: no such file or folder")
        base = loc.path.rstrip("/") + "/"
        out = []
        for p in sorted(fs.find(loc.path)):
            rel = p[len(base):] if p.startswith(base) else p
            parts = rel.split("/")
            if any(x.startswith(".") or x == "__pycache__" for x in parts):
                continue
            out.append((f"{loc.url}/{rel}", p, True))
        return out


def read_url(url: str, text_field: str = "text", id_field: str | None = None,
             skip_binary: bool = False) -> Iterator[Record]:
    """The records of an input URL (:func:`url_files`): each file is fetched into a temporary local
    file (one at a time: the local space needed is the largest input file), read by the reader of
    its kind under its URL (sources ``URL#line``, errors naming the URL), then removed."""
    import tempfile

    from corpora.locations import open_location, store_errors

    loc = open_location(url)
    for name, path, in_folder in url_files(url):
        # the temporary file keeps the name's kind and compression suffixes (and nothing odd or long)
        suffix = "".join(x for x in Path(path).suffixes[-2:] if re.fullmatch(r"\.[A-Za-z0-9]{1,12}", x))
        fd, tmp = tempfile.mkstemp(prefix="trawl-input-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out, store_errors(name, "read it"):
                with loc.fs.open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 8 << 20)
            local = Path(tmp)
            kind = "text" if in_folder else kind_by_name(Path(path))
            if kind == "jsonl":
                yield from read_jsonl(local, text_field, id_field, name=name)
            elif kind == "parquet":
                yield from read_parquet(local, text_field, id_field, name=name)
            elif kind == "arrow":
                yield from read_arrow(local, text_field, id_field, name=name)
            else:
                rec = read_text_file(local, skip_binary=skip_binary, source=name)
                if rec is not None:
                    yield rec
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
