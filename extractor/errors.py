"""Errors that the CLI reports as one line (no traceback).

Convention shared by all four packages (so that none imports another just for
an exception class): a user-facing error class sets the class attribute
``user_error = True``; its message names the file, key or server and the
problem. ``corpora.CorpusError``, ``suffix_index.IndexFormatError`` and
``reports.ReportError`` follow it; :class:`TrawlError` is the extractor's.
"""
from __future__ import annotations


class TrawlError(Exception):
    """A user-facing error: bad input, bad config, unreachable server..."""

    user_error = True
    exit_code = 2


def is_user_error(exc: BaseException) -> bool:
    return bool(getattr(type(exc), "user_error", False))
