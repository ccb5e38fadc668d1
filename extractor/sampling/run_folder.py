"""The run folder: frozen config, crash-safe generation storage, status.

Layout (docs/CONTRACTS.md §3)::

    RUN/
      config.json                    frozen at the first start (no secrets)
      generations/part-00000.parquet ...
      generations/_journal.bin       write-ahead journal of finished generations not yet in a part
      run.json                       status

Crash safety
    Every finished generation is appended to the journal (:mod:`extractor.sampling.journal`:
    a checksummed record per request, its rows as an Arrow IPC stream) and written to the
    kernel at once (the rows that come back together in one write), so a ``kill -9``
    of the process loses nothing that finished (only a power cut can lose what the
    OS had not yet written; parts are fsynced). Every ``flush_rows`` generations,
    :data:`PART_TOKENS` buffered token offsets or ``flush_seconds`` seconds the
    buffered rows become a Parquet part written atomically (a hidden
    ``.part-NNNNN.parquet.tmp-<pid>``, fsync, ``os.replace``, directory fsync)
    and only then is the journal emptied; a clean stop removes the empty journal.
    The sampler's workers hand over the rows already converted to Arrow; the run's
    last part (every request sent, what is in flight fits in it) is written into
    its temporary file as the rows come (:meth:`RunDir.spill`: a row group each
    time :data:`GROUP_TOKENS` token offsets wait), so that the run's end costs its
    last row group, the footer and the fsyncs, not the encoding of all its rows;
    until it is published the journal holds all of them.
    Non-part names start with ``_`` or ``.`` so that dataset readers such as
    ``pyarrow.parquet.read_table("RUN/generations")`` skip them. :meth:`RunDir.recover` (run at every start) deletes stray temporary
    files, moves journal rows that are not in a part yet into a new part, and
    returns the request ids already done: a crash between writing a part and
    emptying the journal therefore duplicates nothing, and a torn last journal
    record (a kill in the middle of a write) is dropped because that generation was
    never counted as done.

Journal records carry a checksum
    On resume a record whose bytes do not match its CRC-32 is dropped with every record after
    it, named in the sampler's log (:attr:`RunDir.dropped`), and those generations are sampled
    again: they were never in a part, and each draw is fixed by its seed, so the run ends with
    the rows of an undamaged one (a one-line error would ask a person to edit the journal for the
    same result). Journals of earlier versions (``_journal.jsonl``, a checksummed JSON line per
    row, or without checksums when older still) are read as before, line by line.
"""
from __future__ import annotations

import datetime as _dt
import glob
import itertools
import json
import os
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from corpora.storage import (GENERATIONS_SCHEMA, PARQUET_ERRORS, PARQUET_READ_OPTIONS, PART_RE, first_line, FolderLock, FolderLocked,
                             commit_temp, fsync_dir, generation_parts, temp_path, write_parquet_atomic, writing)
from corpora.storage import write_json_atomic as _write_json_atomic
from extractor.errors import TrawlError
from extractor.sampling.journal import (ARROW, CRC_KEY, JOURNAL_NAME, LEGACY_JOURNALS, journal_record, read_journal_line,
                                        read_records, record_rows, record_table, write_records)

# Names in generations/ that are not parts start with "_" or "." so that dataset readers
# (pyarrow.parquet.read_table("RUN/generations"), DuckDB globs on part-*) skip them.
FORMAT = "trawl-run"      # config.json's and run.json's "format"
FORMAT_VERSION = 1
PART_TOKENS = 1 << 20    # token offsets buffered that roll a part even before flush_rows rows
GROUP_TOKENS = 1 << 14   # token offsets waiting that RunDir.spill writes into the open part (a row group)
LOCK_NAME = ".lock"  # RUN/.lock: fcntl.flock'ed by the process using the run folder


class RunLocked(TrawlError, FolderLocked):
    """Another process holds the run folder's lock."""

    exit_code = 75  # EX_TEMPFAIL: the same run is in use elsewhere; try again later


