"""reports/ranking.py: every signal against hand computation on hand-made logprobs, and
precision@N / ROC AUC against brute force."""
from __future__ import annotations

import itertools
import math
import random
import zlib

import numpy as np
import pytest

from reports import ranking as R

LN = math.log


def test_perplexity_by_hand():
    lps = [LN(0.5), LN(0.25), float("nan"), LN(0.125)]      # NaN: an unscored position, left out
    # -mean = (ln2 + 2 ln2 + 3 ln2) / 3 = 2 ln2 -> P = 4
    assert R.log_perplexity(lps) == pytest.approx(2 * LN(2))
    assert R.perplexity(lps) == pytest.approx(4.0)
    assert math.isnan(R.perplexity([float("nan")]))


def test_window_perplexity_by_hand():
    lps = [-4.0, -1.0, -1.0, -3.0, -0.5]
    # windows of 2: means -2.5, -1, -2, -1.75 -> best -1 -> exp(1)
    assert R.window_perplexity(lps, 2) == pytest.approx(math.e)
    assert R.window_perplexity(lps, 3) == pytest.approx(math.exp((1 + 3 + 0.5) / 3))   # windows -2, -1.667, -1.5
    assert R.window_perplexity(lps, 50) == pytest.approx(R.perplexity(lps))           # shorter than the window


def test_min_k_by_hand():
    lps = [-0.1, -5.0, -0.2, -3.0, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
    assert R.min_k(lps, 0.2) == pytest.approx((-5.0 - 3.0) / 2)          # int(10 * 0.2) = 2 lowest
    assert R.min_k(lps, 0.01) == pytest.approx(-5.0)                    # at least one
    assert R.min_k(lps, 1.0) == pytest.approx(sum(lps) / 10)


def test_min_k_pp_by_hand():
    # per position: (lp - mu) / sigma
    lps = [-1.0, -2.0, -3.0, -0.5]
    mu = [-2.0, -2.0, -1.0, -0.5]
    var = [4.0, 1.0, 1.0, 0.0]        # sigma 2, 1, 1, 0 (left out)
    s = [0.5, 0.0, -2.0]
    assert R.min_k_pp(lps, mu, var, 0.5) == pytest.approx(-2.0)          # int(3 * .5) = 1 lowest
    assert R.min_k_pp(lps, mu, var, 1.0) == pytest.approx(sum(s) / 3)


def test_signals_and_ratios_by_hand():
    text = "abc abc abc abc"
    lps = [LN(0.5)] * 4
    lower = [LN(0.25)] * 4
    ref = [LN(0.125)] * 4
    out = R.signals(text, lps, lower_lps=lower, ref_lps=ref, mean=[-1.0] * 4, var=[1.0] * 4, k=0.5, window=2)
    z = len(zlib.compress(text.encode()))
    assert out["zlib_entropy"] == z
    assert out["perplexity"] == pytest.approx(2.0)
    assert out["zlib_ratio"] == pytest.approx(z / LN(2))
    assert out["lower_ratio"] == pytest.approx(2.0) and out["ref_ratio"] == pytest.approx(3.0)
    assert out["min_k_pp"] == pytest.approx(LN(0.5) + 1.0)
    assert out["scored_tokens"] == 4
    none = R.signals(text, lps)
    assert math.isnan(none["lower_ratio"]) and math.isnan(none["ref_ratio"]) and math.isnan(none["min_k_pp"])


def _brute_auc(s, lab):
    pos = [x for x, l in zip(s, lab) if l]
    neg = [x for x, l in zip(s, lab) if not l]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


def test_auc_and_precision_against_brute_force():
    rng = random.Random(7)
    for trial in range(60):
        n = rng.randint(2, 40)
        s = [rng.choice([rng.random(), float(rng.randint(0, 3)), -math.inf]) for _ in range(n)]
        lab = [rng.random() < 0.4 for _ in range(n)]
        if trial == 0:
            lab = [True] * n
        got = R.roc_auc(s, lab)
        if all(lab) or not any(lab):
            assert got is None
            continue
        assert got == pytest.approx(_brute_auc(s, lab))
        keys = [f"r{i:03d}" for i in range(n)]
        for N in (1, 5, 10, 100):
            want = None
            if N <= n:
                ranked = sorted(range(n), key=lambda i: (-s[i], keys[i]))
                want = sum(lab[i] for i in ranked[:N]) / N
            assert R.precision_at(s, lab, N, keys) == want
        pts = R.roc_curve(s, lab)
        assert pts[0] == (0.0, 0.0) and pts[-1] == (1.0, 1.0)
        # trapezoid area under the curve equals the AUC (ties as diagonal segments)
        area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
        assert area == pytest.approx(got)


def test_evaluate_orients_each_ranking():
    # memorized rows have low perplexity: the perplexity ranking must put them first (AUC 1)
    cols = {"perplexity": [1.5, 30.0, 2.0, 50.0, float("nan")], "min_k": [-0.1, -4.0, -0.2, -5.0, -9.0]}
    lab = [True, False, True, False, False]
    ev = R.evaluate(cols, lab, ns=(2, 10))
    assert ev["perplexity"]["auc"] == 1.0 and ev["perplexity"]["precision_at"] == {2: 1.0, 10: None}
    assert ev["perplexity"]["scored"] == 4 and ev["min_k"]["auc"] == 1.0
    assert "zlib" not in ev
