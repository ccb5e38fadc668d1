"""Corpus and index folders on an object store: publish once, read through a checked local cache.

Object stores have no atomic folder rename and trawl memory-maps its index, so a folder on a
store (a :class:`corpora.locations.Location`) is never written or read in place:

* **publish** (:func:`build_and_publish`): the folder is built in a local staging folder exactly
  as for a local output, then uploaded: a ``.trawl-publishing`` marker first, the old manifest
  removed (readers stop trusting the old version), every data file, and the manifest **last**
  (uploaded under a temporary name and moved into place: one object appears whole). Objects of an
  older publication that the new manifest does not list are removed, then the marker. A publish
  killed half-way leaves no manifest, so no reader accepts the folder (one line: an unfinished
  publication), and the same command run again replaces the leftovers without ``--force``
  (the marker says they are trawl's);
* **read** (:func:`fetch_folder`): the manifest is read from the store and checked as a local one
  is (format, version, every field's type, plain file names); the cache folder is named after the
  sha256 of its bytes, so a new publication is a new key. Every file the manifest lists is
  downloaded into ``CACHE/<kind>-<key>.tmp-PID``, its sha256 computed while it streams and compared
  with the manifest's, and the folder renamed to ``CACHE/<kind>-<key>`` when whole: once per node
  (a folder lock serialises the node's processes). A cache hit re-hashes every file (one
  sequential read, the price of trusting bytes on a disk shared with other programs): a file that
  no longer matches is fetched again; a store object that does not match its manifest is one line.

The cache lives in ``$TRAWL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/trawl`` or ``~/.cache/trawl``),
under ``store/``; staging folders under ``store/staging/`` (same file system, so a freshly published
folder becomes the cache entry by a rename, and the node that built it never downloads it), one
folder per host.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable, TypeVar

from corpora.errors import StoreError
from corpora.locations import Location, open_location, scheme, store_errors
from corpora.storage import FolderLock, clean_stale_temps, utcnow, writing

PUBLISHING_MARKER = ".trawl-publishing"
CACHE_ENV = "TRAWL_CACHE_DIR"
CHUNK = 8 << 20
MAX_MANIFEST_BYTES = 256 << 20   # a manifest larger than this is not one trawl wrote

T = TypeVar("T")
FileList = list[tuple[str, str, "int | None"]]   # (name, sha256, size or None)


def cache_root() -> Path:
    """The node's cache folder of store contents (see the module docstring)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "trawl")
    return Path(base) / "store"


def _mkdir(path: Path) -> Path:
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ publish

def _files_under(loc: Location) -> list[str]:
    """Every object below the location, as names relative to it ('' when the location is one object)."""
    fs = loc.fs
    with store_errors(loc.url, "list the folder"):
        if fs.isfile(loc.path):
            return [""]
        base = loc.path.rstrip("/") + "/"
        return sorted(p[len(base):] if p.startswith(base) else p for p in fs.find(loc.path))


def check_destination(url: str, *, manifest_name: str, kind: str, overwrite: bool) -> Location:
    """The location ``url`` may receive a new ``kind`` folder: nothing is there, or an unfinished
    publication of trawl's (its marker, no manifest), or, with ``overwrite`` (``--force``), a folder
    trawl published (its manifest). Anything else is one line, before anything is built."""
    if scheme(url) == "hf":
        raise StoreError(f"{url}: trawl reads the Hugging Face Hub (ingest inputs, folders published elsewhere) but "
                         f"does not publish to it; write the {kind} to s3://, gs://, file:// or a path")
    loc = open_location(url)
    a_kind = ("an " if kind[:1] in "aeiou" else "a ") + kind
    names = _files_under(loc)
    if not names:
        return loc
    if names == [""]:
        raise StoreError(f"{url}: is an object, not a folder; choose a new location for the {kind}")
    if manifest_name in names and not overwrite:
        raise StoreError(f"{url}: already exists; pass --force to replace it")
    if manifest_name not in names and PUBLISHING_MARKER not in names:
        raise StoreError(f"{url}: not {a_kind} folder trawl published (no {manifest_name}); --force replaces only "
                         f"those, so choose a new location or empty this one yourself")
    return loc


