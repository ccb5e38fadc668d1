"""Reading a run folder for the report: JSON side files, Parquet files checked for their
required columns, record batches, and string columns as text or bytes.

Guarantees: every failure to read is a :class:`reports.errors.ReportError` naming the file
(a missing run folder or generation part, invalid JSON, an unreadable Parquet file, a missing
required column, damaged data met while streaming); a missing ``run.json`` / ``config.json``
reads as ``{}``. Invalid UTF-8 in a string column never fails: :func:`text` decodes it with
U+FFFD, :func:`raw_bytes` keeps the bytes. Column names per docs/CONTRACTS.md sections 3 and 4.
"""
from __future__ import annotations

import json
import os

import numpy as np

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpora import storage
from reports.errors import ReportError

REQUIRED_GEN_COLUMNS = ("request_id", "attack", "variant", "completion", "token_offsets", "completion_tokens")
REQUIRED_MATCH_COLUMNS = ("request_id", "span_start", "span_end", "tokens", "doc_id", "doc_offset")


def read_json(path: str) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is absent. Invalid JSON, JSON nested too
    deeply and JSON that is not an object are a ReportError naming the file (a damaged run.json read
    as ``{}`` would silently change the report's figures)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        raise ReportError(f"{path}: not valid JSON ({storage.first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: holds a JSON {type(data).__name__}, not an object (damaged?)")
    return data


def generation_parts(run_dir: str) -> list[str]:
    """The run's generation parts (corpora.storage.generation_parts); none is a ReportError."""
    if not os.path.isdir(run_dir):
        raise ReportError(f"{run_dir}: no such run folder")
    parts = storage.generation_parts(run_dir)
    if not parts:
        raise ReportError(f"{run_dir}: no generations (expected generations/part-*.parquet)")
    return parts


def open_parquet(path: str, required) -> pq.ParquetFile:
    """The Parquet file at ``path``, checked to hold the ``required`` columns."""
    try:
        pf = pq.ParquetFile(path, **storage.PARQUET_READ_OPTIONS)   # pages' checksums verified
        names = set(pf.schema_arrow.names)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ReportError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                          f"{storage.first_line(exc)})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)} (see docs/CONTRACTS.md)")
    return pf


def iter_batches(pf: pq.ParquetFile, path: str, columns, batch_rows: int):
    """Record batches of at most ``batch_rows`` rows of ``columns``; damaged data is a ReportError."""
    try:
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
    except ReportError:
        raise
    except storage.PARQUET_ERRORS as exc:
        raise ReportError(f"{path}: damaged Parquet data ({storage.first_line(exc)})") from None


