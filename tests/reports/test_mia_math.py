"""ROC, AUC and TPR at low FPR (reports/mia.py) against brute force."""
from __future__ import annotations

import numpy as np
import pytest

from reports.mia import auc, evaluate, oriented, roc_curve, tpr_at_fpr


def brute_auc(pos, neg):
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def brute_tpr(pos, neg, fpr):
    best = 0.0
    for t in sorted(set(pos) | set(neg)) + [float("inf")]:
        fp = sum(n >= t for n in neg) / len(neg)
        if fp <= fpr + 1e-12:
            best = max(best, sum(p >= t for p in pos) / len(pos))
    return best


def test_hand_cases():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 1], [1, 1, 1]) == 0.5
    assert auc([2, 0], [1]) == 0.5
    assert tpr_at_fpr([3, 4], [1, 2], 0.01) == 1.0
    assert tpr_at_fpr([1, 5], [2, 3], 0.01) == 0.5
    # FPR 0.5 with 2 non-members: one may be called member
    assert tpr_at_fpr([1, 2.5], [2, 3], 0.5) == 0.5        # t = 2.5: FPR 1/2, TPR 1/2
    assert tpr_at_fpr([1, 2.5], [2, 3], 0.49) == 0.0       # no non-member may pass: t > 3
    assert tpr_at_fpr([1, 2.5], [2, 3], 1.0) == 1.0
    fpr, tpr = roc_curve([3, 1], [2, 0])
    assert list(fpr) == [0, 0, 0.5, 0.5, 1.0] and list(tpr) == [0, 0.5, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(8))
def test_against_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = list(rng.integers(0, 6, rng.integers(1, 30)).astype(float))
    neg = list(rng.integers(0, 5, rng.integers(1, 140)).astype(float))
    assert auc(pos, neg) == pytest.approx(brute_auc(pos, neg))
    for f in (0.001, 0.01, 0.1, 0.3):
        assert tpr_at_fpr(pos, neg, f) == pytest.approx(brute_tpr(pos, neg, f))
    fpr, tpr = roc_curve(pos, neg)
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute_auc(pos, neg))     # trapezoid area = Mann-Whitney
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_evaluate_has_intervals_and_resolution():
    rng = np.random.default_rng(1)
    pos = rng.normal(1.0, 1.0, 200)
    neg = rng.normal(0.0, 1.0, 300)
    r = evaluate(pos, neg, rounds=300, seed=4)
    assert r["auc"] == pytest.approx(brute_auc(pos, neg))
    lo, hi = r["auc_ci"]
    assert 0 <= lo <= r["auc"] <= hi <= 1
    assert r["tpr_at_fpr"]["0.01"]["below_resolution"] is False
    assert r["tpr_at_fpr"]["0.001"]["below_resolution"] is True          # 1/300 > 0.001
    assert r == evaluate(pos, neg, rounds=300, seed=4)                     # seeded
    assert evaluate(pos, neg, rounds=0)["auc_ci"] is None
    with pytest.raises(ValueError):
        evaluate([], neg)
    with pytest.raises(ValueError):
        evaluate([float("nan")], neg)


def test_orientation():
    assert list(oriented("perplexity", [1.0, np.e])) == [0.0, -1.0]      # low perplexity = member
    assert list(oriented("min_k", [-1.0])) == [-1.0]
    with pytest.raises(KeyError):
        oriented("unknown", [1])
