"""The index package's user-facing errors.

Both follow trawl's convention (``extractor/errors.py``): the class attribute
``user_error = True`` makes the ``trawl`` command print the message as one line
(``trawl: error: <message>``), never a traceback. Messages name the file and the
problem.
"""
from __future__ import annotations


class IndexFormatError(Exception):
    """A missing, truncated, corrupted or incompatible index (names the file)."""

    user_error = True
    exit_code = 2


class MatchInputError(Exception):
    """Generations that cannot be matched: missing file or column, bad schema."""

    user_error = True
    exit_code = 2


class ParameterError(ValueError):
    """A bad numeric parameter (min_tokens < 1, batch_size < 1, samples < 0, ...)."""

    user_error = True
    exit_code = 2


def check_int(label: str, value, minimum: int) -> int:
    """``value`` as an int if it is a whole number ``>= minimum``; else :class:`ParameterError`."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ParameterError(f"{label} must be a whole number >= {minimum}, got {value!r}")
    return int(value)