class RunLock:
    """The run folder's :class:`corpora.storage.FolderLock` on ``RUN/.lock``.

    Two processes (or two ``run_attacks`` calls in one process) never write one run
    folder at once: the second gets :class:`RunLocked`. The kernel drops the lock when
    the holder exits, even on ``kill -9``, so a stale lock file never blocks anything.
    A folder that :meth:`acquire` had to create and that holds nothing but the lock
    file at :meth:`release` is removed again (a failed start leaves no folder).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.lock_path = os.path.join(self.path, LOCK_NAME)
        self._lock = FolderLock(self.lock_path, busy=self._busy)
        self._made_dir = False

    def _busy(self, holder: dict) -> RunLocked:
        return RunLocked(f"{self.path}: another trawl process is using this run folder (pid "
                         f"{holder.get('pid', 'unknown')}); wait for it to end, or stop it, then --resume")

    def acquire(self) -> "RunLock":
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise TrawlError(f"{self.path} exists and is not a folder; choose another run folder")
        if not os.path.isdir(self.path):
            try:
                os.makedirs(self.path)
                self._made_dir = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise TrawlError(f"{self.path}: cannot create the run folder ({exc.strerror})") from None
        try:
            self._lock.acquire()
        except OSError as exc:
            raise TrawlError(f"{self.lock_path}: cannot lock the run folder ({exc.strerror})") from None
        return self

    def release(self) -> None:
        if self._lock.fd is None:
            return
        try:
            if self._made_dir and os.listdir(self.path) == [LOCK_NAME]:
                os.unlink(self.lock_path)  # still locked: nobody can take this file meanwhile
                os.rmdir(self.path)
        except OSError:
            pass
        finally:
            self._lock.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_json_atomic(path: str, obj) -> None:
    """run.json / config.json: indented, non-ASCII kept (see corpora.storage.write_json_atomic)."""
    _write_json_atomic(path, obj, indent=2, ensure_ascii=False)


# The rows' Arrow buffers come from the C library's allocator, not Arrow's default pool (mimalloc):
# the sampler converts rows in up to `concurrency` worker threads, mimalloc gives each thread its own
# heap of fresh transparent huge pages, and the kernel zeroes each one (2 MB) as it is first touched:
# 11% of a 10,000-generation run's CPU in a `perf` profile of the ceiling benchmark, 1.3% with this pool
# (benchmarks/RESULTS-sampler.md). The same arrays either way: only where their memory comes from.
_ROWS_POOL = pa.system_memory_pool()


def rows_to_table(rows: list[dict]) -> pa.Table:
    """``rows`` (dicts with the columns of :data:`GENERATIONS_SCHEMA`; ``created_at`` a datetime or an
    ISO string) as an Arrow table of that schema (what ``pa.table(columns, schema=...)`` makes, its
    buffers from :data:`_ROWS_POOL`)."""
    arrays = []
    for field in GENERATIONS_SCHEMA:
        name = field.name
        if name != "created_at":
            arrays.append(pa.array([r.get(name) for r in rows], type=field.type, memory_pool=_ROWS_POOL))
            continue
        parsed: dict[str, _dt.datetime] = {}   # a request's rows share one time: parsed once
        out = []
        for r in rows:
            v = r.get(name)
            if isinstance(v, str):
                t = parsed.get(v)
                if t is None:
                    t = parsed[v] = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
                v = t
            out.append(v)
        arrays.append(pa.array(out, type=field.type, memory_pool=_ROWS_POOL))
    return pa.Table.from_arrays(arrays, schema=GENERATIONS_SCHEMA)


def table_or_none(rows: list[dict]) -> pa.Table | None:
    """``rows`` as :func:`rows_to_table` makes them, or None when there are none or they do not
    convert (they are then journaled as JSON lines, and the part's own conversion says why)."""
    if not rows:
        return None
    try:
        return rows_to_table(rows)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None


def row_problem(row: dict) -> str | None:
    """What makes a journal row unfit for a generations part (a key whose value has the wrong type),
    or None when it converts."""
    for field in GENERATIONS_SCHEMA:
        v = row.get(field.name)
        try:
            if field.name == "created_at" and isinstance(v, str):
                v = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            pa.array([v], type=field.type)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            return f"{field.name!r} is {type(v).__name__} {str(v)[:40]!r}, not {field.type}"
    return None


class RunDir:
    def __init__(self, path: str, *, flush_rows: int = 4096, flush_seconds: float = 30.0):
        from corpora.locations import require_local

        require_local(path, "a run folder")   # appended to and locked while it runs: not on an object store
        self.path = os.path.abspath(path)
        self.gen_dir = os.path.join(self.path, "generations")
        self.config_path = os.path.join(self.path, "config.json")
        self.status_path = os.path.join(self.path, "run.json")
        self.journal_path = os.path.join(self.gen_dir, JOURNAL_NAME)
        self.legacy_journal_paths = [os.path.join(self.gen_dir, n) for n in LEGACY_JOURNALS]   # still read
        self._journal_size = 0          # bytes of whole records in the journal
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._buffered = 0              # rows of the part being built (journaled, not yet in a part)
        self._buffered_tokens = 0
        self._tables: list[pa.Table] = []   # those rows, as Arrow tables (from rows or from the workers)
        self._rows: list[dict] = []     # rows handed over without a table: converted when written
        self._written = 0               # of self._tables, how many are in the open part file already
        self._unwritten_tokens = 0
        self._writer = None             # (pq.ParquetWriter, temporary path, part path) while a part is open
        self._part_summary: list[tuple] = []   # (attack, extra, completion_tokens, parsed extra) of the part's rows
        self._summaries: dict[str, list[tuple]] = {}   # the same for every part read or written here
        self._journal = None
        self._next_part = 0
        self.dropped: list[str] = []   # recover(): one line per damaged journal row dropped (see above)

    # -- config ---------------------------------------------------------------------------
    def has_run(self) -> bool:
        return os.path.exists(self.config_path)

    def is_nonempty(self) -> bool:
        return os.path.isdir(self.path) and any(n != LOCK_NAME for n in os.listdir(self.path))

    def load_config(self) -> dict:
        """The frozen config.json, checked: a JSON object whose ``run_id`` is a non-empty string and
        ``seed_scheme`` (when present) a whole number >= 1; else a one-line TrawlError naming the key."""
        try:
            with open(self.config_path, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError, RecursionError) as exc:
            raise TrawlError(f"{self.config_path}: cannot read the frozen run config ({first_line(exc)})") from None
        if not isinstance(config, dict):
            raise TrawlError(f"{self.config_path}: the frozen run config is {type(config).__name__}, not a JSON object")
        if not isinstance(config.get("run_id"), str) or not config["run_id"]:
            raise TrawlError(f"{self.config_path}: 'run_id' is {config.get('run_id')!r}, not a run id (a string)")
        scheme = config.get("seed_scheme", 1)
        if isinstance(scheme, bool) or not isinstance(scheme, int) or scheme < 1:
            raise TrawlError(f"{self.config_path}: 'seed_scheme' is {scheme!r}, not a whole number >= 1")
        return config

    def freeze_config(self, config: dict) -> None:
        os.makedirs(self.gen_dir, exist_ok=True)
        write_json_atomic(self.config_path, config)

    def load_status(self) -> dict:
        """The last run.json; ``{}`` when there is none. A damaged one (not JSON, not an object, a
        counter or ``sessions`` of the wrong type) is a one-line TrawlError, never a silent fresh start:
        it holds the earlier sessions' history and the token and cost totals a resume continues."""
        if not os.path.exists(self.status_path):
            return {}
        damaged = ("; it holds the earlier sessions' history: restore it from a backup, or move it aside to "
                   "resume without that history")
        try:
            with open(self.status_path, encoding="utf-8") as fh:
                status = json.load(fh)
        except (OSError, ValueError, RecursionError) as exc:
            raise TrawlError(f"{self.status_path}: damaged run status ({first_line(exc)}){damaged}") from None
        if not isinstance(status, dict):
            raise TrawlError(f"{self.status_path}: damaged run status (a JSON {type(status).__name__}, not an "
                             f"object){damaged}")
        for key in ("prompt_tokens", "completion_tokens", "cost_usd"):
            v = status.get(key, 0)
            number = (int, float) if key == "cost_usd" else (int,)
            if isinstance(v, bool) or not isinstance(v, number) or not v >= 0 or v == float("inf"):
                raise TrawlError(f"{self.status_path}: damaged run status ({key!r} is {v!r}, not a count >= 0)"
                                 f"{damaged}")
        sessions = status.get("sessions", [])
        if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
            raise TrawlError(f"{self.status_path}: damaged run status ('sessions' is not a list of objects)"
                             f"{damaged}")
        return status

    def write_status(self, status: dict) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_json_atomic(self.status_path, status)

    # -- parts ----------------------------------------------------------------------------
    def part_paths(self) -> list[str]:
        return generation_parts(self.path)

    def done_ids(self) -> set[str]:
        """The request ids stored in parts. Every column is read, so that each page's checksum is
        verified: a part damaged on disk stops the resume instead of being built upon."""
        done: set[str] = set()
        for p in self.part_paths():
            table = self._read_part(p)
            done.update(table.column("request_id").to_pylist())
            self._summaries[p] = _summary_of(table)
        return done

    def summary_rows(self) -> list[tuple]:
        """``(attack, extra, completion_tokens, parsed)`` of every stored row, in part order: from what
        this object wrote or read (every part it read is verified, see :meth:`done_ids`), else read
        from the parts. The same values either way: a part's cached rows are those of its table.
        ``parsed``: ``extra`` as the dict its JSON reads back to, where the writer knew it; else None."""
        parts = self.part_paths()
        if all(p in self._summaries for p in parts):
            return [row for p in parts for row in self._summaries[p]]
        return _summary_of(self.read_generations(columns=list(_SUMMARY_COLUMNS)))

    def _read_part(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One part; a damaged one (parts are written atomically, so damaged from outside) is a TrawlError."""
        try:
            table = pq.read_table(path, columns=columns, **PARQUET_READ_OPTIONS)
            missing = [n for n in (columns or GENERATIONS_SCHEMA.names) if n not in table.column_names]
            if missing:
                raise ValueError(f"no column {missing[0]!r}")
            return table
        except PARQUET_ERRORS as exc:
            first = first_line(exc)
            raise TrawlError(f"{path}: unreadable generations part ({first}); parts are written atomically, so it "
                             f"was damaged outside trawl (truncated copy, full disk, editing): restore it from a "
                             f"backup, or delete it to sample its generations again with --resume") from None

    def read_generations(self, columns: list[str] | None = None) -> pa.Table:
        parts = self.part_paths()
        if not parts:
            return GENERATIONS_SCHEMA.empty_table() if columns is None else \
                pa.schema([GENERATIONS_SCHEMA.field(c) for c in columns]).empty_table()
        return pa.concat_tables([self._read_part(p, columns) for p in parts])

    def _write_part(self, rows) -> str:
        """One whole part from ``rows`` (a table, or dicts; recovery: the journal's rows not in a part yet)."""
        table = rows if isinstance(rows, pa.Table) else rows_to_table(rows)
        base = f"part-{self._next_part:05d}.parquet"
        name = os.path.join(self.gen_dir, base)
        write_parquet_atomic(table, name, hidden=True, sync_dir=True)
        self._summaries[name] = _summary_of(table)
        self._next_part += 1
        return name

    # -- recovery and appending ------------------------------------------------------------
    def recover(self) -> set[str]:
        """Clean up after a crash; return the request ids already stored."""
        os.makedirs(self.gen_dir, exist_ok=True)
        stray = (glob.glob(os.path.join(self.gen_dir, ".*.tmp-*")) + glob.glob(os.path.join(self.gen_dir, "*.tmp-*"))
                 + glob.glob(os.path.join(self.path, "*.tmp-*")))
        for tmp in stray:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        parts = self.part_paths()
        self._next_part = (int(PART_RE.search(parts[-1]).group(1)) + 1) if parts else 0
        done = self.done_ids()
        pending, seen = self._journal_tables(done, self.dropped)
        if pending:
            # one table, one chunk per column: the part's bytes do not depend on how the rows were journaled
            self._write_part(pa.concat_tables(pending).combine_chunks())
            done.update(seen)
        self._truncate_journal()
        for old in self.legacy_journal_paths:
            if os.path.exists(old):
                os.unlink(old)
        return done

    def read_journal(self) -> pa.Table:
        """The rows the journals hold now (each request id once; damaged or torn records left out, as
        :meth:`recover` leaves them), without changing anything: what a killed run left there."""
        tables, _ = self._journal_tables(set(), [])
        return pa.concat_tables(tables) if tables else GENERATIONS_SCHEMA.empty_table()

    def _journal_tables(self, done: set[str], notes: list[str]) -> tuple[list[pa.Table], set[str]]:
        """The journals' rows whose request ids are not in ``done``, as tables in journal order (legacy
        JSON-line journals first), and their request ids; a note per damaged row or record is added to
        ``notes``. A row that cannot be stored is a one-line TrawlError naming the file."""
        tables: list[pa.Table] = []
        seen: set[str] = set()

        def fresh(rid) -> bool:
            if not isinstance(rid, str) or not rid or rid in done or rid in seen:
                return False
            seen.add(rid)
            return True

        def rows_table(rows: list[tuple[str, dict]]) -> None:
            kept = []
            for where, row in rows:
                rid = row.get("request_id") if isinstance(row, dict) else None
                if not isinstance(rid, str) or not rid or rid in done or rid in seen:
                    continue
                problem = row_problem(row)
                if problem:
                    raise TrawlError(f"{where}: damaged journal row ({problem}); the journal is written by trawl, "
                                     f"so it was changed outside it: restore it, or delete that line to sample the "
                                     f"generation again with --resume")
                seen.add(rid)
                kept.append(row)
            if kept:
                tables.append(rows_to_table(kept))

        for jpath in self.legacy_journal_paths:
            if not os.path.exists(jpath):
                continue
            with open(jpath, "rb") as fh:
                lines = fh.readlines()
            checked = any(f'"{CRC_KEY}": '.encode() in line for line in lines)
            rows = []
            for lineno, line in enumerate(lines, 1):
                row = read_journal_line(line, checked)
                if row is None:
                    if line.endswith(b"\n") and line.strip():   # not a torn last line: damage
                        notes.append(f"{jpath}:{lineno}: damaged journal row (its bytes do not match its "
                                     f"checksum or are not JSON); dropped: that generation is sampled again")
                    continue  # torn last line: that generation was never done
                if isinstance(row, dict):
                    row.pop(CRC_KEY, None)
                rows.append((f"{jpath}:{lineno}", row))
            rows_table(rows)
        if os.path.exists(self.journal_path):
            with open(self.journal_path, "rb") as fh:
                data = fh.read()
            records, damaged = read_records(self.journal_path, data)
            notes.extend(damaged)
            for number, kind, payload in records:
                if kind == ARROW:
                    table = record_table(self.journal_path, number, payload)
                    keep = [i for i, rid in enumerate(table.column("request_id").to_pylist()) if fresh(rid)]
                    if len(keep) == table.num_rows:
                        tables.append(table)
                    elif keep:
                        tables.append(table.take(keep))
                else:
                    rows_table([(f"{self.journal_path}: record {number} line {lineno}", row)
                                for lineno, row in record_rows(self.journal_path, number, payload)])
        return tables, seen

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is not None:
            try:
                journal.close()
            except OSError:
                pass

    def _truncate_journal(self) -> None:
        """Empty the journal (its rows are in a fsynced part). Not fsynced itself: should a power cut
        bring the old rows back, :meth:`recover` skips them as done."""
        self._close_journal()
        with writing(self.journal_path):
            self._journal = open(self.journal_path, "wb", buffering=0)   # records go to the kernel as written
        self._journal_size = 0

    def append(self, row: dict) -> None:
        """Record one finished generation (durable against kill -9 when this returns)."""
        self.append_many([row])

    def append_many(self, rows: list[dict], records: list | None = None, tables: list[pa.Table] | None = None,
                    extras: list | None = None) -> None:
        """Record finished generations in one write (durable against kill -9 when this returns; a
        kill during the write leaves whole records for some of them and at most one torn last record,
        which :meth:`recover` drops: those generations were never done). ``records``: the rows'
        journal records (:func:`~extractor.sampling.journal.journal_record`, their pieces in order),
        when the caller made them already; ``tables``: the rows as Arrow tables (:func:`rows_to_table`,
        in order), when the caller converted them already (the sampler's workers do both, off the
        dispatch thread); ``extras``: each row's ``extra`` as the dict its JSON reads back to (None
        where not known), kept for :meth:`summary_rows`. A write that fails (a full disk) raises
        WriteError, the journal is cut back to its last whole record, and none of these rows is
        counted as done."""
        if not rows:
            return
        if records is None:
            if tables is None:
                table = table_or_none(rows)
                tables = [table] if table is not None else None
            records = []
            for t in (tables or [None]):
                records.extend(journal_record(rows, t))
        fd = self._journal.fileno()
        with writing(self.journal_path):
            try:
                self._journal_size += write_records(fd, records)
            except OSError:
                try:   # a record is whole or absent: later records must not follow a torn one
                    os.ftruncate(fd, self._journal_size)
                    os.lseek(fd, self._journal_size, os.SEEK_SET)
                except OSError:
                    pass
                raise
        if tables is not None:
            self._take_rows()
            self._tables.extend(tables)
        else:
            self._rows.extend(rows)
        tokens = sum(len(r.get("token_offsets") or ()) for r in rows)
        self._buffered += len(rows)
        self._buffered_tokens += tokens
        self._unwritten_tokens += tokens + len(rows)
        if extras is None or len(extras) != len(rows):
            extras = [None] * len(rows)
        self._part_summary.extend([(r.get("attack"), r.get("extra"), r.get("completion_tokens"), e)
                                   for r, e in zip(rows, extras)])

    def buffered(self) -> int:
        return self._buffered

    def buffered_tokens(self) -> int:
        return self._buffered_tokens

    def should_flush(self) -> bool:
        """The buffered rows make a part: ``flush_rows`` of them, or :data:`PART_TOKENS` token
        offsets (long completions roll sooner, bounding the memory the buffer holds)."""
        return self._buffered >= self.flush_rows or self._buffered_tokens >= PART_TOKENS

    def spill(self) -> None:
        """Write the buffered rows into the part being built (its hidden temporary file, a row group)
        once :data:`GROUP_TOKENS` token offsets (plus one per row) wait, so that a part's encoding and
        compression happen while the run goes on rather than all at :meth:`flush`. The part is
        published (and the journal emptied) only by :meth:`flush`; until then the journal holds every
        row, and a kill leaves a temporary file that :meth:`recover` deletes."""
        if self._unwritten_tokens >= GROUP_TOKENS:
            self._write_open_part()

    def _take_rows(self) -> None:
        """Rows handed over without a table become one (kept in order with the tables)."""
        if self._rows:
            self._tables.append(rows_to_table(self._rows))
            self._rows = []

    def _write_open_part(self) -> None:
        """Append the tables not yet written to the open part's temporary file (opened first)."""
        self._take_rows()
        todo = self._tables[self._written:]
        if not todo:
            return
        if self._writer is None:
            name = os.path.join(self.gen_dir, f"part-{self._next_part:05d}.parquet")
            tmp = temp_path(name, hidden=True)
            with writing(name):
                writer = pq.ParquetWriter(tmp, GENERATIONS_SCHEMA, compression="zstd", write_page_checksum=True)
            self._writer = (writer, tmp, name)
        writer, tmp, name = self._writer
        try:
            with writing(name):
                writer.write_table(todo[0] if len(todo) == 1 else pa.concat_tables(todo))
        except BaseException:
            self._abort_part()
            raise
        self._written = len(self._tables)
        self._unwritten_tokens = 0

    def _abort_part(self) -> None:
        """Drop the open part's temporary file after a failed write; the rows stay buffered (and in
        the journal), so a later :meth:`flush` writes the part again from the start."""
        writer, tmp, _ = self._writer
        self._writer = None
        self._written = 0
        self._unwritten_tokens = self._buffered_tokens + self._buffered
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass

    def flush(self) -> str | None:
        """Turn buffered generations into a part (the open part's file completed, fsynced, renamed
        into place, its folder fsynced), then empty the journal."""
        if not self._buffered:
            return None
        self._write_open_part()
        writer, tmp, name = self._writer
        try:
            with writing(name):
                writer.close()
                commit_temp(tmp, name)
        except BaseException:
            self._abort_part()
            raise
        self._writer = None
        fsync_dir(self.gen_dir)
        self._summaries[name] = self._part_summary
        self._part_summary = []
        self._tables, self._written = [], 0
        self._buffered = self._buffered_tokens = self._unwritten_tokens = 0
        self._next_part += 1
        self._truncate_journal()
        return name

    def close(self) -> None:
        """Flush, and remove the (then empty) journal so the folder holds only parts."""
        self.flush()
        if self._journal is not None:
            self._close_journal()
            try:
                if os.path.getsize(self.journal_path) == 0:
                    os.unlink(self.journal_path)
            except OSError:
                pass


_SUMMARY_COLUMNS = ("attack", "extra", "completion_tokens")


def _summary_of(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in _SUMMARY_COLUMNS), itertools.repeat(None)))


def iter_rows(table: pa.Table) -> Iterable[dict]:
    return table.to_pylist()
