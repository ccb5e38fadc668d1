"""What every part of trawl writes and reads the same way: durable files, folder locks,
timestamps, and the on-disk schemas that the parts hand to each other.

A leaf module: it imports no other module of trawl, so every package may import it
(``corpora`` is the bottom of the dependency order, which is why it lives here; see
docs/ARCHITECTURE.md). Guarantees:

* **atomic files** (:func:`write_text_atomic`, :func:`write_json_atomic`,
  :func:`write_parquet_atomic`): the new content goes to a temporary file beside the
  target, is fsynced and renamed over it, then the folder is fsynced; a reader sees the
  old file or the new one, never half of one, and a failed write leaves no temporary file;
* **atomic folders** (:func:`commit_output_dir`): a finished temporary folder replaces the
  target in one rename;
* **folder locks** (:class:`FolderLock`): an exclusive, non-blocking ``fcntl.flock`` on a
  lock file holding the holder's pid and start time; the kernel drops it when the holder
  exits, even on ``kill -9``, so a stale lock file never blocks anything; a busy lock is
  :class:`FolderLocked` (exit code 75, ``EX_TEMPFAIL``: try again later), a one-line error;
* **failed writes** (:class:`WriteError`, :func:`writing`): a file that cannot be written
  (the disk full, a quota, a file-size limit, a read-only folder) is one line naming it,
  exit code 74 (``EX_IOERR``), whatever wrote it (Python, Arrow, Parquet); what was being
  written is removed and nothing half-written is published, so the same command run again
  once there is room finishes the work;
* **timestamps** (:func:`utcnow`): UTC, ISO 8601 with a ``Z``;
* **schemas**: :data:`GENERATIONS_SCHEMA` (docs/CONTRACTS.md §3) and
  :data:`MATCHES_SCHEMA` (§4), and :func:`generation_parts`, the one way to list a run's
  generation parts.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import glob
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

# ---------------------------------------------------------------------------------- failed writes

# errno values that mean "no room": the disk full, a quota, a file-size limit (ulimit -f)
NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)   # Arrow's OSError text carries it


class WriteError(Exception):
    """A file trawl could not write: one line naming it (never a traceback), exit code 74
    (``EX_IOERR``). ``errno`` is the system's error number when known."""

    user_error = True
    exit_code = 74

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, also when Arrow reports it only in its message."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code:
        return code
    m = _ERRNO_IN_TEXT.search(str(exc))
    return int(m.group(1)) if m else None


def write_error(path, exc: BaseException) -> WriteError:
    """The one-line :class:`WriteError` for ``exc`` raised while writing ``path``."""
    code = os_errno(exc)
    reason = os.strerror(code) if code else (getattr(exc, "strerror", None) or first_line(exc))
    short = code is None and "requested and" in str(exc)   # NumPy's tofile: a short write, no errno
    if short:
        reason = f"only part of it was written ({first_line(exc)}): no room left?"
    hint = ("; free some space (or raise the limit) and run the same command again" if code in NO_ROOM or short
            else "")
    return WriteError(f"{os.fspath(path)}: cannot write: {reason}{hint}", code)


@contextmanager
def writing(path) -> Iterator[None]:
    """Turn an OSError raised inside the block (writing ``path``) into a :class:`WriteError`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from None

# ---------------------------------------------------------------------------------- timestamps


def utcnow(precise: bool = False) -> str:
    """Now in UTC as ``2026-11-29T12:00:00Z`` (``precise``: with microseconds)."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if precise else "%Y-%m-%dT%H:%M:%SZ"
    return _dt.datetime.now(_dt.timezone.utc).strftime(fmt)


def utcnow_compact() -> str:
    """Now in UTC for a file name: ``20261129T120000123456Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


# ---------------------------------------------------------------------------------- atomic files


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike, hidden: bool = False) -> str:
    """The temporary file beside ``path`` that a writer fills before :func:`commit_temp`:
    ``NAME.tmp-PID`` (``.NAME.tmp-PID`` when ``hidden``, so dataset readers of the folder skip it);
    :func:`clean_stale_temps` and the run folder's recovery know these names."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f"{'.' if hidden else ''}{name}.tmp-{os.getpid()}")


