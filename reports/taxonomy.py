"""Benign memorization: the class of a memorized span (Prashanth et al. 2024).

"Recite, Reconstruct, Recollect: Memorization in LMs as a Multifaceted
Phenomenon" (arXiv 2406.17746) splits memorized sequences into *recitation*
(highly duplicated in the training data), *reconstruction* (inherently
predictable: repeating or incrementing patterns) and *recollection* (the rest).
An audit counts what the model emitted, so ``2016, 2017, 2018, ...`` or
``poem poem poem`` - text any model writes - would otherwise count as much as a
recollected paragraph. Every memorized span gets exactly one class:

===============  =================================================================
class            rule (checked in this order; the first that holds wins)
===============  =================================================================
low_information  letters and digits (Unicode word characters but ``_``) are less than
                 ``LOW_INFORMATION_MAX_ALNUM`` (40 %) of the span's characters,
                 each maximal run of whitespace counting as one character
                 (so indentation width does not matter): whitespace,
                 punctuation, brackets, separators, markup and code scaffolding
                 such as ``})\\n    })\\n})``.
reconstruction   predictable units cover at least ``RECONSTRUCTION_MIN_COVERAGE``
                 (80 %) of the span's non-whitespace characters (definition
                 below): repeated tokens, repeated lines, short cycles, number
                 or letter sequences with a constant step, templates whose
                 numbers advance by a constant step.
recitation       the span occurs at least ``recitation_min_occurrences`` times in
                 the reference corpus (matches.parquet ``occurrences``, counted
                 over every shard). Default 6: the paper's "more than 5
                 duplicates".
recollection     none of the above.
===============  =================================================================

*Non-trivial* memorization is recitation + recollection: what an attacker
learns from the model rather than from the pattern.

**Predictable units.** The text is cut into units: a run of ASCII digits (a
*number*), a run of letters (one ASCII letter alone is a *lone letter*), a run
of whitespace, any other single character. Units compare by text, except that
all numbers are equal, all lone letters are equal and all whitespace runs are
equal. A *stretch* of period ``p`` (1 <= p <= 64) is a maximal run of units
with ``unit[t] == unit[t + p]``, at least ``2p + 1`` units long (two copies of a
``p``-unit cycle and the start of a third: ``poem poem poem``, ``2016, 2017,
2018``, a line repeated). A unit is *predictable* when it lies in a stretch
and, if it is a number or a lone letter, is one of three copies ``x, x + p,
x + 2p`` inside one stretch of period ``p`` whose values (the number; the
letter's code point) step by a constant, 0 allowed: ``1, 2, 3``, ``a) b) c)``,
``case 1: ... case 2: ... case 3:``, ``x = 0; x = 0; x = 0``. So the
separators of ``1, 2, 4, 8, 16`` are predictable, its numbers are not, and
numbers of more than 15 digits never are. The *coverage* is the share of the
span's non-whitespace characters in predictable units.

**Why this order** (the paper checks recitation first). Low-information and
reconstructed text tells nobody anything whatever its corpus count: the year
list above occurs in countless documents, so the paper's order would file it
as recitation, i.e. non-trivial, which is the overstatement this split exists
to remove. So the two content-free classes come first, and a duplicated
passage counts as recitation only when it has content. ``classify(...,
paper_order=True)`` gives the paper's order (recitation, reconstruction,
recollection; low-information not used) for comparison with its tables.

Guarantees: deterministic, pure Python + NumPy on the span text and its corpus
count (no model, no corpus access); time and memory linear in the span's length
(64 periods at most; about 0.1 ms for a 50-token span of prose, 0.5 ms for one
of numbers); cycles inside one run of letters (``hahaha``) and cycles longer
than 64 units (a repeated paragraph) are not detected. Tested against a loop-by-
loop implementation of the rule above.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from reports.inputs import low_bytes_mask, words_at

CLASSES = ("low_information", "reconstruction", "recitation", "recollection")
TRIVIAL = ("low_information", "reconstruction")
NONTRIVIAL = ("recitation", "recollection")
RECITATION_MIN_OCCURRENCES = 6
LOW_INFORMATION_MAX_ALNUM = 0.4
RECONSTRUCTION_MIN_COVERAGE = 0.8
MAX_PERIOD = 64

DEFINITIONS = {
    "low_information": "letters and digits are less than {L:.0%} of the span's characters (each run of "
                       "whitespace counted as one character): whitespace, punctuation, markup or code scaffolding",
    "reconstruction": "inherently predictable: at least {C:.0%} of the span's non-whitespace characters lie in "
                      "repeating cycles (a cycle of at most 64 units - words, numbers, single characters - repeated "
                      "twice and begun a third time), numbers and lone letters in them stepping by a constant "
                      "(repeated tokens or lines, 2016, 2017, 2018, a) b) c), templates)",
    "recitation": "highly duplicated: the span occurs at least {R} times in the reference corpus (Prashanth et al. "
                  "2024: more than 5 duplicates)",
    "recollection": "none of the above: memorized content that is neither predictable nor highly duplicated",
    "nontrivial": "recitation + recollection (low-information and reconstruction spans excluded)",
    "order": "one class per span, the first rule that holds in the order low_information, reconstruction, "
             "recitation, recollection (the paper checks recitation first; a predictable or empty span is "
             "trivial however often the corpus holds it)",
}


def definitions(recitation_min_occurrences: int = RECITATION_MIN_OCCURRENCES) -> dict[str, str]:
    """The class definitions with this report's thresholds filled in."""
    return {k: v.format(L=LOW_INFORMATION_MAX_ALNUM, C=RECONSTRUCTION_MIN_COVERAGE, R=recitation_min_occurrences)
            for k, v in DEFINITIONS.items()}


