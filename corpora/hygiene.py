"""Untrusted text shown to a person, and numbers taken from one: a leaf module (no trawl imports).

:func:`visible` makes every control and format character of a text visible and inert
(Unicode categories Cc, Cf, Zl, Zp: ESC sequences, bidirectional overrides and isolates,
U+061C, zero-width characters, U+2028/2029, tag characters U+E0000-E007F, ...): each becomes
``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. Everything that prints text from a server, a corpus,
a ledger or a model uses it: the CLI's error line, ``trawl index find``, the reports and the
trend report. A terminal then never receives an escape sequence it would obey, and a page
never reorders or hides text.

:func:`finite_number` and :func:`whole_number` are argparse ``type=`` functions: a flag's value
must be a finite number (``nan`` and ``inf`` are refused, since every comparison with nan is
false and a nan tolerance or budget turns its check off) within its range.
"""
from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import unicodedata

__all__ = ["visible", "finite_number", "whole_number", "CATEGORIES"]

CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


@functools.lru_cache(maxsize=1)
def _shown() -> tuple[int, ...]:
    """Code points of the categories (once per process: about 0.2 s)."""
    cat = unicodedata.category
    return tuple(i for i in range(sys.maxunicode + 1) if cat(chr(i)) in CATEGORIES)


@functools.lru_cache(maxsize=None)
def _pattern(keep: str) -> re.Pattern:
    chars = [i for i in _shown() if chr(i) not in keep]
    ranges, start, prev = [], None, None
    for i in chars:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            ranges.append((start, prev))
            start = prev = i
    if start is not None:
        ranges.append((start, prev))
    cls = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    # lone surrogates (Cs) cannot be written out as UTF-8: shown the same way
    return re.compile(f"[{cls}\ud800-\udfff]")


def _repl(m: re.Match) -> str:
    c = ord(m.group(0))
    if c <= 0xFF:
        return f"\\x{c:02x}"
    if c <= 0xFFFF:
        return f"\\u{c:04x}"
    return f"\\U{c:08x}"


def visible(text, keep: str = "") -> str:
    """``text`` (any object, via ``str``; None is "") with every Cc, Cf, Zl and Zp character (and
    lone surrogate) written as a visible escape; characters in ``keep`` (e.g. ``"\\n\\t"`` for
    multi-line text) are left as they are. A backslash is not itself escaped: the output is for
    people, not for parsing back."""
    s = "" if text is None else str(text)
    return _pattern(keep).sub(_repl, s)


def _number(text: str, kind, what: str):
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {visible(repr(text))}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {visible(repr(text))}")
    return v


def _ranged(kind, what: str, minimum=None, maximum=None, above=None):
    def parse(text: str):
        v = _number(text, kind, what)
        if minimum is not None and v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        if above is not None and v <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {text}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return v
    parse.__name__ = what.split()[-1]      # argparse names the type in its message
    return parse


def finite_number(minimum: float | None = None, maximum: float | None = None, above: float | None = None):
    """argparse ``type=``: a finite float within ``[minimum, maximum]`` (``above``: strictly greater)."""
    return _ranged(float, "a number", minimum, maximum, above)


def whole_number(minimum: int | None = None, maximum: int | None = None):
    """argparse ``type=``: an integer within ``[minimum, maximum]``."""
    return _ranged(int, "an integer", minimum, maximum)
