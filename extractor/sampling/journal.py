"""The sampler's write-ahead journal: finished generations that are not in a Parquet part yet.

``RUN/generations/_journal.bin`` (docs/CONTRACTS.md §3) is a sequence of records, one per
request whose rows came back (the rows of the requests that came back together are written in
one ``writev``)::

    b"trawl-journal " KIND b" " SIZE b" " CRC b"\\n"  then SIZE bytes of payload

* ``KIND`` ``arrow``: the payload is an Arrow IPC stream holding one table of
  :data:`corpora.storage.GENERATIONS_SCHEMA` (the request's rows exactly as they go into the
  part: the sampler's workers convert them anyway, and the stream is their buffers as they are,
  ~40x cheaper to make than a JSON line per row);
* ``KIND`` ``json``: the payload is :func:`journal_line` s, one per row (rows handed over
  without a table, or that do not convert: their part then says why, and so does the resume);
* ``SIZE`` and ``CRC`` in ASCII decimal; ``CRC`` is the CRC-32 of ``b"KIND SIZE"`` followed by
  the payload, so a changed kind or size is caught like a changed payload byte.

Reading (:func:`read_records`) goes record by record and stops at the first one that is
incomplete at the end of the file (a write torn by ``kill -9`` or a full disk: dropped quietly,
those generations were never counted as done) or damaged (a header that does not parse, a CRC
that does not match: a note naming the file, the record and its byte offset). Past a damaged
record nothing is read: its size cannot be trusted, and a completion's text is stored raw in
the Arrow payload, so bytes that look like a record can sit anywhere inside one; resuming past
it could store rows that were never generated. The dropped generations are sampled again: none
is in a part yet, and each has its own seed, so the resumed run ends with the rows of an
undamaged one.

Journals written before this format are still read: ``_journal.jsonl`` (a JSON line per row,
each ending in ``"_crc32"``, the CRC-32 of the line's bytes before it; without any ``"_crc32"``
when older still) and the pre-release ``journal.jsonl``. :func:`journal_line` and
:func:`read_journal_line` are that line format (the scorer's journal uses it too).
"""
from __future__ import annotations

import json
import math
import os
import re
import zlib

import pyarrow as pa

from corpora.storage import GENERATIONS_SCHEMA
from extractor.errors import TrawlError

try:   # optional: a faster JSON writer for the journal (pyproject lists it; the standard library otherwise)
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _orjson = None

JOURNAL_NAME = "_journal.bin"
LEGACY_JOURNALS = ("_journal.jsonl", "journal.jsonl")   # before the records (and the pre-release name)
MAGIC = b"trawl-journal"
ARROW, JSON = b"arrow", b"json"
_HEADER = re.compile(rb"trawl-journal (arrow|json) (0|[1-9][0-9]{0,11}) (0|[1-9][0-9]{0,9})")
_HEADER_MAX = 64         # bytes a header line can take, newline included
_IOV_MAX = 512           # buffers per writev call (Linux allows 1,024)

# -- the line format (legacy journals, json records, the scorer's journal) ------------------

CRC_KEY = "_crc32"
_CRC_TAIL = re.compile(rb'(\{.*), "_crc32": (\d{1,10})\}\r?\n?', re.DOTALL)


def read_journal_line(line: bytes, checked: bool):
    """The row a journal line holds, or None when the line is torn, not JSON or (``checked``: the
    journal carries checksums) does not match its checksum."""
    if checked:
        m = _CRC_TAIL.fullmatch(line)
        if m is None:
            return None
        body = m.group(1) + b"}"
        if zlib.crc32(body) != int(m.group(2)):
            return None
        line = body
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row


def journal_line(row: dict) -> bytes:
    """One journal line for ``row``: its JSON (UTF-8, non-ASCII kept, NaN and infinities as Python's
    ``json`` writes them) with ``"_crc32"`` (the CRC-32 of the bytes of that JSON) added as the last
    key, and a newline. Writers that put several rows in one write join these lines. orjson writes
    the JSON when installed and the row is plain (its floats finite: orjson would write NaN as null);
    else the standard library, whose text ``json.loads`` reads back to the same row either way. The
    checksum covers whichever bytes were written (:func:`read_journal_line`).

    orjson writes every NaN and infinity as ``null``, so its body is kept only when :func:`_finite`
    finds the row's floats finite (a walk over the row's values, whose cost does not grow with its
    strings: a search of the body for ``null`` took 7 us for a row carrying a 5 KB prompt)."""
    if not row:
        raise ValueError("a journal row is never empty")
    body = None
    if _orjson is not None:
        try:
            body = _orjson.dumps(row)
        except TypeError:      # a value orjson does not take (an int past 64 bits, a lone surrogate)
            body = None
        if body is not None and not _finite(row):
            body = None
    if body is None:
        body = json.dumps(row, ensure_ascii=False, allow_nan=True).encode("utf-8")
    return b"%s, \"%s\": %d}\n" % (body[:-1], CRC_KEY.encode(), zlib.crc32(body))


