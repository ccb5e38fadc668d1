"""Where a corpus, an index or an input file lives: a local path, or a URL on an object store.

The one home of "a location" (docs/ARCHITECTURE.md). A location is the text a person gives:

* a **path** (``data/``, ``/shared/index``): the local code path, unchanged. Nothing here is
  imported for it and no file system library is loaded: :func:`is_url` is one regular expression;
* a **URL** read and written through `fsspec <https://filesystem-spec.readthedocs.io>`_:
  ``file://`` (a local or mounted folder used *as* an object store: the same publish and cache
  path as a bucket, which is what the offline tests exercise across processes), ``memory://``
  (fsspec's in-process store: tests), ``s3://`` (s3fs), ``gs://`` (gcsfs) and ``hf://`` (the
  Hugging Face Hub through ``huggingface_hub.HfFileSystem``: reading corpora).

fsspec itself is a core dependency (pure Python, no dependencies of its own); the drivers of the
remote stores are extras (``[s3]``, ``[gcs]``, ``[hf]``, or ``[cloud]`` for all three). A missing
driver, an unknown scheme, or any failure of the store is one line (:class:`StoreError`) naming
the URL, never a traceback.

What travels through a URL (publication, the cache) is :mod:`corpora.stores`.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from corpora.errors import StoreError

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")

# scheme -> (the package its fsspec driver needs, the extra that installs it); None: fsspec alone
SCHEMES: dict[str, tuple[str, str] | None] = {
    "file": None,
    "memory": None,
    "s3": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "hf": ("huggingface_hub", "hf"),
}


def scheme(text: str | object) -> str | None:
    """The URL scheme of ``text`` in lower case (``"s3"``), or None for a plain path."""
    m = _SCHEME_RE.match(str(text))
    return m.group(1).lower() if m else None


def is_url(text: str | object) -> bool:
    """True when ``text`` names a location through a scheme (``s3://...``) rather than a path."""
    return _SCHEME_RE.match(str(text)) is not None


def has_glob(text: str) -> bool:
    return _GLOB_CHARS.search(text) is not None


@dataclass(frozen=True)
class Location:
    """A URL opened: ``fs`` (an fsspec file system) and ``path`` (the path on it); ``url`` is the
    text given, without a trailing slash. :meth:`url_of` and :meth:`path_of` name what lies in it."""

    url: str
    fs: Any
    path: str

    def path_of(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"


def _missing_driver(text: str, sch: str) -> StoreError:
    module, extra = SCHEMES[sch]  # type: ignore[misc]
    return StoreError(f"{text}: {sch}:// needs the {module} package, which is not installed; install the "
                      f"extra: pip install -e \".[{extra}]\" (or \".[cloud]\" for s3, gs and hf)")


def open_location(text: str) -> Location:
    """Open the URL ``text`` (see the module docstring); one-line :class:`StoreError` for an
    unknown scheme, a missing driver or a URL the driver refuses."""
    text = str(text)
    sch = scheme(text)
    if sch is None:
        raise StoreError(f"{text}: not a URL")   # callers test is_url first; a bug, said in one line
    if sch not in SCHEMES:
        raise StoreError(f"{text}: unsupported location scheme '{sch}://'; trawl reads and writes a local path, "
                         f"file://, memory://, s3:// or gs://, and reads hf://")
    if SCHEMES[sch] is not None:
        import importlib.util

        if importlib.util.find_spec(SCHEMES[sch][0]) is None:   # type: ignore[index]
            raise _missing_driver(text, sch)
    try:
        import fsspec.core
    except ImportError:
        raise StoreError(f"{text}: URLs need the fsspec package (a trawl dependency): pip install -e .") from None
    url = text.rstrip("/") if len(text.rstrip("/")) > len(sch) + 3 else text
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError:
        if SCHEMES[sch] is not None:
            raise _missing_driver(text, sch) from None
        raise StoreError(f"{text}: cannot open ({sch}:// driver missing)") from None
    except Exception as exc:   # the driver refuses the URL (a malformed bucket or repository name)
        raise StoreError(f"{text}: cannot open the location ({first_line(exc)})") from None
    return Location(url, fs, path)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextmanager
def store_errors(url: str, action: str) -> Iterator[None]:
    """Turn whatever the store's driver raises inside the block (a network error, a refused
    credential, a missing object) into one :class:`StoreError` line: ``URL: cannot ACTION: why``.
    trawl's own user errors pass through."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        if getattr(exc, "user_error", False):
            raise
        why = "no such object" if isinstance(exc, FileNotFoundError) else first_line(exc)
        raise StoreError(f"{url}: cannot {action}: {why}") from None


def require_local(text: str | object, what: str) -> None:
    """Refuse a URL where only a path will do (a run folder, which is appended to and locked while
    a run writes it): one line saying what to do instead."""
    if is_url(text):
        raise StoreError(f"{text}: {what} must be a path (local, or on a file system every node mounts); "
                         f"object stores hold corpora and indexes, not run folders")
