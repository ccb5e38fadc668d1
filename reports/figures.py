"""From accumulators to metrics.json's figure dicts: :func:`figures` turns one
:class:`reports.passes.Group` into the dict of ``metrics`` / ``per_attack.<a>`` /
``per_variant.<a>.<v>``; :func:`figure_tables` builds all three levels; :func:`extrapolation`
the ``extrapolation`` section.

Guarantees: every level has the same keys in the same order (the divergence keys only where
the group's attack is a repeat attack, the discoverable keys only where it has discoverable
rows); a figure below the matcher's threshold is None ("not measured"); a ratio whose
denominator is 0 or unknown is None, never NaN or infinite (metrics.json is strict JSON).
"""
from __future__ import annotations

import numpy as np

from reports import extrapolate as ex
from reports.passes import Group, RunAccumulator
from reports.spans import THRESHOLDS


def safe_div(a, b):
    if b is None or a is None or b == 0:
        return None
    return a / b


def figures(g: Group, thresholds_ok: list[bool]) -> dict:
    """The figure dict of one group (definitions: :data:`reports.metrics.DEFINITIONS`)."""
    fq, cost, uniq = g.freq, g.total_cost_usd, g.unique_windows
    d = {
        "generations": g.generations,
        "generated_tokens": g.generated_tokens,
        "memorized_generations": g.memorized_generations,
        "memorized_generation_fraction": safe_div(g.memorized_generations, g.generations),
        "memorized_tokens": g.memorized_tokens,
        "memorized_token_fraction": safe_div(g.memorized_tokens, g.generated_tokens),
        "unique_memorized_windows": uniq,
        "unique_memorized_bytes": g.unique_bytes,
        "longest_run_tokens": g.longest_run[0],
        "longest_run_bytes": g.longest_run[1],
    }
    for i, t in enumerate(THRESHOLDS):
        d[f"spans_ge_{t}"] = g.spans_ge[i] if thresholds_ok[i] else None
        d[f"generations_ge_{t}"] = g.generations_ge[i] if thresholds_ok[i] else None
    d["good_turing_new_probability"] = ex.good_turing_new(fq)
    d["chao1_total_windows"] = ex.chao1(fq) if fq else 0.0
    d["chao1_ci95_low"], d["chao1_ci95_high"] = ex.chao1_ci95(fq)
    d["total_cost_usd"] = cost
    d["mb_per_dollar"] = (g.unique_bytes / 1e6 / cost) if cost > 0 else None
    d["usd_per_unique_window"] = (cost / uniq) if cost > 0 and uniq > 0 else None
    if g.shows_divergence:      # n/a (None) where the group has no divergence-attack rows (special_chars)
        has = g.divergence_rows > 0
        d["diverged_generations"] = g.diverged if has else None
        d["divergence_rate"] = safe_div(g.diverged, g.divergence_rows) if has else None
    if g.discoverable_rows:
        d["discoverable_rows"] = g.discoverable_rows
        d["exact_discoverable_hits"] = g.exact
        d["approximate_memorization_hits"] = g.approx
    return d


def attack_groups(acc: RunAccumulator) -> list[Group]:
    """One combined group per attack, in :meth:`RunAccumulator.attacks` order."""
    return [Group.combine(a, [g for g in acc.groups if g.attack == a]) for a in acc.attacks()]


def run_group(acc: RunAccumulator, total_cost: float) -> Group:
    """The run as one combined group, its cost the run's total (run.json's where it is the source)."""
    run = Group.combine(None, acc.groups)
    run.generations, run.total_cost_usd = acc.generations, total_cost
    return run


def figure_tables(acc: RunAccumulator, run: Group, attacks: list[Group],
                  thresholds_ok: list[bool]) -> tuple[dict, dict, dict]:
    """``(metrics, per_attack, per_variant)`` of metrics.json, before the memorized-text passes
    add their figures (classes, categories, near-duplicates)."""
    per_variant: dict[str, dict[str, dict]] = {}
    for g in acc.groups:
        per_variant.setdefault(g.attack, {})[g.variant] = figures(g, thresholds_ok)
    per_attack = {a.attack: figures(a, thresholds_ok) for a in attacks}
    totals = figures(run, thresholds_ok)
    totals["memorized_spans"] = len(acc.span_records)
    return totals, per_attack, per_variant


def observed_curve(first_gen: np.ndarray, total: int, points: int = 200) -> list[list[int]]:
    """Unique windows seen after the first g generations, for ``points`` values of g."""
    if total <= 0:
        return []
    xs = sorted({max(1, int(round(total * i / points))) for i in range(points + 1)})
    ys = np.searchsorted(first_gen, np.array(xs), side="left")  # first_gen < g  <=> seen in first g
    return [[int(x), int(y)] for x, y in zip(xs, ys)]


def extrapolation(run: Group, first_gen: np.ndarray, generations: int) -> dict:
    """The ``extrapolation`` section: frequency counts, Good-Turing, Chao1 and its interval, the
    observed accumulation curve and its extrapolation to 3x the observed generations."""
    freq = run.freq
    curve = ex.extrapolation_curve(freq, generations, factor=3.0) if generations else []
    return {
        "frequency_counts": {str(k): v for k, v in freq.items()},
        "unique_windows": run.unique_windows,
        "window_incidences": int(sum(k * v for k, v in freq.items())),
        "good_turing_new_probability": ex.good_turing_new(freq),
        "chao1_total_windows": ex.chao1(freq) if freq else 0.0,
        "chao1_ci95": list(ex.chao1_ci95(freq)),
        "method": "Good-Turing f1/N; Chao1 (bias-corrected when f2 = 0); curve: Chao et al. 2014 "
                  "incidence-based extrapolation with f0 from Chao1, drawn to 3x the observed generations",
        "observed_curve": observed_curve(first_gen, generations),
        "extrapolated_curve": [[g, round(v, 3)] for g, v in curve],
    }