def _finite(row: dict) -> bool:
    """No NaN or infinity among the row's floats (top level, and in lists of numbers); False too
    for anything nested deeper (a dict, a list of lists) or a sum that overflows (the slow way)."""
    total = 0.0
    try:
        for v in row.values():
            c = v.__class__
            if c is float:
                total += v
            elif c is list:
                total += sum(v)
            elif c is dict:
                return False
    except (TypeError, OverflowError):
        return False
    return math.isfinite(total)


# -- records ----------------------------------------------------------------------------------

def _frame(kind: bytes, payload) -> list:
    """A record: its header line and its payload (any bytes-like object), for one writev."""
    size = memoryview(payload).nbytes
    head = b"%s %d" % (kind, size)
    return [b"%s %s %d\n" % (MAGIC, head, zlib.crc32(payload, zlib.crc32(head))), payload]


def arrow_record(table: pa.Table) -> list:
    """The record of ``table`` (rows of GENERATIONS_SCHEMA): an Arrow IPC stream of it."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return _frame(ARROW, sink.getvalue())


def json_record(rows: list[dict]) -> list:
    """The record of ``rows`` as :func:`journal_line` s (rows without a table)."""
    return _frame(JSON, b"".join([journal_line(r) for r in rows]))


def journal_record(rows: list[dict], table: pa.Table | None) -> list:
    """``rows``' record: their table's when they have one, else their JSON lines."""
    return arrow_record(table) if table is not None else json_record(rows)


def write_records(fd: int, buffers: list) -> int:
    """Write ``buffers`` (records' pieces, in order) to ``fd`` with as few ``writev`` calls as the
    kernel allows; return the bytes written. Raises OSError as the write does (the caller cuts
    the file back to where it was: a record is whole or absent)."""
    total = 0
    i = 0
    while i < len(buffers):
        chunk = buffers[i:i + _IOV_MAX]
        want = sum(memoryview(b).nbytes for b in chunk)
        done = os.writev(fd, chunk)
        total += done
        if done < want:                       # a short write: the rest of this chunk one piece at a time
            rest = memoryview(b"".join([bytes(memoryview(b)) for b in chunk]))[done:]
            while rest:
                n = os.write(fd, rest)
                rest = rest[n:]
                total += n
        i += _IOV_MAX
    return total


def read_records(path: str, data: bytes) -> tuple[list[tuple[int, bytes, memoryview]], list[str]]:
    """The whole, undamaged records of journal ``path`` (its bytes ``data``) in order, as
    ``(number, kind, payload)``; and one note per damaged record (reading stops there, see the
    module's docstring). An incomplete last record is dropped without a note."""
    out: list = []
    notes: list[str] = []
    view = memoryview(data)
    pos, number, end = 0, 0, len(data)
    while pos < end:
        number += 1
        nl = data.find(b"\n", pos, min(end, pos + _HEADER_MAX))
        if nl < 0:
            if end - pos < _HEADER_MAX and MAGIC.startswith(data[pos:pos + len(MAGIC)]) and b"\n" not in data[pos:]:
                break                          # a header torn by the last write
            notes.append(_damaged(path, number, pos, "its header is not a journal record's"))
            break
        m = _HEADER.fullmatch(data, pos, nl)
        if m is None:
            notes.append(_damaged(path, number, pos, "its header is not a journal record's"))
            break
        kind, size, crc = m.group(1), int(m.group(2)), int(m.group(3))
        start, stop = nl + 1, nl + 1 + size
        if stop > end:
            break                              # the last write, torn
        payload = view[start:stop]
        head = b"%s %d" % (kind, size)
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            notes.append(_damaged(path, number, pos, "its bytes do not match its checksum"))
            break
        out.append((number, kind, payload))
        pos = stop
    return out, notes


def _damaged(path: str, number: int, offset: int, why: str) -> str:
    return (f"{path}: record {number} (byte {offset}) is damaged ({why}); it and every record after it are "
            f"dropped: those generations are sampled again")


def record_table(path: str, number: int, payload) -> pa.Table:
    """The table an ``arrow`` record holds (checked: GENERATIONS_SCHEMA, valid buffers), or a
    one-line TrawlError naming the file and the record (its checksum matched, so it was written
    as it is: by another program, or edited with the checksum redone)."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
        if not table.schema.equals(GENERATIONS_SCHEMA):
            raise ValueError("not the generations schema")
        table.validate(full=True)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise TrawlError(f"{path}: record {number}: damaged journal record ({first}); the journal is written by "
                         f"trawl, so it was changed outside it: restore it, or delete it to sample its generations "
                         f"again with --resume") from None
    return table


def record_rows(path: str, number: int, payload) -> list[tuple[int, object]]:
    """The ``(line number, row)`` s of a ``json`` record; a line that does not read is a one-line
    TrawlError (the record's checksum matched: see :func:`record_table`)."""
    rows = []
    for lineno, line in enumerate(bytes(payload).splitlines(keepends=True), 1):
        row = read_journal_line(line, True)
        if row is None:
            raise TrawlError(f"{path}: record {number} line {lineno}: damaged journal row (not a checksummed JSON "
                             f"row); the journal is written by trawl, so it was changed outside it: restore it, or "
                             f"delete it to sample its generations again with --resume")
        if isinstance(row, dict):
            row.pop(CRC_KEY, None)
        rows.append((lineno, row))
    return rows