def commit_temp(tmp: str, path: str | os.PathLike) -> None:
    """Publish a finished temporary file: fsync it, then rename it over ``path`` (the caller
    fsyncs the folder when the rename must survive a crash: :func:`fsync_dir`)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _replace_atomically(path: str | os.PathLike, write: Callable[[str], Any], hidden: bool = False) -> None:
    """Call ``write(tmp)`` for a temporary file beside ``path`` (:func:`temp_path`), then
    :func:`commit_temp`; the temporary file is removed when anything fails (the exception
    propagates; an OSError as a :class:`WriteError` naming ``path``)."""
    tmp = temp_path(path, hidden)
    try:
        with writing(path):
            write(tmp)
            commit_temp(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see the module docstring). Every JSON, HTML,
    Markdown and TOML file trawl writes goes through here."""
    data = text.encode("utf-8")
    _replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
    fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def write_texts_atomic(items: list[tuple[str | os.PathLike, str]]) -> None:
    """Write several files as one publication: every new content goes to its temporary file first
    (fsynced), and only when all are written are they renamed over their targets; a failure (a full
    disk) removes the temporary files and leaves every target as it was. The report's files go
    through here, so a report is never half new and half old."""
    written: list[tuple[str, str]] = []
    try:
        for path, text in items:
            tmp = temp_path(path)
            written.append((tmp, os.fspath(path)))
            with writing(path):
                with open(tmp, "wb") as fh:
                    fh.write(text.encode("utf-8"))
                    fh.flush()
                    os.fsync(fh.fileno())
        for tmp, path in written:
            with writing(path):
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    for folder in {os.path.dirname(p) or "." for _, p in written}:
        fsync_dir(folder)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 1, ensure_ascii: bool = True) -> None:
    """Write JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii) + "\n")


def write_parquet_atomic(table, path: str | os.PathLike, compression: str = "zstd", *, hidden: bool = False,
                         sync_dir: bool = False) -> None:
    """Write an Arrow table as Parquet to ``path`` atomically (tmp file, fsync, rename; with
    ``sync_dir`` the folder too). ``hidden``: a dot-named temporary file (see _replace_atomically).
    Every page carries a CRC-32 (``write_page_checksum``) that readers verify
    (:data:`PARQUET_READ_OPTIONS`): bytes damaged on disk are an error, never other values."""
    import pyarrow.parquet as pq

    _replace_atomically(path, lambda tmp: pq.write_table(table, tmp, compression=compression,
                                                         write_page_checksum=True), hidden=hidden)
    if sync_dir:
        fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


_LEFTOVER_RE = re.compile(r"\.(?:tmp|old)-(\d+)$")


def clean_stale_temps(out: str | os.PathLike) -> list[str]:
    """Remove what a killed writer of ``out`` left beside it: ``OUT.tmp-PID`` (a half-written
    folder) and ``OUT.old-PID`` (a replaced one) whose PID is no longer alive; a live PID's are
    another writer's and stay. Returns the paths removed. Best effort: a path that cannot be
    removed is left."""
    out = Path(os.path.abspath(out))
    removed = []
    try:
        names = os.listdir(out.parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(out.name + "."):
            continue
        m = _LEFTOVER_RE.fullmatch(name[len(out.name):])
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        path = out.parent / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(str(path))
        except OSError:
            pass
    return removed


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(out: str | os.PathLike, *, marker: str, kind: str, overwrite: bool, error: type[Exception],
                     inputs=()) -> Path:
    """Check that ``out`` may become a new ``kind`` folder and return its absolute path.

    Without ``overwrite`` an existing ``out`` is refused. With it (``--force``), only a folder
    trawl made may be replaced: an empty folder, or one holding ``marker`` (``corpus.json``,
    ``manifest.json``); never the current folder or one above it, a folder holding (or being) one
    of ``inputs``, a file, or any other non-empty folder. Each refusal raises ``error`` with one
    line naming the path."""
    raw = os.fspath(out)
    a_kind = ("an " if kind[:1] in "aeiou" else "a ") + kind
    if not raw.strip():
        raise error("the output folder name is empty")
    out = Path(os.path.abspath(raw))
    if out.parent == out:
        raise error(f"{out}: cannot write {a_kind} folder at the root of the file system; choose a new folder")
    cwd = Path(os.getcwd())
    if _within(cwd, out):
        what = "the current folder" if cwd == out else "a folder above the current one"
        raise error(f"{raw}: is {what}; choose a new folder for the {kind}")
    for src in inputs:
        src_abs = Path(os.path.abspath(src))
        if _within(src_abs, out):
            raise error(f"{raw}: {'is' if src_abs == out else 'holds'} the input {src}; choose a new folder "
                        f"for the {kind}")
        if src_abs.is_dir() and _within(out, src_abs):
            raise error(f"{raw}: is inside the input folder {src}, which would read its own output; "
                        f"choose a folder outside it")
    if not (out.exists() or out.is_symlink()):
        return out
    if not overwrite:
        raise error(f"{raw}: already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise error(f"{raw}: exists and is not a folder; --force replaces only {a_kind} folder trawl made")
    try:
        entries = os.listdir(out)
    except OSError as exc:
        raise error(f"{raw}: cannot list the folder ({exc.strerror or exc})") from None
    if entries and not (out / marker).is_file():
        raise error(f"{raw}: not {a_kind} folder trawl made (no {marker}); --force replaces only those, so "
                    f"choose a new folder or empty this one yourself")
    return out


PARQUET_READ_OPTIONS = {"page_checksum_verification": True}
"""Keyword arguments for ``pyarrow.parquet.ParquetFile`` / ``read_table`` wherever trawl reads its own
Parquet files: pages written with a checksum are verified (a mismatch raises ``OSError``); pages of
older files, written without one, read as before."""


PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError, IndexError, KeyError, TypeError)
"""What pyarrow raises for a damaged Parquet file: Arrow's errors, ``OSError`` (a checksum mismatch,
a short read, failed decompression), ``UnicodeDecodeError`` (a damaged footer's names) and the
like. Readers catch these around opening and reading, and name the file in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name), for a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def commit_output_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an old ``out`` (moved aside
    first, then removed), so ``out`` is at every moment the old folder or the new one."""
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ---------------------------------------------------------------------------------- manifests


def read_manifest(folder: str | os.PathLike, name: str, *, fmt: str, version: int, error: type[Exception],
                  kind: str, build: str, upgrade: str) -> dict:
    """The JSON manifest ``folder/name`` of a trawl folder (a corpus, an index), checked: the folder
    and the file exist, the JSON parses to an object with ``format == fmt`` and
    ``format_version == version``. Anything else raises ``error`` with one line naming the path:
    ``kind`` names the folder ("corpus", "index"), ``build`` the command that makes one, and
    ``upgrade`` what to do about another format version."""
    folder = Path(folder)
    mpath = folder / name
    article = "an" if kind[:1] in "aeiou" else "a"
    if not folder.is_dir():
        raise error(f"{folder}: no such {kind} folder")
    if not mpath.is_file():
        raise error(f"{folder}: not {article} {kind} folder (no {name}); build one with '{build}'")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{mpath}: corrupt manifest ({first_line(exc)})") from None
    except OSError as exc:
        raise error(f"{mpath}: cannot read the manifest ({exc.strerror or exc})") from None
    if not isinstance(m, dict) or m.get("format") != fmt:
        raise error(f"{mpath}: not a trawl {kind} manifest (format is not {fmt!r})")
    if m.get("format_version") != version:
        raise error(f"{mpath}: {kind} format version {m.get('format_version')!r}, this trawl reads version "
                    f"{version}; {upgrade}")
    return m


class ManifestFields:
    """Type checks of the fields a reader takes from a manifest, each failure one line naming the
    file and the key (``shards[2].files.sa.size``): ``count`` (a whole number >= 0), ``file_name``
    (a plain file name inside the folder: no separator, not ``.``/``..``), ``text``, ``listing``
    (a list), ``table`` (an object)."""

    def __init__(self, path: str | os.PathLike, error: type[Exception]):
        self.path, self.error = path, error

    def _fail(self, key: str, v, what: str):
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise self.error(f"{self.path}: corrupt manifest ({key} is {shown}, not {what})")

    def count(self, obj: dict, name: str, key: str, *, minimum: int = 0, optional: bool = False) -> int | None:
        v = obj.get(name)
        if v is None and optional and name not in obj:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or v >= 1 << 63:   # 64-bit arithmetic
            self._fail(key, v, f"a whole number >= {minimum}")
        return v

    def file_name(self, obj: dict, name: str, key: str) -> str:
        v = obj.get(name)
        if not isinstance(v, str) or not v or "/" in v or "\\" in v or "\0" in v or v in (".", ".."):
            self._fail(key, v, "a file name in the folder")
        return v

    def text(self, obj: dict, name: str, key: str, *, optional: bool = False) -> str | None:
        v = obj.get(name)
        if (v is None and optional) or isinstance(v, str):
            return v
        self._fail(key, v, "a string")

    def listing(self, obj: dict, name: str, key: str) -> list:
        v = obj.get(name)
        if not isinstance(v, list):
            self._fail(key, v, "a list")
        return v

    def table(self, obj, key: str) -> dict:
        if not isinstance(obj, dict):
            self._fail(key, obj, "an object")
        return obj


# ---------------------------------------------------------------------------------- folder locks

LOCKED_EXIT_CODE = 75  # EX_TEMPFAIL


class FolderLocked(Exception):
    """Another process holds the lock: a one-line user error, exit code 75 (try again later)."""

    user_error = True
    exit_code = LOCKED_EXIT_CODE


class FolderLock:
    """Exclusive, non-blocking ``fcntl.flock`` on ``lock_path`` (the holder's pid and start time
    written inside as JSON), held between :meth:`acquire` and :meth:`release` (or as a context
    manager). A busy lock raises ``busy(holder)``, where ``holder`` is the dict read from the file
    (``{}`` when unreadable) and ``busy`` returns the exception (by default :class:`FolderLocked`).
    The lock file stays; an unlocked one blocks nothing. If the file is replaced while we wait
    (a holder that removes its lock file on release), the new file is locked instead.
    ``blocking=True`` waits for the lock instead of raising.
    """

    def __init__(self, lock_path: str | os.PathLike, *, busy: Callable[[dict], BaseException] | None = None,
                 blocking: bool = False):
        self.lock_path = os.fspath(lock_path)
        self.busy = busy or (lambda holder: FolderLocked(f"{self.lock_path} is held by another process"
                                                         f"{holder_text(holder)}; try again later"))
        self.blocking = blocking
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        os.makedirs(os.path.dirname(os.path.abspath(self.lock_path)), exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self.busy(holder) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except OSError:
                same = False
            if not same:   # the previous holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "started_at": utcnow()}).encode(), 0)
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            finally:
                os.close(self.fd)  # closing drops the flock
                self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(fd: int) -> dict:
    """The holder's ``{"pid", "started_at"}`` from an open lock file (``{}`` when unreadable; a bare
    pid, as older trawl wrote, reads as ``{"pid": N}``)."""
    try:
        raw = os.pread(fd, 4096, 0).strip()
    except OSError:
        return {}
    if raw.isdigit():
        return {"pid": int(raw)}
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def holder_text(holder: dict) -> str:
    """`` (pid N, since T)`` for a message, or nothing when the holder is unknown."""
    if not holder.get("pid"):
        return ""
    since = f", since {holder['started_at']}" if holder.get("started_at") else ""
    return f" (pid {holder['pid']}{since})"


def is_locked(lock_path: str | os.PathLike) -> bool:
    """True when a process holds ``lock_path`` now (probed without taking it for long)."""
    if not os.path.exists(lock_path):
        return False
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- schemas

GENERATIONS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("request_id", pa.string()),
    ("attack", pa.string()),
    ("variant", pa.string()),
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("token_offsets", pa.list_(pa.int32())),
    ("token_logprobs", pa.list_(pa.float32())),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("model", pa.string()),
    ("endpoint", pa.string()),
    ("params", pa.string()),
    ("seed", pa.int64()),
    ("latency_s", pa.float64()),
    ("cost_usd", pa.float64()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("extra", pa.string()),
])

GENERATIONS_DIR = "generations"
PART_RE = re.compile(r"(?:^|/)part-(\d{5,})\.parquet$")


def generation_parts(run_dir: str | os.PathLike) -> list[str]:
    """A run folder's generation parts (``RUN/generations/part-NNNNN.parquet``) in part order;
    names that do not match exactly (temporary files, ``_journal.jsonl``) are not parts."""
    gen_dir = os.path.join(os.fspath(run_dir), GENERATIONS_DIR)
    paths = [p for p in glob.glob(os.path.join(gen_dir, "part-*.parquet")) if PART_RE.search(p)]
    return sorted(paths, key=lambda p: int(PART_RE.search(p).group(1)))


MATCHES_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("request_id", pa.string()),
    ("span_start", pa.int64()),
    ("span_end", pa.int64()),
    ("tokens", pa.int32()),
    ("shard", pa.int32()),
    ("doc_id", pa.int64()),
    ("doc_offset", pa.int64()),
    ("occurrences", pa.int64()),
    ("source", pa.string()),
    ("text", pa.string()),
])
