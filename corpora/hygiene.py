"""Untrusted text shown to a person, and numbers taken from one: a leaf module (no trawl imports).

:func:`visible` makes every control and format character of a text visible and inert
(Unicode categories Cc, Cf, Zl, Zp: ESC sequences, bidirectional overrides and isolates,
U+061C, zero-width characters, U+2028/2029, tag characters U+E0000-E007F, ...): each becomes
``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. Everything that prints text from a server, a corpus,
a ledger or a model uses it: the CLI's error line, ``trawl index find``, the reports and the
trend report. A terminal then never receives an escape sequence it would obey, and a page
never reorders or hides text.

:func:`number_problem` says why a number taken from a flag or a file is not acceptable: it
must be finite (``nan`` and ``inf`` are refused: every comparison with nan is false, so a nan
tolerance or budget turns its own check off) and within its range.
"""
from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata

__all__ = ["visible", "number_problem", "CATEGORIES"]

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
    if s.isprintable():   # no character of those categories (nor a surrogate): nothing to escape, and
        return s          # no need for the table of code points (0.2 s to build once per process)
    return _pattern(keep).sub(_repl, s)


def number_problem(name: str, value, *, minimum: float | None = None, above: float | None = None,
                   maximum: float | None = None) -> str | None:
    """Why ``value`` (an int or float, None: not given) is not an acceptable setting ``name``, or
    None when it is: it must be a finite number (nan compares false with everything, so a nan
    tolerance, budget or timeout would switch its own check off) within its range. Each package
    raises the message as its own user error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {visible(repr(value))}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if minimum is not None and value < minimum:
        return f"{name} must be >= {minimum:g}, got {value:g}"
    if above is not None and value <= above:
        return f"{name} must be > {above:g}, got {value:g}"
    if maximum is not None and value > maximum:
        return f"{name} must be <= {maximum:g}, got {value:g}"
    return None
