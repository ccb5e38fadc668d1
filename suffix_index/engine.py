"""The query engine: an index opened memory-mapped, and questions asked of it.

Modelled on infini-gram's engine object::

    idx = SuffixIndex.open("INDEX")        # maps the files; nothing is read into RAM
    idx.count("some text")                 # occurrences over all shards
    idx.find("some text", limit=10)        # [Occurrence(shard, position, doc_id, doc_offset, source)]
    idx.document(42)                       # corpora.Document
    idx.match([(key, text, token_offsets_or_None), ...], min_tokens=50)   # [Span]

Guarantees: opening validates the manifest and the file sizes (a truncated or
missing file raises :class:`IndexFormatError` naming it); the ``.bytes`` and
``.sa`` files are mapped read-only with ``mmap`` and wrapped by NumPy without a
copy, the document tables are memory-mapped Arrow; queries only touch the pages
they need. A ``SuffixIndex`` is read-only and can be shared by threads.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from corpora.storage import first_line
from suffix_index.errors import IndexFormatError, check_int
from suffix_index.manifest import FILE_KINDS, MANIFEST_NAME, load_manifest, manifest_sha256
from suffix_index.match import DEFAULT_MIN_TOKENS, Matcher, Span, iter_batches
from suffix_index.search import checked_pointers, sa_range

DEFAULT_BATCH = 1000


@dataclass(frozen=True)
class Occurrence:
    shard: int
    position: int  # offset in the shard's .bytes file
    doc_id: int
    doc_offset: int  # offset of the occurrence inside the document's UTF-8 text
    source: str | None


def _map(path: Path, dtype) -> tuple[np.ndarray, mmap.mmap | None]:
    size = path.stat().st_size
    if size == 0:
        return np.empty(0, dtype=dtype), None
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        mm.madvise(mmap.MADV_RANDOM)
    except (AttributeError, OSError):
        pass
    return np.frombuffer(mm, dtype=dtype), mm


class _Shard:
    """One mapped shard: ``text`` (uint8), ``sa`` (uint32/64), and its document table."""

    def __init__(self, index_dir: Path, entry: dict[str, Any], number: int):
        self.number = number
        self.entry = entry
        files = entry["files"]
        width = int(entry["pointer_width"])
        if width not in (4, 8):
            raise IndexFormatError(f"{index_dir / files['sa']['name']}: unsupported pointer width {width}")
        self.text, self._mm_text = _map(index_dir / files["bytes"]["name"], np.uint8)
        self.sa_path = index_dir / files["sa"]["name"]
        self.sa, self._mm_sa = _map(self.sa_path, np.uint32 if width == 4 else np.uint64)
        if len(self.sa) != len(self.text):
            raise IndexFormatError(
                f"{index_dir / files['sa']['name']}: {len(self.sa)} pointers for {len(self.text)} bytes; rebuild the index"
            )
        dpath = index_dir / files["docs"]["name"]
        try:
            self._docs_src = pa.memory_map(str(dpath), "r")
            self.docs = pa.ipc.open_file(self._docs_src).read_all()
            self.docs.validate(full=True)   # damaged offsets are an error here, not a crash or garbage later
            self.doc_starts = self.docs.column("start").to_numpy()
            self.doc_ids = self.docs.column("doc_id").to_numpy()
            self.doc_lengths = self.docs.column("length").to_numpy()
        except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as exc:
            raise IndexFormatError(f"{dpath}: corrupt document table ({first_line(exc)}); rebuild the index") from None
        if len(self.doc_starts) != int(entry["documents"]):
            raise IndexFormatError(f"{dpath}: {len(self.doc_starts)} documents, the manifest says {entry['documents']}")
        # the manifest's own figures agree with the files (the manifest carries no checksum of itself)
        if len(self.doc_ids) and int(self.doc_ids[0]) != int(entry["first_doc_id"]):
            raise IndexFormatError(f"{index_dir / MANIFEST_NAME}: shard {number} starts at document "
                                   f"{int(self.doc_ids[0])}, the manifest says {entry['first_doc_id']}; rebuild the index")
        if len(self.text) != int(entry["bytes"]):
            raise IndexFormatError(f"{index_dir / MANIFEST_NAME}: shard {number} holds {len(self.text)} bytes, the "
                                   f"manifest says {entry['bytes']}; rebuild the index")

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Document row and offset inside the document for byte positions of this shard."""
        rows = np.searchsorted(self.doc_starts, positions, side="right") - 1
        rows = np.maximum(rows, 0)
        return rows, positions - self.doc_starts[rows]

    def close(self) -> None:
        self.text = self.sa = None  # drop the views before closing the maps
        for mm in (self._mm_text, self._mm_sa):
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass  # a caller still holds a view; the map closes when it is freed
        self._docs_src.close()


