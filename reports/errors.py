"""User-facing errors of the reports package.

Follows the convention shared by all of trawl's packages (see
``extractor/errors.py``; not imported, to keep ``reports`` independent): a
class attribute ``user_error = True`` makes the CLI print the message as one
line instead of a traceback.
"""
from __future__ import annotations


class ReportError(Exception):
    """Bad input to a report: missing or malformed run files, a bad ``--fail-if``."""

    user_error = True
    exit_code = 2