def read_ahead(items):
    """The items of the iterator ``items``, each produced while the caller works on the one before
    (a helper thread; at most one item ready ahead of the caller's). Exceptions raised by ``items``
    reach the caller where the item would have. The caller's pass over a batch and the decoding of
    the next overlap, and the memory of a batch the caller has let go is reused by the next one at
    once, before the allocator hands it back to the system to be faulted in again (Arrow's
    mimalloc returns freed pages after about 10 ms, a batch's work takes longer). Stopping early
    (an exception in the caller) stops the helper after its current item."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue()
    wanted = threading.Semaphore(1)          # the helper produces an item only when one was taken
    stop = threading.Event()
    end = object()

    def work():
        try:
            it = iter(items)
            while True:
                wanted.acquire()
                if stop.is_set():
                    return
                x = next(it, end)
                ready.put((True, x))
                if x is end:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            ready.put((False, exc))

    helper = threading.Thread(target=work, name="trawl-report-read-ahead", daemon=True)
    helper.start()
    try:
        while True:
            ok, x = ready.get()
            if not ok:
                raise x
            if x is end:
                return
            wanted.release()
            yield x
    finally:
        stop.set()
        wanted.release()
        helper.join()


def encoded(col: pa.Array, fill: bytes) -> pa.DictionaryArray:
    """A string or binary column as a dictionary array of binary values without nulls (a null is
    ``fill``): a dictionary array (a batch's column encoded once, shared by several passes) keeps its
    codes, its dictionary cast to binary (a null code pointing at ``fill`` appended to it); another
    column is dictionary-encoded here. The dictionary may hold a value twice (callers that compare codes
    encode the dictionary itself, which is small)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        return pc.dictionary_encode(pc.fill_null(pc.cast(col, pa.binary()), fill))
    values = pc.fill_null(pc.cast(col.dictionary, pa.binary()), fill)
    idx = col.indices
    if idx.null_count:
        idx = pc.fill_null(idx, pa.scalar(len(values), idx.type))
        values = pa.concat_arrays([values, pa.array([fill], pa.binary())])
    return pa.DictionaryArray.from_arrays(idx, values)


def decoded(col: pa.Array) -> pa.Array:
    """A dictionary array's values row by row (any other array as it is)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def list_rows(col: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(each row's list length, the values of the rows' lists laid end to end)`` of a list column
    for ``rows`` (ascending or not): a null list counts as empty, a null value reads as 0. Gathered
    through the column's offsets and child values (no copy of the lists as a take would make):
    equal to ``list_flatten(take(col, rows))`` with nulls filled (tests/reports)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    rows = np.asarray(rows, dtype=np.int64)
    off = col.offsets.to_numpy(zero_copy_only=False).astype(np.int64)     # the slice's len + 1 offsets
    start = off[rows]
    n = off[rows + 1] - start
    if col.null_count:
        n = np.where(col.is_valid().to_numpy(zero_copy_only=False)[rows], n, 0)
    values = col.values
    if values.null_count:
        values = pc.fill_null(values, 0)
    flat = values.to_numpy(zero_copy_only=False)
    total = int(n.sum())
    if not total:
        return n, flat[:0]
    first = np.cumsum(n) - n                 # each row's place in the output
    idx = np.arange(total, dtype=np.int64) + np.repeat(start - first, n)
    return n, flat[idx]


def text(col: pa.Array) -> list[str]:
    """Strings of a string column, decoding invalid UTF-8 with U+FFFD instead of failing."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.large_binary())
    return [b.decode("utf-8", "replace") if b is not None else "" for b in col.to_pylist()]


def raw_bytes(col: pa.Array) -> list[bytes]:
    """Values of a string or binary column as bytes (null: ``b""``)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.large_binary())
    return [b if b is not None else b"" for b in col.to_pylist()]


def binary_buffers(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of a string/binary column laid end to end (uint8, nulls empty) and each value's
    start, the end appended."""
    arr = pc.cast(col, pa.large_binary()) if not pa.types.is_large_binary(col.type) else col
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.fill_null(arr, b"")
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = (np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and len(bufs[2])
            else np.zeros(0, np.uint8))
    return data, off.astype(np.int64)


# -- bytes as arrays (the report's batched text and hash passes) ---------------------------------
ASCII_LOWER = np.arange(256, dtype=np.uint8)       # a byte's str.lower() for ASCII text (a look-up table)
ASCII_LOWER[65:91] += 32
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def words_at(buf, width: int = 8) -> np.ndarray:
    """The little-endian ``width``-byte unsigned word starting at every byte offset of ``buf`` (bytes or
    a uint8 array; ``len(buf) - width + 1`` of them, overlapping): a view with a 1-byte stride, nothing
    copied. Callers pad ``buf`` when they read near its end."""
    return np.ndarray((len(buf) - width + 1,), dtype=f"<u{width}", buffer=buf, offset=0, strides=(1,))


def eight_bytes(data: np.ndarray, at: np.ndarray, ar8: np.ndarray) -> np.ndarray:
    """``data[at[i]:at[i] + 8]`` for every i as a little-endian uint64, zeros past the buffer's end.

    Composed from the two aligned 8-byte words holding those bytes, ``(w[a] >> 8r) | (w[a + 1] <<
    (64 - 8r))`` with ``a, r = divmod(at - lead, 8)`` (``lead``: bytes before the buffer's first
    8-byte-aligned address; ``<< 1 << (63 - 8r)`` so that ``r = 0`` shifts by less than 64), both read
    by ``np.take`` of an aligned view: NumPy copies an unaligned word element by element, a gather
    of aligned words is a plain load (0.19 -> 0.14 s for the 8M reads of 1M rows' fingerprints, the
    reads' cache misses are the rest). Offsets outside the aligned words (the buffer's first and last bytes)
    are read as before (:func:`eight_bytes_unaligned`); tests/reports compare the two."""
    n = len(data)
    lead = (-data.ctypes.data) % 8 if n and data.flags.c_contiguous else 0
    nw = (n - lead) // 8
    if n < 8 or not data.flags.c_contiguous or nw < 2:
        return eight_bytes_unaligned(data, at, ar8)
    words = data[lead:lead + nw * 8].view("<u8")
    q = at - lead
    a = q >> 3
    inside = (q >= 0) & (a + 1 < nw)
    a = np.where(inside, a, 0)
    r8 = ((q & 7) << 3).astype(np.uint64)
    word = np.take(words, a) >> r8
    word |= (np.take(words, a + 1) << np.uint64(1)) << (np.uint64(63) - r8)
    edge = np.nonzero(~inside)[0]
    if len(edge):
        word[edge] = eight_bytes_unaligned(data, at[edge], ar8)
    return word


def eight_bytes_unaligned(data: np.ndarray, at: np.ndarray, ar8: np.ndarray) -> np.ndarray:
    """:func:`eight_bytes` through an unaligned 8-byte view at every offset (one look-up per row)."""
    n = len(data)
    if n < 8:
        idx = at[:, None] + ar8[None, :]
        return (np.take(data, idx, mode="clip") * (idx < n)).astype(np.uint8).view("<u8").ravel()
    word = words_at(data)[np.minimum(at, n - 8)]
    late = np.nonzero(at > n - 8)[0]
    if len(late):
        idx = at[late, None] + ar8[None, :]
        word[late] = (np.take(data, idx, mode="clip") * (idx < n)).astype(np.uint8).view("<u8").ravel()
    return word


def low_bytes_mask(m: np.ndarray) -> np.ndarray:
    """uint64 masks keeping the low ``m`` bytes of a little-endian word (``m`` clipped to 0..8)."""
    return np.where(m >= 8, _ALL_ONES, (np.uint64(1) << (8 * np.clip(m, 0, 7)).astype(np.uint64)) - np.uint64(1))


def as_string(col: pa.Array) -> pa.Array:
    """The column cast to ``string`` (a no-op when it is one)."""
    return col if col.type == pa.string() else pc.cast(col, pa.string())


def completion_bytes(parts: list[str], request_id: str) -> bytes | None:
    """The completion (UTF-8 bytes) of one generation, reading only the request ids and then the
    one row group that holds it; None when no part holds ``request_id``."""
    for path in parts:
        pf = open_parquet(path, REQUIRED_GEN_COLUMNS)
        for rg in range(pf.metadata.num_row_groups):
            try:
                ids = pf.read_row_group(rg, columns=["request_id"]).column(0)
                hit = pc.index(as_string(ids.combine_chunks()), request_id).as_py()
                if hit is not None and hit >= 0:
                    comp = pf.read_row_group(rg, columns=["completion"]).column(0).combine_chunks()
                    return raw_bytes(comp.slice(hit, 1))[0]
            except storage.PARQUET_ERRORS as exc:
                raise ReportError(f"{path}: damaged Parquet data ({storage.first_line(exc)})") from None
    return None
