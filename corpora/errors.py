"""The corpus package's user-facing error.

``CorpusError`` follows trawl's convention (see ``extractor/errors.py``): the class
attribute ``user_error = True`` makes the ``trawl`` command print its message as
one line (``trawl: error: <message>``) instead of a traceback. Every message names
the file (and line, where there is one) and the problem.
"""
from __future__ import annotations


class CorpusError(Exception):
    """Bad corpus input or a damaged corpus folder; the message names the file."""

    user_error = True
    exit_code = 2


class ExecutorError(Exception):
    """The distributed executor failed as a whole: Ray missing, the cluster unreachable or lost, a
    task that no node can hold. Nothing was published; the command can be re-run as it was."""

    user_error = True
    exit_code = 2


class StoreError(Exception):
    """A location given as a URL (``s3://``, ``gs://``, ``hf://``, ``file://``, ``memory://``) that
    cannot be opened, read or written: an unknown scheme, a driver not installed, the store's own
    failure, an unfinished or damaged publication. One line naming the URL; re-running the command
    that publishes the folder (or the one that read it) is always safe."""

    user_error = True
    exit_code = 2