_UNIT = re.compile(r"[0-9]+|[^\W\d_]+|\s+|.", re.S)
_NOT_ALNUM = re.compile(r"[\W_]+")
_SPACE = re.compile(r"\s+")
_ASCII_DIGITS = frozenset("0123456789")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MAX_DIGITS = 15        # longer numbers are exact no more as float64: they never form a sequence


# ASCII text: the same counts with bytes.translate (\w is [A-Za-z0-9_] there, \s the bytes below)
_ASCII_ALNUM = bytes(c for c in range(128) if chr(c).isalnum())
_ASCII_WHITESPACE = bytes(c for c in range(128) if chr(c).isspace())
_ASCII_SPACE_MAP = bytes(32 if chr(c).isspace() else 120 for c in range(256))    # whitespace -> " ", else "x"


def alnum_share(text: str) -> float:
    """Letters and digits (Unicode word characters except ``_``) / characters, each maximal
    whitespace run counted as one character."""
    if text.isascii():
        b = text.encode("ascii")
        m = b.translate(_ASCII_SPACE_MAP)
        total = len(b) - m.count(b" ") + m.count(b"x ") + m.startswith(b" ")
        return (len(b) - len(b.translate(None, _ASCII_ALNUM))) / total if total else 0.0
    total = len(_SPACE.sub(" ", text))
    return len(_NOT_ALNUM.sub("", text)) / total if total else 0.0


COUNT_CHARS = 1 << 20      # characters of ASCII text per block of _char_counts
# ASCII byte -> 1 letter or digit, 2 whitespace (Python's \s), 0 any other (a bytes.translate table)
_CHAR_CLASS = bytes(1 if c < 128 and chr(c).isalnum() else 2 if c < 128 and chr(c).isspace() else 0
                    for c in range(256))