def check_match_parameters(min_tokens, min_bytes, batch_size) -> tuple[int, int | None, int]:
    """Validated ``(min_tokens, min_bytes, batch_size)``: each >= 1 (``min_bytes`` may be None)."""
    min_tokens = check_int("min_tokens", min_tokens, 1)
    if min_bytes is not None:
        min_bytes = check_int("min_bytes", min_bytes, 1)
    return min_tokens, min_bytes, check_int("batch_size", batch_size, 1)


class SuffixIndex:
    """A byte-level suffix-array index over a corpus (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[_Shard]):
        self.path = path
        self.location: str | None = None   # the URL it was read from (corpora.locations), else None
        self.manifest = manifest
        self.shards = shards
        self._blocks_checked = False
        self._blocks_lock = threading.Lock()
        self._good_blocks: set[tuple[int, str, int]] = set()   # (shard, kind, block) compared and intact
        self._good_docs: set[int] = set()                       # shards whose document table was compared
        self._matcher = Matcher(shards)
        self._doc_firsts = np.array([int(s.entry["first_doc_id"]) for s in shards], dtype=np.int64)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, shards: Iterable[int] | None = None) -> "SuffixIndex":
        """Map the index at ``path``. ``shards``: the numbers of the shards to map (default: all);
        a subset serves one match actor (:mod:`suffix_index.distributed`), whose queries then cover
        those shards only (``Span.shard`` and ``Occurrence.shard`` stay the index's numbers only
        through :meth:`shard_number`). A URL (``s3://...``) maps this node's checked copy
        (:func:`suffix_index.manifest.local_index`)."""
        from suffix_index.manifest import local_index

        location = str(path)
        path = local_index(path)
        manifest = load_manifest(path)
        entries = manifest["shards"]
        numbers = range(len(entries)) if shards is None else list(shards)
        idx = cls(path, manifest, [_Shard(path, entries[i], i) for i in numbers])
        if location != str(path) and "://" in location:   # read from a URL (local_index fetched it)
            idx.location = location
        return idx

    def shard_number(self, local: int) -> int:
        """The index's number of the ``local``-th shard this object mapped."""
        return self.shards[local].number

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self) -> "SuffixIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prefetch(self, max_fraction: float = 0.5) -> bool:
        """Ask the kernel to read the index into the page cache ahead of queries.

        A cold index otherwise costs a random disk read per binary-search step
        (matching 1,000 generations against a cold 1 GB index took ~100 s here,
        against ~0.6 s warm). Only done when the index files are at most
        ``max_fraction`` of the available memory; returns whether it was. The
        read-ahead is asynchronous (``MADV_WILLNEED``): nothing is copied into
        this process.
        """
        size = sum(int(s["files"][k]["size"]) for s in self.manifest["shards"] for k in FILE_KINDS)
        try:
            avail = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            return False
        if size > max_fraction * avail:
            return False
        for sh in self.shards:
            for mm in (sh._mm_text, sh._mm_sa):
                if mm is not None:
                    try:
                        mm.madvise(mmap.MADV_WILLNEED)
                    except (AttributeError, OSError, ValueError):
                        return False
        return True

    def check_blocks(self, threads: int | None = None) -> int:
        """Compare every block of the ``.bytes`` and ``.sa`` files with its CRC-32 in the manifest
        (indexes built before block checksums have none and pass); a mismatch raises
        :class:`IndexFormatError` naming the file and the block. Done once per opened index, before
        the first match: a damaged byte would otherwise give missing and invented spans silently.
        Costs one read of the index (the matcher's prefetch reads it anyway) at CRC-32 speed (several
        GB/s per core; ``threads`` cores). Returns the number of blocks checked."""
        with self._blocks_lock:
            if self._blocks_checked:
                return 0
            work = []
            for sh in self.shards:
                for kind, arr in (("bytes", sh.text), ("sa", sh.sa)):
                    f = sh.entry["files"][kind]
                    blocks = f.get("blocks")
                    if not blocks or arr is None or not len(arr):
                        continue
                    view = memoryview(arr).cast("B")
                    size = int(blocks["size"])
                    for i, want in enumerate(blocks["crc32"]):
                        work.append((self.path / f["name"], view, i, size, int(want)))

            def one(item):
                path, view, i, size, want = item
                return None if zlib.crc32(view[i * size:(i + 1) * size]) == want else item

            threads = threads or min(4, os.cpu_count() or 1)
            if threads > 1 and len(work) > 8:
                with ThreadPoolExecutor(threads) as pool:   # zlib releases the GIL on big buffers
                    bad = [b for b in pool.map(one, work) if b is not None]
            else:
                bad = [b for b in map(one, work) if b is not None]
            for sh in self.shards:   # the small document tables: whole-file sha256
                self._check_docs(sh)
            if bad:
                path, _, i, size, _ = bad[0]
                more = f" and {len(bad) - 1} other block(s)" if len(bad) > 1 else ""
                raise IndexFormatError(f"{path}: block {i} (bytes {i * size}-{(i + 1) * size - 1}){more} does not match "
                                       f"its checksum in {MANIFEST_NAME}; the index is damaged: rebuild it with "
                                       f"'trawl index build'")
            self._blocks_checked = True
            return len(work)

    def _check_docs(self, sh: "_Shard") -> None:
        """Compare a shard's document table with its sha256 (once; indexes from before block
        checksums are left to ``index verify``, as ``match`` does)."""
        if sh.number in self._good_docs or "blocks" not in sh.entry["files"]["bytes"]:
            return
        f = sh.entry["files"]["docs"]
        path = self.path / f["name"]
        with open(path, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() != f["sha256"]:
                raise IndexFormatError(f"{path}: does not match its sha256 in {MANIFEST_NAME}; the index "
                                       f"is damaged: rebuild it with 'trawl index build'")
        self._good_docs.add(sh.number)

    def _check_touched(self, sh: "_Shard", kind: str, starts, ends) -> None:
        """Compare the blocks of ``sh``'s ``kind`` file (``bytes`` or ``sa``) that hold the byte
        ranges ``[starts[i], ends[i])`` with their CRC-32s, each block once per opened index:
        ``count``, ``find`` and ``document`` read a few blocks of a large index (O(log N) for a
        search), so they check what they read instead of the whole index (which ``match`` does)."""
        if self._blocks_checked:
            return
        f = sh.entry["files"][kind]
        blocks = f.get("blocks")
        arr = sh.text if kind == "bytes" else sh.sa
        if not blocks or arr is None or not len(arr):
            return
        size = int(blocks["size"])
        starts = np.asarray(starts, dtype=np.int64).ravel()
        ends = np.asarray(ends, dtype=np.int64).ravel()
        keep = ends > starts
        first, last = starts[keep] // size, (ends[keep] - 1) // size
        ids: set[int] = set()
        for a, b in zip(first.tolist(), last.tolist()):
            ids.update(range(a, b + 1))
        view = memoryview(arr).cast("B")
        crcs = blocks["crc32"]
        for i in sorted(ids):
            if (sh.number, kind, i) in self._good_blocks or i >= len(crcs):
                continue
            if zlib.crc32(view[i * size:(i + 1) * size]) != int(crcs[i]):
                raise IndexFormatError(f"{self.path / f['name']}: block {i} (bytes {i * size}-{(i + 1) * size - 1}) "
                                       f"does not match its checksum in {MANIFEST_NAME}; the index is damaged: "
                                       f"rebuild it with 'trawl index build'")
            self._good_blocks.add((sh.number, kind, i))

    def _check_trace(self, sh: "_Shard", trace: list) -> None:
        """The blocks a traced search read (see :func:`suffix_index.search.sa_search`)."""
        if self._blocks_checked or not trace:
            return
        ranks = np.concatenate([t[0] for t in trace])
        pos = np.concatenate([t[1] for t in trace])
        length = np.concatenate([t[2] for t in trace])
        width = sh.sa.itemsize
        self._check_touched(sh, "sa", ranks * width, (ranks + 1) * width)
        self._check_touched(sh, "bytes", pos, np.minimum(pos + length, len(sh.text)))

    @property
    def documents(self) -> int:
        return int(self.manifest["documents"])

    @property
    def bytes(self) -> int:
        return int(self.manifest["bytes"])

    @property
    def manifest_sha256(self) -> str:
        return manifest_sha256(self.path)

    def __repr__(self) -> str:
        return f"SuffixIndex({str(self.path)!r}, shards={len(self.shards)}, documents={self.documents}, bytes={self.bytes})"

    # ------------------------------------------------------------------ queries
    @staticmethod
    def _pattern(text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data + b"\0" * 8, dtype=np.uint8), len(data)

    def _ranges(self, text: str | bytes) -> list[tuple[int, int]]:
        G, n = self._pattern(text)
        if n == 0:
            return [(0, len(s.sa)) for s in self.shards]
        xs = np.zeros(1, dtype=np.int64)
        xl = np.full(1, n, dtype=np.int64)
        out = []
        for s in self.shards:
            trace: list = []
            lo, hi = sa_range(s.text, s.sa, G, xs, xl, name=s.sa_path, trace=trace)
            self._check_trace(s, trace)   # damage in what the search read: an error, never a wrong count
            out.append((int(lo[0]), int(hi[0])))
        return out

    def count(self, text: str | bytes) -> int:
        """Occurrences of ``text`` (its UTF-8 bytes) over all shards; separators included for ''."""
        return sum(hi - lo for lo, hi in self._ranges(text))

    def find(self, text: str | bytes, limit: int | None = 100) -> list[Occurrence]:
        """Occurrences of ``text``, lowest ``(shard, position)`` first, at most ``limit``.

        ``limit=None``: all of them; ``limit=0``: none (use :meth:`count`); a negative
        limit raises :class:`ParameterError`.
        """
        if limit is not None:
            limit = check_int("limit", limit, 0)
            if limit == 0:
                return []
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if not data:
            return []
        out: list[Occurrence] = []
        for s, (lo, hi) in zip(self.shards, self._ranges(data)):
            if hi <= lo:
                continue
            w = s.sa.itemsize
            self._check_touched(s, "sa", [lo * w], [hi * w])
            self._check_docs(s)
            pos = np.sort(checked_pointers(s.sa[lo:hi], len(s.text), s.sa_path))
            if limit is not None:
                pos = pos[: max(0, limit - len(out))]
            rows, offs = s.locate(pos)
            srcs = s.docs.column("source").take(pa.array(rows)).to_pylist()
            for p, r, o, src in zip(pos.tolist(), rows.tolist(), offs.tolist(), srcs):
                out.append(Occurrence(s.number, p, int(s.doc_ids[r]), o, src))
            if limit is not None and len(out) >= limit:
                break
        return out

    def _doc_row(self, doc_id: int) -> tuple[_Shard, int]:
        si = int(np.searchsorted(self._doc_firsts, doc_id, side="right")) - 1
        if si >= 0:
            s = self.shards[si]
            row = int(doc_id - self._doc_firsts[si])
            if 0 <= row < len(s.doc_ids) and int(s.doc_ids[row]) == doc_id:
                return s, row
            rows = np.flatnonzero(s.doc_ids == doc_id)
            if rows.size:
                return s, int(rows[0])
        raise KeyError(f"no document {doc_id} in {self.path}")

    def document(self, doc_id: int):
        """The document with this id, as a :class:`corpora.Document`."""
        from corpora import Document

        for sh in self.shards:   # before the table is used to find the row (small: once per index)
            self._check_docs(sh)
        s, row = self._doc_row(int(doc_id))
        start = int(s.doc_starts[row])
        length = int(s.doc_lengths[row])
        self._check_touched(s, "bytes", [start], [start + length])
        rec = s.docs.slice(row, 1).to_pylist()[0]
        text = bytes(s.text[start : start + length]).decode("utf-8")
        return Document(doc_id=int(doc_id), source=rec["source"], ext_id=rec["ext_id"], text=text,
                        metadata=json.loads(rec["metadata"] or "{}"))

    def source(self, shard: int, position: int) -> tuple[int, int, str | None]:
        """``(doc_id, doc_offset, source)`` of a byte position in a shard."""
        s = self.shards[shard]
        self._check_docs(s)
        rows, offs = s.locate(np.array([position], dtype=np.int64))
        r = int(rows[0])
        return int(s.doc_ids[r]), int(offs[0]), s.docs.column("source")[r].as_py()

    def match(
        self,
        generations: Iterable[tuple[Any, bytes | str, Any]],
        min_tokens: int = DEFAULT_MIN_TOKENS,
        min_bytes: int | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> list[Span]:
        """Every maximal verbatim span of the generations (see :mod:`suffix_index.match`).

        ``generations``: ``(key, text, token_offsets_or_None)``; ``text`` as UTF-8
        bytes (or ``str``, encoded). Returns spans ordered by generation then start.
        """
        return list(self.iter_match(generations, min_tokens=min_tokens, min_bytes=min_bytes, batch_size=batch_size))

    def iter_match(self, generations, min_tokens: int = DEFAULT_MIN_TOKENS, min_bytes: int | None = None,
                   batch_size: int = DEFAULT_BATCH) -> Iterator[Span]:
        """Like :meth:`match`, yielding spans batch by batch (memory bounded by the batch).

        ``min_tokens``, ``min_bytes`` (when given) and ``batch_size`` must be >= 1
        (else :class:`ParameterError`, a ``ValueError``).
        """
        min_tokens, min_bytes, batch_size = check_match_parameters(min_tokens, min_bytes, batch_size)
        return self._iter_match(generations, min_tokens, min_bytes, batch_size)

    def _iter_match(self, generations, min_tokens: int, min_bytes: int | None, batch_size: int) -> Iterator[Span]:
        self.check_blocks()   # damaged index bytes: an error, never missing or invented spans
        for batch in iter_batches(generations, batch_size):
            rows = self._matcher.spans(batch, min_tokens=min_tokens, min_bytes=min_bytes)
            for gi, a, b, tok, shard, pos, cnt in rows:
                doc_id, doc_off, src = self.source(shard, pos)
                yield Span(key=batch[gi][0], start=a, end=b, tokens=tok, shard=shard, doc_id=doc_id,
                           doc_offset=doc_off, occurrences=cnt, source=src)
