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
low_information  letters and digits (``str.isalnum``, any script) are less than
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
*number*, value ``int``), a run of letters (a lone ASCII letter is an
*ordinal*, value ``ord``), a run of whitespace (all such runs are equal), any
other single character. Numbers compare equal to numbers, ordinals to
ordinals, other units by text. A *stretch* of period ``p`` (1 <= p <= 64 units)
is a maximal run of units with ``unit[i] == unit[i + p]``, at least ``2p + 1``
units long (two whole copies of a ``p``-unit cycle and the start of a third:
``poem poem poem``, ``2016, 2017, 2018``), in which every number or ordinal
position of the cycle moves by a constant step (0 allowed) from copy to copy:
``a) b) c)``, ``case 1: ... case 2: ...``. A stretch is cut where a step
changes (``1, 2, 4, 8`` is not predictable). A unit is predictable when it
lies in some stretch; the coverage is the share of non-whitespace characters
in predictable units.

**Why this order** (the paper checks recitation first). Low-information and
reconstructed text tells nobody anything whatever its corpus count: the year
list above occurs in thousands of documents, so the paper's order would file it
as recitation, i.e. non-trivial, which is the overstatement this split exists
to remove. So the two content-free classes come first, and a duplicated
passage counts as recitation only when it has content. ``classify(...,
paper_order=True)`` gives the paper's order (recitation, reconstruction,
recollection; low-information not used) for comparison with its tables.

Guarantees: deterministic, pure Python + NumPy on the span text and its corpus
count (no model, no corpus access); time linear in the span's length (64
periods at most); cycles inside one run of letters (``hahaha``) and cycles
longer than 64 units (a repeated paragraph) are not detected.
"""
from __future__ import annotations

import re

import numpy as np

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
    "reconstruction": "inherently predictable: repeating or incrementing units (repeated tokens or lines, short "
                      "cycles, number or letter sequences with a constant step, templates whose numbers advance by "
                      "a constant step; a cycle of at most 64 units repeated twice and begun a third time) cover at least {C:.0%} "
                      "of the span's non-whitespace characters",
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
_WS, _NUM, _ORD = 0, 1, 2


_NOT_ALNUM = re.compile(r"[\W_]+")
_SPACE = re.compile(r"\s+")


def alnum_share(text: str) -> float:
    """Letters and digits (Unicode word characters except ``_``) / characters, each maximal
    whitespace run counted as one character."""
    runs = _SPACE.findall(text)
    total = len(text) - sum(map(len, runs)) + len(runs)
    return len(_NOT_ALNUM.sub("", text)) / total if total else 0.0


def _unit_kind(u: str, other: dict) -> tuple:
    if u.isspace():
        return _WS, None, 0
    if u.isascii() and u.isdigit():
        return _NUM, int(u), len(u)
    if len(u) == 1 and u.isascii() and u.isalpha():
        return _ORD, ord(u), 1
    return 3 + len(other), None, other.setdefault(u, len(u))


def _units(text: str):
    """(ids, values, non-whitespace lengths) of the text's units."""
    units = _UNIT.findall(text)
    other: dict = {}
    kind = {u: _unit_kind(u, other) for u in dict.fromkeys(units)}
    ids = np.fromiter((kind[u][0] for u in units), dtype=np.int64, count=len(units))
    lens = np.fromiter((kind[u][2] for u in units), dtype=np.int64, count=len(units))
    return ids, [kind[u][1] for u in units], lens


_DIGITS = re.compile(r"[0-9]+")
_LONE_LETTER = re.compile(r"(?<![^\W\d_])[A-Za-z](?![^\W\d_])")


def _repeat_bound(text: str) -> tuple[int, int]:
    """(bound, total): ``total`` = non-whitespace characters; ``bound`` = those of the units whose
    id recurs within MAX_PERIOD units (before or after). Every unit of a stretch does, so ``bound``
    is at least the covered characters. Ids as in :func:`_units`, found by rewriting numbers to
    ``0``, lone ASCII letters to ``a`` and whitespace runs to one space."""
    orig = _UNIT.findall(text)
    same = _UNIT.findall(_SPACE.sub(" ", _LONE_LETTER.sub("a", _DIGITS.sub("0", text))))
    last: dict = {}
    near = [False] * len(same)
    for t, u in enumerate(same):
        j = last.get(u)
        if j is not None and t - j <= MAX_PERIOD:
            near[t] = near[j] = True
        last[u] = t
    total = bound = 0
    for u, n in zip(orig, near):
        if not u.isspace():
            total += len(u)
            bound += len(u) if n else 0
    return bound, total


def _candidate_runs(ids: np.ndarray):
    """(p, start, end) for every maximal run of ``ids[t] == ids[t + p]`` (t in [start, end)) with
    ``end - start >= p + 1`` (a stretch of >= 2p + 1 units), p = 1..min(MAX_PERIOD, m // 2)."""
    m = len(ids)
    P = min(MAX_PERIOD, m // 2)
    if P < 1:
        return []
    pad = np.concatenate([ids, -np.arange(1, P + 1, dtype=np.int64)])   # distinct sentinels past the end
    win = np.lib.stride_tricks.sliding_window_view(pad, P + 1)[:m]
    eq = np.zeros((P, m + 2), dtype=np.int8)
    eq[:, 1:-1] = (win[:, 1:] == win[:, :1]).T                         # eq[p-1, 1+t] = ids[t] == ids[t+p]
    d = np.diff(eq.ravel())
    starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
    row = starts // (m + 2)
    s, e, p = starts - row * (m + 2), ends - row * (m + 2), row + 1
    keep = (e - s) >= p + 1
    return list(zip(p[keep].tolist(), s[keep].tolist(), e[keep].tolist()))


def _stretches(vals: list, p: int, s: int, e: int):
    """Cut the stretch ``[s, e + p)`` of period p where a number/ordinal step changes; keep pieces of
    >= 2p + 1 units."""
    end = e + p
    cur = s
    for u in range(s + 2 * p, end):
        v = vals[u]
        if v is not None and u - 2 * p >= cur and v - vals[u - p] != vals[u - p] - vals[u - 2 * p]:
            if u - cur >= 2 * p + 1:
                yield cur, u
            cur = u - p
    if end - cur >= 2 * p + 1:
        yield cur, end


def is_predictable(text: str) -> bool:
    """The reconstruction rule: predictable coverage >= RECONSTRUCTION_MIN_COVERAGE."""
    bound, total = _repeat_bound(text)
    if total == 0 or bound < RECONSTRUCTION_MIN_COVERAGE * total:
        return False    # exact shortcut: too few characters could lie in any stretch
    return predictable_coverage(text) >= RECONSTRUCTION_MIN_COVERAGE


def predictable_coverage(text: str) -> float:
    """Share of the text's non-whitespace characters lying in predictable units (module docstring)."""
    ids, vals, lens = _units(text)
    total = int(lens.sum())
    if total == 0:
        return 0.0
    covered = np.zeros(len(ids), dtype=bool)
    for p, s, e in _candidate_runs(ids):
        for a, b in _stretches(vals, p, s, e):
            covered[a:b] = True
    return int(lens[covered].sum()) / total


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
