"""What a run reports: :class:`RunSummary` (returned by ``run_attacks``) and per-attack figures.

Guarantees: :func:`attack_summaries` counts only the stored rows (the parts; those this run folder
object wrote or verified are taken from memory, :meth:`RunDir.summary_rows`), so its figures cover
every session of the run; each attack gets ``generations`` and ``completion_tokens`` plus what its
:meth:`~extractor.attacks.base.Attack.summarize` adds.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from extractor.attacks import ATTACKS
from extractor.sampling.run_folder import RunDir

try:
    from orjson import JSONDecodeError as _OrjsonError, loads as _orjson_loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _orjson_loads = None


_LONG_DIGITS = re.compile(r"\d{19}")   # an integer that may not fit 64 bits: orjson reads it as a float


def _extra(text: str) -> dict:
    """A row's ``extra`` JSON as a dict: orjson where it takes the text (~4x faster than ``json.loads``
    over 10,000 rows at the end of a run), the standard library for what it refuses (NaN literals,
    lone surrogates) and for text with 19 digits in a row (an integer past 64 bits, which orjson
    would read as a float): the same values as ``json.loads`` either way."""
    if _orjson_loads is not None and not _LONG_DIGITS.search(text):
        try:
            return _orjson_loads(text)
        except _OrjsonError:
            pass
    return json.loads(text)


def reads_back(value) -> bool:
    """Does ``value``'s JSON read back (:func:`_extra`) to an equal value of the same types? True for
    dicts with string keys, lists, strings that UTF-8 can hold, ints, finite floats, booleans and None;
    False for anything else (a tuple reads back as a list, NaN as a NaN that equals nothing, a lone
    surrogate not at all). The sampler keeps the rows' ``extra`` dicts for which it holds, so that the
    run's summary need not parse their JSON again (the same values as parsing it)."""
    c = value.__class__
    if c is dict:
        for k, v in value.items():      # the scalars of a flat dict inline (once per generation)
            if k.__class__ is not str or not (k.isascii() or _utf8(k)):
                return False
            vc = v.__class__
            if vc is bool or vc is int or v is None or (vc is str and v.isascii()):
                continue
            if vc is float:
                if v - v != 0.0:        # inf - inf and nan - nan are NaN
                    return False
                continue
            if not reads_back(v):
                return False
        return True
    if c is str:
        return value.isascii() or _utf8(value)
    if value is None or c is bool or c is int:
        return True
    if c is float:
        return math.isfinite(value)
    if c is list:
        return all(reads_back(v) for v in value)
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class RunSummary:
    run_dir: str
    run_id: str
    status: str                 # "finished", "stopped" (a budget cap), "interrupted", "failed"
    stop_reason: str | None     # None when every planned generation is stored
    planned: int
    finished: int               # generations stored (all sessions)
    new_generations: int        # stored by this call
    failed_requests: int        # requests that failed for good in this call (retried on --resume)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    elapsed_s: float            # this call
    tokens_per_s: float         # completion tokens per second in this call
    capabilities: dict = field(default_factory=dict)
    attacks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        why = f" ({self.stop_reason})" if self.stop_reason else ""
        return (f"{self.status}{why}: {self.finished}/{self.planned} generations, "
                f"{self.completion_tokens} completion tokens, ${self.cost_usd:.4f}, "
                f"{self.tokens_per_s:.1f} tokens/s, {self.failed_requests} failed requests -> {self.run_dir}")


def attack_summaries(rd: RunDir, resolved: list[dict] | None = None) -> dict:
    """``{attack: {"generations", "completion_tokens", ...}}`` over the stored rows; the attack's
    parameters for :meth:`Attack.summarize` are those of its first entry in ``resolved``."""
    by: dict = {}
    for attack, extra, ct, parsed in rd.summary_rows():
        e = parsed if parsed is not None else (_extra(extra) if extra else {})
        by.setdefault(attack, []).append((e, ct or 0))
    out: dict = {}
    for attack, items in by.items():
        s = {"generations": len(items), "completion_tokens": sum(ct for _, ct in items)}
        cls = ATTACKS.get(attack)
        if cls is not None:
            params = next((a["params"] for a in resolved or [] if a["name"] == attack), {})
            s.update(cls.summarize([e for e, _ in items], params))
        out[attack] = s
    return out