def _after_upload(name: str, count: int) -> None:
    """Fault-injection hook of the tests (a publish killed after ``count`` uploads): see
    ``TRAWL_TEST_PUBLISH_EXIT_AFTER``; nothing otherwise."""
    limit = os.environ.get("TRAWL_TEST_PUBLISH_EXIT_AFTER")
    if limit and count >= int(limit):
        os._exit(137)


def publish_folder(local: Path, loc: Location, *, manifest_name: str) -> list[str]:
    """Upload the finished folder ``local`` to ``loc`` as one publication (see the module
    docstring); returns the names uploaded, the manifest last."""
    local = Path(local)
    names = sorted(n for n in os.listdir(local) if n != manifest_name and not n.startswith(".")
                   and (local / n).is_file())
    fs = loc.fs
    marker = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_at": utcnow()}).encode()
    with store_errors(loc.url, "publish"):
        if scheme(loc.url) == "file":   # a folder; on a bucket, makedirs could create the bucket itself
            fs.makedirs(loc.path, exist_ok=True)
        fs.pipe_file(loc.path_of(PUBLISHING_MARKER), marker)
        if fs.exists(loc.path_of(manifest_name)):
            fs.rm_file(loc.path_of(manifest_name))   # the old version is no longer trusted from here on
        for i, name in enumerate(names, 1):
            fs.put_file(str(local / name), loc.path_of(name))
            _after_upload(name, i)
        tmp = loc.path_of(f".{manifest_name}.tmp-{uuid.uuid4().hex}")
        fs.put_file(str(local / manifest_name), tmp)
        fs.mv(tmp, loc.path_of(manifest_name))       # the publication: one object, whole
        keep = set(names) | {manifest_name, PUBLISHING_MARKER}
        for name in _files_under(loc):
            if name and name not in keep:             # an older publication's files, now unlisted
                fs.rm_file(loc.path_of(name))
        fs.rm_file(loc.path_of(PUBLISHING_MARKER))
    return names + [manifest_name]


def staging_folder(name: str) -> Path:
    """A fresh local folder to build an output in before it is published (removed by the caller)."""
    # one folder per host: with a cache on a shared file system (README: Ray on several nodes), a
    # leftover is judged by its pid on the host that made it, never by another host's pids
    root = _mkdir(cache_root() / "staging" / (socket.gethostname() or "host"))
    for leftover in root.glob("*.tmp-*"):   # what killed publishers left (dead pids only)
        clean_stale_temps(leftover.with_name(leftover.name.split(".tmp-")[0]))
    path = root / f"{name}.tmp-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    return path


def build_and_publish(url: str, *, kind: str, manifest_name: str, overwrite: bool,
                      build: Callable[[Path], T]) -> tuple[T, Path | None]:
    """Check the destination ``url``, ``build(local)`` the folder in a staging folder, publish it,
    and keep it as this node's cache entry; returns what ``build`` returned and the cache entry
    (None if it could not be kept). A failure anywhere publishes nothing (or, mid-upload, an
    unfinished publication no reader accepts)."""
    loc = check_destination(url, manifest_name=manifest_name, kind=kind, overwrite=overwrite)
    stage = staging_folder(kind)
    try:
        result = build(stage)
        publish_folder(stage, loc, manifest_name=manifest_name)
        cached = _adopt(stage, kind, (stage / manifest_name).read_bytes())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result, cached


def _adopt(stage: Path, kind: str, manifest: bytes) -> Path | None:
    """Make the just-published folder this node's cache entry (a rename; best effort)."""
    final = cache_root() / f"{kind}-{hashlib.sha256(manifest).hexdigest()}"
    try:
        with FolderLock(f"{final}.lock", blocking=True):
            if not final.exists():
                os.replace(stage, final)
    except OSError:
        return None
    return final


# ------------------------------------------------------------------------------------------ fetch

def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                return h.hexdigest(), n
            h.update(b)
            n += len(b)


