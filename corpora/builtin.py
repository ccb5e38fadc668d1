"""A reference corpus that needs no download: real text shipped with Python.

:func:`build_offline_corpus` collects, in this fixed order,

1. the Python standard library's source (``*.py`` under ``sysconfig``'s
   ``stdlib`` path, without ``site-packages``, ``test``/``tests`` and
   ``idlelib``/``tkinter`` data);
2. the Python documentation shipped with the system, when present
   (``/usr/share/doc/python3*``: text, HTML and reST files);
3. license texts: ``LICENSE*``/``COPYING*``/``NOTICE*`` files (and ``licenses/``
   folders) inside ``*.dist-info`` folders of every ``site-packages`` on
   ``sys.path``, then ``/usr/share/common-licenses``,

each group's files sorted by path, until ``max_bytes`` of text is reached. The
result depends only on the files present, so the same machine gives the same
corpus. Each document's ``source`` is its file path. Binary files are skipped,
empty files and exact duplicates (licenses repeat a lot) are dropped as in any
ingest.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from corpora.errors import CorpusError
from corpora.ingest import ingest_records
from corpora.readers import Record, iter_directory_files, read_text_file
from corpora.shards import Corpus

DEFAULT_MAX_BYTES = 32 << 20
LICENSE_PREFIXES = ("license", "licence", "copying", "notice", "authors")
DOC_SUFFIXES = {".txt", ".rst", ".html", ".md", ".py"}


def _stdlib_files() -> Iterator[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        return
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _doc_files() -> Iterator[Path]:
    base = Path("/usr/share/doc")
    if not base.is_dir():
        return
    for d in sorted(base.glob("python3*")):
        if d.is_dir():
            for p in iter_directory_files(d):
                if p.suffix.lower() in DOC_SUFFIXES:
                    yield p


def _site_dirs() -> list[Path]:
    dirs: list[str] = []
    try:
        dirs += site.getsitepackages()
    except AttributeError:
        pass
    try:
        dirs.append(site.getusersitepackages())
    except AttributeError:
        pass
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    out, seen = [], set()
    for d in dirs:
        p = Path(d)
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return sorted(out)


def _license_files() -> Iterator[Path]:
    for sp in _site_dirs():
        for dist in sorted(sp.glob("*.dist-info")):
            if not dist.is_dir():
                continue
            for p in iter_directory_files(dist):
                rel = p.relative_to(dist)
                if rel.parts[0].lower() == "licenses" or p.name.lower().startswith(LICENSE_PREFIXES):
                    yield p
    common = Path("/usr/share/common-licenses")
    if common.is_dir():
        yield from iter_directory_files(common)


def offline_sources() -> Iterator[Path]:
    """The candidate files, in the documented deterministic order."""
    yield from _stdlib_files()
    yield from _doc_files()
    yield from _license_files()


def _records(max_bytes: int) -> Iterator[Record]:
    total = 0
    for path in offline_sources():
        if total >= max_bytes:
            return
        try:
            rec = read_text_file(path, skip_binary=True)
        except Exception:  # unreadable file: the builtin corpus is best effort
            continue
        if rec is None or not rec.text:
            continue
        n = len(rec.text.encode("utf-8"))
        if total + n > max_bytes:
            continue  # try smaller files; keeps the bound strict
        total += n
        yield rec


def build_offline_corpus(
    out_dir: str | os.PathLike,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Corpus:
    """Build a corpus of at most ``max_bytes`` of text from files on this machine.

    Returns the opened :class:`Corpus` (see module docstring for what it holds).
    ``max_bytes`` must be a positive whole number (else :class:`CorpusError`).
    """
    import numbers

    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes <= 0:
        raise CorpusError(f"max_bytes must be a whole number > 0, got {max_bytes!r}")
    from corpora.locations import is_url

    if is_url(out_dir):   # built locally, then published (corpora.stores)
        from corpora.ingest import publish_corpus

        return publish_corpus(str(out_dir), overwrite,
                              lambda local: build_offline_corpus(local, max_bytes, overwrite=True, progress=progress))
    return ingest_records(
        _records(int(max_bytes)), out_dir, overwrite=overwrite, progress=progress,
        extra_manifest={"inputs": ["builtin:offline"], "max_bytes": int(max_bytes)},
    )
