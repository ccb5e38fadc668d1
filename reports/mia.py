"""Membership-inference evaluation: ROC curves, ROC AUC and the true-positive rate at low
false-positive rates, with bootstrap confidence intervals (Carlini et al. 2022, "Membership
Inference Attacks From First Principles").

Convention: a method's *membership score* is oriented so that **higher means "member"** (the
transforms of :data:`reports.ranking.RANKINGS`: low perplexity first, high min-k% first, ...). A threshold t classifies "score >= t" as member.

* ROC curve: one point (FPR, TPR) per distinct score, from (0, 0) to (1, 1).
* AUC: the probability that a random member outscores a random non-member, ties counting 1/2 —
  the Mann-Whitney U statistic over (members x non-members), equal to the trapezoid area under
  the ROC curve.
* TPR at FPR x: the largest TPR over thresholds whose FPR <= x (no interpolation): with N
  non-members at most floor(x N) may be called members. When x < 1/N only FPR = 0 thresholds
  qualify and the figure says so (``fpr_resolution`` = 1/N).
* Bootstrap: members and non-members are resampled with replacement separately (stratified),
  ``rounds`` times with a fixed seed; the interval is the 2.5th-97.5th percentile of the
  replicate values (percentile bootstrap, 95%).
"""
from __future__ import annotations

import math

import numpy as np

FPRS = (0.01, 0.001)
# the methods, their signal columns and orientation: reports/ranking.py's RANKINGS (part of one home)


def _check(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(members, dtype=np.float64)
    neg = np.asarray(nonmembers, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("membership scores must be finite")
    return pos, neg


def auc(members, nonmembers) -> float:
    """Mann-Whitney AUC (ties 1/2) in O((P + N) log N)."""
    pos, neg = _check(members, nonmembers)
    s = np.sort(neg)
    below = np.searchsorted(s, pos, side="left")
    equal = np.searchsorted(s, pos, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (pos.size * neg.size))


def tpr_at_fpr(members, nonmembers, fpr: float) -> float:
    """Largest TPR of a threshold "score >= t" whose FPR is <= ``fpr``."""
    pos, neg = _check(members, nonmembers)
    allowed = math.floor(fpr * neg.size + 1e-9)
    if allowed >= neg.size:
        return 1.0
    cut = np.sort(neg)[::-1][allowed]            # the threshold must lie above this non-member
    return float(np.count_nonzero(pos > cut) / pos.size)


def roc_curve(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) arrays, one point per distinct score (descending thresholds), from (0,0) to (1,1)."""
    pos, neg = _check(members, nonmembers)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]     # the last index of each distinct score
    tp = np.cumsum(labels)[last]
    fp = np.cumsum(1 - labels)[last]
    return np.r_[0.0, fp / neg.size], np.r_[0.0, tp / pos.size]


def _bootstrap(pos: np.ndarray, neg: np.ndarray, rounds: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    aucs = np.empty(rounds)
    tprs = {f: np.empty(rounds) for f in FPRS}
    for r in range(rounds):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = neg[rng.integers(0, neg.size, neg.size)]
        aucs[r] = auc(p, n)
        for f in FPRS:
            tprs[f][r] = tpr_at_fpr(p, n, f)
    out = {"auc": _interval(aucs)}
    for f in FPRS:
        out[f] = _interval(tprs[f])
    return out


def _interval(v: np.ndarray) -> list[float]:
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


def evaluate(members, nonmembers, rounds: int = 1000, seed: int = 0) -> dict:
    """One method's figures: ``auc``, ``auc_ci``, ``tpr_at_fpr`` {"0.01": {"value", "ci",
    "below_resolution"}}, ``roc`` (fpr, tpr lists), counts."""
    pos, neg = _check(members, nonmembers)
    fpr, tpr = roc_curve(pos, neg)
    ci = _bootstrap(pos, neg, rounds, seed) if rounds > 0 else None
    res = 1.0 / neg.size
    return {
        "members": int(pos.size), "nonmembers": int(neg.size),
        "auc": auc(pos, neg), "auc_ci": ci["auc"] if ci else None,
        "tpr_at_fpr": {f"{f:g}": {"value": tpr_at_fpr(pos, neg, f), "ci": ci[f] if ci else None,
                                  "below_resolution": f < res} for f in FPRS},
        "fpr_resolution": res,
        "roc": {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr]},
    }


def oriented(method: str, values) -> np.ndarray:
    """The values of a :data:`reports.ranking.RANKINGS` method's column turned into membership
    scores (higher = member), with the ranking's own transform."""
    from reports.ranking import RANKINGS

    if method not in RANKINGS:
        raise KeyError(f"unknown membership method {method!r}; known: {', '.join(RANKINGS)}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(RANKINGS[method][1](np.asarray(values, dtype=np.float64)), dtype=np.float64)