def _download(loc: Location, name: str, dest: Path, sha256: str, size: int | None) -> None:
    """Stream ``loc/name`` into ``dest`` (a temporary name, renamed when checked) hashing as it comes."""
    url = loc.url_of(name)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    n = 0
    try:
        with writing(dest):
            out = open(tmp, "wb")
        with out, store_errors(url, "read it (listed in the manifest; an unfinished or damaged publication? "
                                    "publish it again)"):
            with loc.fs.open(loc.path_of(name), "rb") as src:
                while True:
                    b = src.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                    with writing(dest):
                        out.write(b)
        got = h.hexdigest()
        if got != sha256 or (size is not None and n != size):
            raise StoreError(f"{url}: {n} bytes with sha256 {got}, the manifest lists "
                             f"{'' if size is None else f'{size} bytes with '}sha256 {sha256}: the object is damaged "
                             f"or from another publication; publish the folder again")
        with writing(dest):
            os.replace(tmp, dest)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _check_names(url: str, manifest_name: str, files: FileList) -> None:
    for name, sha, size in files:
        if name == manifest_name or name.startswith(".") or name == PUBLISHING_MARKER:
            raise StoreError(f"{url}/{manifest_name}: corrupt manifest (it lists {name!r} as a data file)")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise StoreError(f"{url}/{manifest_name}: corrupt manifest ({name}'s sha256 is not 64 hex digits)")


def _renamed(exc: BaseException, local: Path, url: str) -> BaseException:
    """``exc`` (a user error raised while checking the cached copy) naming the URL instead."""
    text = str(exc).replace(str(local), url)
    try:
        new = type(exc)(text)
    except Exception:
        return exc
    return new


def fetch_folder(url: str, *, kind: str, manifest_name: str, listing: Callable[[Path], FileList]) -> Path:
    """The local, checked copy of the ``kind`` folder published at ``url`` (see the module
    docstring). ``listing(folder)`` checks the manifest in ``folder`` (raising the package's
    one-line error) and returns ``[(name, sha256, size or None)]`` of the files it lists."""
    loc = open_location(url)
    mpath = loc.path_of(manifest_name)
    with store_errors(url, f"read the {kind}"):
        try:
            info = loc.fs.info(mpath)
        except FileNotFoundError:
            names = _files_under(loc)
            if PUBLISHING_MARKER in names:
                raise StoreError(f"{url}: an unfinished publication (no {manifest_name} yet: being published, or "
                                 f"the publisher was stopped); publish it again") from None
            if not names:
                raise StoreError(f"{url}: no such {kind} folder") from None
            raise StoreError(f"{url}: not a {kind} folder (no {manifest_name})") from None
        if int(info.get("size") or 0) > MAX_MANIFEST_BYTES:
            raise StoreError(f"{url}/{manifest_name}: {info.get('size')} bytes, too large for a manifest")
        data = loc.fs.cat_file(mpath)
    key = hashlib.sha256(data).hexdigest()
    root = _mkdir(cache_root())
    final = root / f"{kind}-{key}"
    with FolderLock(f"{final}.lock", blocking=True):
        if final.is_dir():
            files = _listing(listing, final, url, manifest_name)
            for name, sha, size in files:
                p = final / name
                ok = p.is_file() and (size is None or p.stat().st_size == size) and _hash_file(p)[0] == sha
                if not ok:   # damaged (or removed) in the cache since it was fetched: fetch it again
                    _download(loc, name, p, sha, size)
            return final
        clean_stale_temps(final)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _mkdir(tmp)
            with writing(tmp / manifest_name):
                (tmp / manifest_name).write_bytes(data)
            files = _listing(listing, tmp, url, manifest_name)
            for name, sha, size in files:
                _download(loc, name, tmp / name, sha, size)
            with writing(final):
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _listing(listing, folder: Path, url: str, manifest_name: str) -> FileList:
    try:
        files = listing(folder)
    except Exception as exc:
        if getattr(exc, "user_error", False):
            raise _renamed(exc, folder, url) from None
        raise
    _check_names(url, manifest_name, files)
    return files