def _char_counts(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(letters and digits, characters with each whitespace run counted as one, non-whitespace
    characters) of every text: :func:`alnum_share` is the first over the second (0 when that is 0).
    Non-empty ASCII texts are counted together on their bytes (one ``bytes.translate`` of a block of
    them, sums per text); the empty ones get 0, 0, 0; the others -1 in the first two (callers count
    them one by one) and -1 non-whitespace characters."""
    n = len(texts)
    alnum = np.full(n, -1, dtype=np.int64)
    total = np.zeros(n, dtype=np.int64)
    nonspace = np.zeros(n, dtype=np.int64)
    lens = np.fromiter(map(len, texts), np.int64, n)
    fast = np.flatnonzero(np.fromiter(map(str.isascii, texts), bool, n) & (lens > 0))
    for i, j in _batches(lens[fast] + 1, COUNT_CHARS):
        rows = fast[i:j]
        # each text followed by "\0" (no letter, digit or whitespace): a text's whitespace runs are
        # its whitespace bytes after a byte that is not whitespace, or at its start
        raw = "\0".join([texts[r] for r in rows.tolist()]).encode("ascii")     # one encode: a copy
        ln = lens[rows]
        first = np.cumsum(ln + 1) - ln - 1
        c = np.frombuffer(raw.translate(_CHAR_CLASS), dtype=np.uint8)
        space = c == 2
        runs = np.empty(len(c), dtype=bool)
        runs[0] = space[0]
        np.greater(space[1:], space[:-1], out=runs[1:])
        spaces = np.add.reduceat(space, first, dtype=np.int64)
        alnum[rows] = np.add.reduceat(c == 1, first, dtype=np.int64)
        total[rows] = ln - spaces + np.add.reduceat(runs, first, dtype=np.int64)
        nonspace[rows] = ln - spaces
    alnum[lens == 0] = 0
    total[alnum < 0] = -1
    nonspace[alnum < 0] = -1
    return alnum, total, nonspace


def _units(text: str):
    """(ids, values, valued, non-whitespace lengths) of the text's units, as arrays: equal units get
    equal ids, all numbers one id, all lone ASCII letters another, all whitespace runs another;
    values (float64; NaN for numbers of more than 15 digits) only for numbers and lone letters."""
    units = _UNIT.findall(_SPACE.sub(" ", text))
    n = len(units)
    code: dict = {}
    ids = np.fromiter(map(code.setdefault, units, range(n)), np.int64, n)   # id = first position of the unit
    lens = np.fromiter(map(len, units), np.int64, n)
    kind = np.zeros(n + 1, dtype=np.int8)
    kind[[i for u, i in code.items() if u[0] in _ASCII_DIGITS]] = 1
    kind[[i for u, i in code.items() if len(u) == 1 and u in _ASCII_LETTERS]] = 2
    k = kind[ids]
    num, let = k == 1, k == 2
    vals = np.full(n, np.nan)
    for mask, new_id, value in ((num, n, _number), (let, n + 1, ord)):
        pos = np.nonzero(mask)[0]
        if len(pos):
            vals[pos] = np.fromiter(map(value, map(units.__getitem__, pos.tolist())), np.float64, len(pos))
            ids[pos] = new_id
    lens[ids == code.get(" ", -1)] = 0
    return ids, vals, num | let, lens


def _number(digits: str) -> float:
    return float(digits) if len(digits) <= _MAX_DIGITS else np.nan


def _repeat_bound(ids: np.ndarray, lens: np.ndarray) -> int:
    """Non-whitespace characters of the units whose id recurs within MAX_PERIOD units (before or
    after): every unit of a stretch does, so this bounds the covered characters from above."""
    if len(ids) < 2:
        return 0
    order = np.argsort(ids, kind="stable")
    same = (ids[order][1:] == ids[order][:-1]) & (np.diff(order) <= MAX_PERIOD)
    near = np.zeros(len(ids), dtype=bool)
    near[order[1:][same]] = True
    near[order[:-1][same]] = True
    return int(lens[near].sum())


def _runs(ids: np.ndarray, P: int):
    """(p, s, e) of every maximal run of ``ids[t] == ids[t + p]`` (t in [s, e)) with e - s >= p + 1,
    i.e. every stretch ``[s, e + p)`` of >= 2p + 1 units, p = 1..P; in (p, s) order."""
    m = len(ids)
    pad = np.concatenate([ids, -np.arange(1, P + 1, dtype=np.int64)])   # distinct sentinels past the end
    win = np.lib.stride_tricks.sliding_window_view(pad, P + 1)[:m]
    eq = np.zeros((P, m + 2), dtype=np.int8)
    eq[:, 1:-1] = (win[:, 1:] == win[:, :1]).T                         # eq[p-1, 1+t] = ids[t] == ids[t+p]
    d = np.diff(eq.ravel())
    starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
    row = starts // (m + 2)
    s, e, p = starts - row * (m + 2), ends - row * (m + 2), row + 1
    keep = (e - s) >= p + 1
    return p[keep], s[keep], e[keep]


def predictable_coverage(text: str) -> float:
    """Share of the text's non-whitespace characters lying in predictable units (module docstring)."""
    return _coverage(*_units(text))


def _coverage(ids, vals, valued, lens) -> float:
    m, total = len(ids), int(lens.sum())
    P = min(MAX_PERIOD, m // 2)
    if total == 0 or P < 1:
        return 0.0
    p, s, e = _runs(ids, P)
    if not len(p):
        return 0.0
    diff = np.zeros(m + 1, dtype=np.int64)          # units inside some stretch [s, e + p)
    np.add.at(diff, s, 1)
    np.add.at(diff, e + p, -1)
    covered = np.cumsum(diff)[:m] > 0
    # numbers and lone letters: one of three copies x, x + p, x + 2p inside one stretch, with one step
    x, tp = np.nonzero(valued)[0], np.unique(p)                        # candidates: valued x, periods with a stretch
    i1 = x[:, None] + tp[None, :]
    i2 = i1 + tp[None, :]
    idp = np.concatenate([ids, -np.arange(1, 2 * P + 1, dtype=np.int64)])   # distinct sentinels past the end
    vp = np.concatenate([vals, np.full(2 * P, np.nan)])
    v0, v1, v2 = vals[x][:, None], vp[i1], vp[i2]
    with np.errstate(invalid="ignore"):
        good = (idp[i1] == ids[x][:, None]) & (idp[i2] == ids[x][:, None]) & (v1 - v0 == v2 - v1)
    gx, gp = np.nonzero(good)
    x, tp = x[gx], tp[gp]
    key = (p - 1) * (m + 1) + s                                       # stretches, sorted by (p, s)
    r = np.searchsorted(key, (tp - 1) * (m + 1) + x, side="right") - 1
    ok = r >= 0
    ok[ok] = (p[r[ok]] == tp[ok]) & (x[ok] + tp[ok] < e[r[ok]])       # the three copies in stretch r
    step = np.zeros(m, dtype=bool)
    for k in (0, 1, 2):
        step[x[ok] + k * tp[ok]] = True
    covered = np.where(valued, step, covered)
    return int(lens[covered].sum()) / total


def is_predictable(text: str) -> bool:
    """The reconstruction rule: predictable coverage >= RECONSTRUCTION_MIN_COVERAGE."""
    ids, vals, valued, lens = _units(text)
    total = int(lens.sum())
    if total == 0 or _repeat_bound(ids, lens) < RECONSTRUCTION_MIN_COVERAGE * total:
        return False    # exact shortcut: too few characters could lie in any stretch
    return _coverage(ids, vals, valued, lens) >= RECONSTRUCTION_MIN_COVERAGE


def classify(text: str, occurrences: int, recitation_min_occurrences: int = RECITATION_MIN_OCCURRENCES,
             paper_order: bool = False) -> str:
    """The class of one memorized span: ``text`` (decoded) and its corpus ``occurrences``;
    ``paper_order``: the paper's order instead (module docstring)."""
    return classify_both(text, occurrences, recitation_min_occurrences)[1 if paper_order else 0]


def classify_both(text: str, occurrences: int,
                  recitation_min_occurrences: int = RECITATION_MIN_OCCURRENCES) -> tuple[str, str]:
    """(class in this module's order, class in the paper's order), the coverage computed once."""
    recites = int(occurrences or 0) >= recitation_min_occurrences
    low = alnum_share(text) < LOW_INFORMATION_MAX_ALNUM
    if recites and low:
        return "low_information", "recitation"
    predictable = is_predictable(text)
    paper = "recitation" if recites else "reconstruction" if predictable else "recollection"
    ours = ("low_information" if low else "reconstruction" if predictable
            else "recitation" if recites else "recollection")
    return ours, paper


# ------------------------------------------------------------------------------- many texts at once

BATCH_UNITS = 65_536     # units per batch of texts in predictable_many (its arrays: ~64 x this x 9 bytes)
_SEPARATORS = [chr(c) for c in range(0xE000, 0xF900)]   # private-use characters: a single "other" unit each


def classify_many(texts: list[str], occurrences: list[int],
                  recitation_min_occurrences: int = RECITATION_MIN_OCCURRENCES) -> list[tuple[str, str]]:
    """:func:`classify_both` of every (text, occurrences) pair, the predictable coverage of all
    texts computed together (:func:`predictable_many`); the same classes, one pair at a time."""
    n = len(texts)
    recites = np.fromiter((int(o or 0) >= recitation_min_occurrences for o in occurrences), bool, n)
    alnum, total, nonspace = _char_counts(texts)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, alnum / np.maximum(total, 1), 0.0)    # alnum_share: the same division
    low = share < LOW_INFORMATION_MAX_ALNUM
    for i in np.flatnonzero(alnum < 0).tolist():                         # not counted on bytes
        low[i] = alnum_share(texts[i]) < LOW_INFORMATION_MAX_ALNUM
    need = np.flatnonzero(~(recites & low))
    pred = np.zeros(n, dtype=bool)
    pred[need] = _predictable_many([texts[i] for i in need.tolist()], nonspace[need])
    return list(map(_CLASS_PAIRS.__getitem__, (low * 4 + pred * 2 + recites).tolist()))


# [low * 4 + predictable * 2 + recites]: (class in this module's order, class in the paper's order)
_CLASS_PAIRS = [("low_information" if low else "reconstruction" if p else "recitation" if r else "recollection",
                 "recitation" if r else "reconstruction" if p else "recollection")
                for low in (False, True) for p in (False, True) for r in (False, True)]


PREFIX_MIN_CHARS = 600          # ASCII texts longer than this are first judged on a prefix (_ruled_out_by_prefix)
_LOOKAHEAD = 2 * MAX_PERIOD + 1  # units after a unit that decide whether it is coverable (a triple x, x + p, x + 2p)


def _prefix_chars(n):
    """The characters of a text of ``n`` characters judged first (an int or an array of them)."""
    return n // 4 + 300


def predictable_many(texts: list[str]) -> np.ndarray:
    """:func:`is_predictable` of every text (a bool array). Long ASCII texts are first judged on a
    prefix (:func:`_ruled_out_by_prefix`, exact); the rest go through :func:`_predictable_all`."""
    return _predictable_many(texts, _char_counts(texts)[2])


def _predictable_many(texts: list[str], nonspace: np.ndarray) -> np.ndarray:
    """:func:`predictable_many` given each text's non-whitespace characters (:func:`_char_counts`)."""
    ruled = _ruled_out_by_prefix(texts, nonspace)
    if not ruled.any():
        return _predictable_all(texts)
    out = np.zeros(len(texts), dtype=bool)
    rest = np.nonzero(~ruled)[0]
    if len(rest):
        out[rest] = _predictable_all([texts[i] for i in rest.tolist()])
    return out


def _ruled_out_by_prefix(texts: list[str], nonspace: np.ndarray | None = None) -> np.ndarray:
    """True for ASCII texts of more than PREFIX_MIN_CHARS characters that cannot be predictable,
    shown on a prefix of each (a quarter of it and 300 characters), batched as :func:`_predictable_all`.

    Why it is exact. A text is predictable only if the characters of its coverable units (the units
    :func:`_coverable_units` keeps, a superset of the covered ones) reach RECONSTRUCTION_MIN_COVERAGE
    of its non-whitespace characters ``total``. Whether a unit is coverable depends only on the units
    at most ``2 * MAX_PERIOD`` before or after it (its id again within MAX_PERIOD units; a number in a
    triple x, x + p, x + 2p with p <= MAX_PERIOD). Cutting a text changes only its last unit (a run
    of one character class cut short), so every unit at least _LOOKAHEAD units before the prefix's
    last one is the same unit with the same neighbours up to 2 * MAX_PERIOD after it, and the
    neighbours before it are all there; units of the text before it in the batch only add partners.
    So the units of that *region* found not coverable in the prefix are not coverable in the text,
    and ``total - (their characters)`` bounds the text's coverable characters from above: below the
    threshold, the text is not predictable. The others are judged on the whole text as before.
    ``nonspace``: each text's non-whitespace characters (:func:`_char_counts`, computed when None)."""
    if nonspace is None:
        nonspace = _char_counts(texts)[2]
    out = np.zeros(len(texts), dtype=bool)
    lens = np.fromiter(map(len, texts), np.int64, len(texts))
    long_ = np.flatnonzero(lens > PREFIX_MIN_CHARS)
    long_ = long_[np.fromiter(map(str.isascii, map(texts.__getitem__, long_.tolist())), bool, len(long_))]
    keep = _prefix_chars(lens[long_])
    for i, j in _batches(keep + 1, BATCH_UNITS):
        rows = long_[i:j].tolist()
        cut = [texts[r][:k] for r, k in zip(rows, keep[i:j].tolist())]
        ids, kind, vals, lens = _ascii_units(cut)
        seps = np.nonzero(kind == 3)[0]
        ids[seps] = -4 * MAX_PERIOD - np.arange(len(seps))
        maybe = _coverable_units(ids, vals, (kind == 1) | (kind == 2), kind)
        first = np.concatenate([[0], seps + 1])                   # each text's first unit
        end = np.append(seps, len(ids))                           # and the end of its units
        region = first + np.maximum(end - first - _LOOKAHEAD, 0)  # units before it: the region
        # characters of the region's units found not coverable: differences of a running sum
        upto = np.concatenate([[0], np.cumsum(np.where(maybe, 0, lens))])
        uncovered = upto.take(region) - upto.take(first)
        total = nonspace[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = (total == 0) | ((total - uncovered) / np.maximum(total, 1) < RECONSTRUCTION_MIN_COVERAGE)
    return out


def _predictable_all(texts: list[str]) -> np.ndarray:
    """:func:`is_predictable` of every text (a bool array), computed on batches of texts laid end
    to end with a separator unit between two texts. A separator's id occurs once, so no run
    ``ids[t] == ids[t + p]`` of >= p + 1 positions reaches across it: a run holding a pair that
    straddles the separator at q holds t = q - p or t = q, which compare the separator with
    another unit. Every stretch therefore lies inside one text, and so does every triple of copies
    checked inside a stretch; periods above a text's m // 2 cannot hold a stretch of it. So each
    text's covered units are those :func:`predictable_coverage` finds in it alone."""
    out = np.zeros(len(texts), dtype=bool)
    sizes = np.fromiter(map(len, texts), np.int64, len(texts)) + 1      # units <= characters
    for i, j in _batches(sizes, BATCH_UNITS):
        batch = texts[i:j]
        sep = next((s for s in _SEPARATORS if not any(s in t for t in batch)), None)
        if sep is not None and len(batch) > 1:
            try:
                out[i:j] = _predictable_batch(batch, sep)
                continue
            except (UnicodeError, ValueError):   # e.g. a lone surrogate Arrow will not hold: one at a time
                pass
        out[i:j] = [is_predictable(t) for t in batch]
    return out


def _batches(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """(i, j) of consecutive batches of items: each from i up to the first item j whose items
    before it (from i) reach ``limit`` in size, at least one item each."""
    upto = np.concatenate([[0], np.cumsum(sizes)])
    ends = np.searchsorted(upto, upto + limit, side="left").tolist()     # the end of a batch begun anywhere
    n, i, out = len(sizes), 0, []
    while i < n:
        j = min(n, max(i + 1, ends[i]))
        out.append((i, j))
        i = j
    return out


@functools.lru_cache(maxsize=1)
def _whitespace():
    """The characters Python's ``\\s`` (``str.isspace``) matches, as an Arrow array (all below U+3001;
    tests/reports check the whole code space)."""
    import pyarrow as pa
    return pa.array([chr(c) for c in range(0x3001) if chr(c).isspace()], pa.string())


def _predictable_batch(texts: list[str], sep: str) -> np.ndarray:
    if all(t.isascii() for t in texts):
        ids, kind, vals, lens = _ascii_units(texts)
        n = len(ids)
    else:
        ids, kind, vals, lens = _units_arrow(texts, sep)
        n = len(ids)
    seps = np.nonzero(kind == 3)[0]
    ids[seps] = -4 * MAX_PERIOD - np.arange(len(seps))     # each separator unique (below _runs' end sentinels)
    valued = (kind == 1) | (kind == 2)
    first = np.concatenate([[0], seps + 1])         # each text's units: first[i] .. end[i]
    end = np.append(seps, n)

    def per_text(weights: np.ndarray) -> np.ndarray:   # sums per text, as differences of a running sum
        upto = np.concatenate([[0], np.cumsum(weights)])
        return upto.take(end) - upto.take(first)

    total = per_text(lens)
    if n < 2:
        return np.zeros(len(texts), dtype=bool)
    # an exact pre-check, as is_predictable's: the characters that could lie in predictable units
    # bound the covered ones from above; a text whose bound is below the threshold is not predictable
    maybe = _coverable_units(ids, vals, valued, kind)
    bound = per_text(np.where(maybe, lens, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cand = (total > 0) & (bound / np.maximum(total, 1) >= RECONSTRUCTION_MIN_COVERAGE)
    if not cand.any():
        return cand
    covered = _covered_units(ids, vals, valued)
    got = per_text(np.where(covered, lens, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cand & (total > 0) & (got / np.maximum(total, 1) >= RECONSTRUCTION_MIN_COVERAGE)


def _units_arrow(texts: list[str], sep: str):
    """(ids, kind, vals, lens) of the units of texts joined by ``sep`` (kind: 1 number, 2 lone
    ASCII letter, 3 separator, 4 whitespace run, 0 other; ids equal for equal units, all numbers,
    lone letters and whitespace runs one id each; separators' ids set by the caller)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # the units of the text with its whitespace runs collapsed are those of the text itself (a
    # whitespace run is always one unit), only the runs' text differs: all runs get one id below
    units = _UNIT.findall(sep.join(texts))
    n = len(units)
    enc = pa.array(units, pa.string()).dictionary_encode()
    dic = enc.dictionary
    idx = enc.indices.to_numpy().astype(np.int64)
    nd = len(dic)
    dlen = pc.utf8_length(dic).to_numpy().astype(np.int64)
    first = pc.utf8_slice_codeunits(dic, 0, 1)
    dkind = np.zeros(nd, dtype=np.int8)
    dkind[pc.is_in(first, value_set=pa.array(sorted(_ASCII_DIGITS))).to_numpy(zero_copy_only=False)] = 1
    dkind[(pc.is_in(dic, value_set=pa.array(sorted(_ASCII_LETTERS))).to_numpy(zero_copy_only=False))] = 2
    dkind[pc.is_in(first, value_set=_whitespace()).to_numpy(zero_copy_only=False)] = 4   # Python's \s
    dkind[pc.equal(dic, sep).to_numpy(zero_copy_only=False)] = 3
    dval = np.full(nd, np.nan)
    num = np.nonzero((dkind == 1) & (dlen <= _MAX_DIGITS))[0]       # longer numbers: NaN, as _number
    if len(num):
        dval[num] = pc.cast(dic.take(pa.array(num)), pa.float64()).to_numpy(zero_copy_only=False)
    let = np.nonzero(dkind == 2)[0]
    if len(let):
        dval[let] = [ord(c) for c in dic.take(pa.array(let)).to_pylist()]
    dlen[(dkind == 3) | (dkind == 4)] = 0
    kind, vals, lens = dkind[idx], dval[idx], dlen[idx]
    ids = idx.copy()
    ids[kind == 1] = nd                       # all numbers equal
    ids[kind == 2] = nd + 1                   # all lone letters equal
    ids[kind == 4] = nd + 2                   # all whitespace runs equal
    return ids, kind, vals, lens


# ASCII texts: unit classes of a byte (1 digit, 2 letter, 4 whitespace as Python's \s, 3 the
# separator byte 0xFF, which no ASCII text holds; 0 any other character, a unit of its own)
_SEP_BYTE = 0xFF
_BYTE_CLASS = np.array([1 if chr(c) in _ASCII_DIGITS else 2 if chr(c) in _ASCII_LETTERS
                        else 4 if c < 128 and chr(c).isspace() else 3 if c == _SEP_BYTE else 0
                        for c in range(256)], dtype=np.int8)
_BYTE_CLASS_TABLE = _BYTE_CLASS.tobytes()       # the same as a bytes.translate table
_LETTER_CODE = np.array([1 + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".find(chr(c)) for c in range(256)],
                        dtype=np.int64)
_PACK_LETTERS = 10          # a run of up to 10 letters packs exactly into 6 bits a letter
_ID_NUM, _ID_LETTER, _ID_SPACE = 1 << 61, (1 << 61) + 1, (1 << 61) + 2
_ID_OTHER, _ID_LONG = (1 << 61) + 256, 1 << 62


def _ascii_units(texts: list[str]):
    """:func:`_units_arrow` of ASCII texts, on the bytes with NumPy (the same units as ``_UNIT``:
    ``[0-9]+``, ``[A-Za-z]+``, ``\\s+`` or one other character; the same kinds, values and
    lengths; ids equal exactly for equal units)."""
    raw = "\xff".join(texts).encode("latin-1")          # ASCII texts and U+00FF: one byte each, one copy
    buf = np.frombuffer(raw, dtype=np.uint8)
    c = np.frombuffer(raw.translate(_BYTE_CLASS_TABLE), dtype=np.int8)
    start = np.ones(len(buf), dtype=bool)
    start[1:] = (c[1:] != c[:-1]) | (c[1:] == 0) | (c[1:] == 3)
    starts = np.flatnonzero(start)
    ulen = np.diff(starts, append=len(buf))
    ucls = c.take(starts)
    word = (ucls == 2) & (ulen >= 2)
    kind = np.where(word, np.int8(0), ucls)              # letter runs: lone (2) or text (0)
    lens = np.where(kind >= 3, 0, ulen)                  # separators, whitespace runs: no characters
    # ids and values by one look-up of (kind, first byte): all numbers, lone letters, whitespace runs
    # one id each, another character its own id; a lone letter's value its code (words: below)
    at = kind.astype(np.intp) << 8
    at |= buf.take(starts)
    ids = _KIND_BYTE_ID.take(at)            # take: faster than [] on these gathers
    vals = _KIND_BYTE_VALUE.take(at)
    # numbers of <= 15 digits: their value (exact in int64 and in float64: below 2^53), parsed eight
    # digits at a time from the little-endian word ending at the number's last digit (SWAR)
    num = np.flatnonzero((kind == 1) & (ulen <= _MAX_DIGITS))
    if len(num):
        vals[num] = _parse_digits(raw, starts[num], ulen[num])
    # runs of 2..10 letters packed exactly into 6 bits a letter, letter by letter over the runs of
    # one length at a time (no array per byte); longer runs numbered through a dict
    short = np.flatnonzero(word & (ulen <= _PACK_LETTERS))
    if len(short):
        ln = ulen[short]
        for m in np.unique(ln).tolist():
            sel = short[ln == m]
            p = starts[sel]
            acc = np.zeros(len(sel), dtype=np.int64)
            for k in range(m):
                acc = (acc << 6) | _LETTER_CODE[buf[p + k]]
            ids[sel] = acc
    long_ = np.flatnonzero(word & (ulen > _PACK_LETTERS))
    if len(long_):
        seen: dict = {}
        ids[long_] = [_ID_LONG + seen.setdefault(raw[a:a + m], len(seen))
                      for a, m in zip(starts[long_].tolist(), ulen[long_].tolist())]
    return ids, kind, vals, lens


_KIND_BYTE_ID = np.zeros(5 << 8, dtype=np.int64)        # [kind << 8 | first byte]: the unit's id (words: set after)
_KIND_BYTE_ID[0:256] = _ID_OTHER + np.arange(256)
_KIND_BYTE_ID[1 << 8:2 << 8] = _ID_NUM
_KIND_BYTE_ID[2 << 8:3 << 8] = _ID_LETTER
_KIND_BYTE_ID[4 << 8:5 << 8] = _ID_SPACE
_KIND_BYTE_VALUE = np.full(5 << 8, np.nan)              # a lone letter's value: its code point
_KIND_BYTE_VALUE[2 << 8:3 << 8] = np.arange(256)
# [number of digits, at most 8]: the low nibbles of the last that many bytes of a little-endian word
_DIGIT_MASK = ~low_bytes_mask(8 - np.arange(9)) & np.uint64(0x0F0F0F0F0F0F0F0F)


def _parse_digits(raw: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``int(raw[s:s + l])`` of runs of 1..16 ASCII digits, int64, on arrays: each run's last eight
    digits (and the eight before them, for runs of more than eight) read as one little-endian
    word, the bytes before the run masked off, and the eight digits combined in three multiply-
    shift steps (two digits, four, eight: each step exact, no carries between lanes)."""
    pad = b"0" * 16
    words = words_at(pad + raw + b"\0" * 8)          # the word at offset o + 16 holds raw[o:o + 8]
    end = starts + lengths + 8                       # the word ending at a run's end: raw[end - 8:end]
    out = _eight_digits(words.take(end), lengths).astype(np.int64)
    high = np.flatnonzero(lengths > 8)
    if len(high):
        out[high] += _eight_digits(words.take(end[high] - 8), lengths[high] - 8).astype(np.int64) * 100_000_000
    return out


def _eight_digits(w: np.ndarray, ndigits: np.ndarray) -> np.ndarray:
    """The value of the last ``ndigits`` (<= 8 kept) ASCII digits of each little-endian word."""
    v = w & _DIGIT_MASK.take(np.minimum(ndigits, 8))            # bytes before the run: 0
    v = ((v * np.uint64(10 * 256 + 1)) >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)
    v = ((v * np.uint64(100 * 65536 + 1)) >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    return (v * np.uint64(10000 * (1 << 32) + 1)) >> np.uint64(32)


def _coverable_units(ids, vals, valued, kind) -> np.ndarray:
    """Units that could be predictable (a superset of :func:`_covered_units`; whitespace runs and
    separators, which hold no counted character, are left out: False): a unit of a stretch has its
    id again within MAX_PERIOD units; a number or lone letter counted as predictable is one of
    three copies x, x + p, x + 2p (p <= MAX_PERIOD) of its kind with one step. Checked over the
    whole batch, separators ignored: a pattern across two texts only loosens the bound. The ids
    of other units (kind 0) are never those of a number, lone letter, whitespace run or separator,
    as :func:`_ascii_units` and :func:`_units_arrow` give them, so only those units are sorted."""
    m = len(ids)
    out = kind == 2             # lone letters (one character each) are all counted as coverable
    other = np.flatnonzero(kind == 0)
    if len(other) > 1:
        order = np.argsort(ids[other], kind="stable")
        at = other[order]
        same = (ids[at[1:]] == ids[at[:-1]]) & (np.diff(at) <= MAX_PERIOD)
        out[at[1:][same]] = True
        out[at[:-1][same]] = True
    pos = np.flatnonzero(kind == 1)
    if len(pos) < 3:
        return out
    # pairs (pos[i], pos[i + j]) of numbers d <= MAX_PERIOD units apart, and the third copy at
    # 2 pos[i + j] - pos[i]: one pass per j over slices (no index arrays), a look-up of the third
    # value (NaN past the end: the clip lands on NaN) compared with 2 v[i + j] - v[i] (exact: the
    # values are integers below 10^15 < 2^50, or NaN); j up to the most numbers any number has
    # within MAX_PERIOD units after it, and the distance checked only for the j at which some pair
    # is farther apart
    dense = np.full(m + 2 * MAX_PERIOD + 1, np.nan)
    v = vals[pos]
    dense[pos] = v
    v2, p2 = v + v, pos + pos
    hit = np.zeros(m + 2 * MAX_PERIOD + 1, dtype=bool)
    below = np.cumsum(kind == 1)                  # numbers at or before each unit
    within = below.take(np.minimum(pos + MAX_PERIOD, m - 1)) - below.take(pos)
    least = np.minimum.accumulate(within)         # least[i]: the fewest numbers within reach of pos[:i + 1]
    with np.errstate(invalid="ignore"):
        for j in range(1, min(int(within.max()), len(pos) - 1) + 1):
            pa = pos[:-j]
            third = p2[j:] - pa
            ok = dense.take(third, mode="clip") == v2[j:] - v[:-j]
            if least[len(pos) - j - 1] < j:       # some pair (pos[i], pos[i + j]) too far apart
                ok &= pos[j:] - pa <= MAX_PERIOD
            a = np.flatnonzero(ok)
            if len(a):
                hit[pa[a]] = True
                hit[pos[j:][a]] = True
                hit[third[a]] = True
    out |= hit[:m] & (kind == 1)
    return out


def _covered_units(ids, vals, valued) -> np.ndarray:
    """The predictable units (:func:`_coverage`'s ``covered``) of units laid end to end, periods up
    to MAX_PERIOD."""
    m = len(ids)
    P = min(MAX_PERIOD, m // 2)
    if P < 1:
        return np.zeros(m, dtype=bool)
    p, s, e = _runs(ids, P)
    if not len(p):
        return np.zeros(m, dtype=bool)
    diff = np.zeros(m + 1, dtype=np.int64)
    np.add.at(diff, s, 1)
    np.add.at(diff, e + p, -1)
    covered = np.cumsum(diff)[:m] > 0
    x, tp = np.nonzero(valued & covered)[0], np.unique(p)   # a counted copy lies in a stretch
    i1 = x[:, None] + tp[None, :]
    i2 = i1 + tp[None, :]
    idp = np.concatenate([ids, np.iinfo(np.int64).min + np.arange(2 * P, dtype=np.int64)])
    vp = np.concatenate([vals, np.full(2 * P, np.nan)])
    v0, v1, v2 = vals[x][:, None], vp[i1], vp[i2]
    with np.errstate(invalid="ignore"):
        good = (idp[i1] == ids[x][:, None]) & (idp[i2] == ids[x][:, None]) & (v1 - v0 == v2 - v1)
    gx, gp = np.nonzero(good)
    x, tp = x[gx], tp[gp]
    key = (p - 1) * (m + 1) + s
    r = np.searchsorted(key, (tp - 1) * (m + 1) + x, side="right") - 1
    ok = r >= 0
    ok[ok] = (p[r[ok]] == tp[ok]) & (x[ok] + tp[ok] < e[r[ok]])
    step = np.zeros(m, dtype=bool)
    for k in (0, 1, 2):
        step[x[ok] + k * tp[ok]] = True
    return np.where(valued, step, covered)
