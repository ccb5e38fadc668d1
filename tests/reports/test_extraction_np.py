"""Exact (n,p)-extraction math (reports/extraction_np.py) against hand computation, an independent
re-implementation of vLLM's sampler, and Monte Carlo."""
from __future__ import annotations

import math

import numpy as np
import pytest

from reports.extraction_np import (PZ, Scheme, epsilon_for, extraction_probability, pz_full, pz_topk,
                                   queries_needed, summarize_pz, token_logprob_full, token_logprob_topk)

P3 = np.log(np.array([0.5, 0.3, 0.2]))
SQ = np.sqrt([0.5, 0.3, 0.2])          # temperature 2: p^(1/2), renormalised


def p(row, tok, **kw):
    return math.exp(token_logprob_full(row, tok, Scheme(**kw)))


def test_greedy_argmax_and_ties_go_to_the_lowest_id():
    assert p([0.0, 2.0, 1.0], 1, temperature=0) == 1.0
    assert p([0.0, 2.0, 1.0], 0, temperature=0) == 0.0
    assert p([2.0, 2.0, 1.0], 0, temperature=0) == 1.0
    assert p([2.0, 2.0, 1.0], 1, temperature=0) == 0.0
    # greedy ignores top-k / top-p, as the engines do at temperature 0
    assert p([0.0, 2.0, 1.0], 1, temperature=0, top_k=1, top_p=0.1) == 1.0


def test_temperature_by_hand():
    assert p(P3, 0, temperature=1) == pytest.approx(0.5)
    assert p(P3, 0, temperature=2) == pytest.approx(SQ[0] / SQ.sum())          # 0.41545
    assert p(P3, 0, temperature=2) == pytest.approx(0.4154, abs=1e-4)
    # logits with any additive constant give the same probabilities
    assert p(P3 + 7.0, 2, temperature=0.5) == pytest.approx(0.04 / (0.25 + 0.09 + 0.04))


def test_top_k_and_top_p_by_hand():
    assert p(P3, 0, temperature=1, top_k=2) == pytest.approx(0.625)
    assert p(P3, 2, temperature=1, top_k=2) == 0.0
    # top-p 0.6: 0.5 (mass before 0 < 0.6) and 0.3 (0.5 < 0.6) kept, 0.2 (0.8) cut
    assert p(P3, 0, temperature=1, top_p=0.6) == pytest.approx(0.625)
    assert p(P3, 1, temperature=1, top_p=0.6) == pytest.approx(0.375)
    assert p(P3, 2, temperature=1, top_p=0.6) == 0.0
    # top-p 0.4: only the first token (the nucleus closes at once)
    assert p(P3, 0, temperature=1, top_p=0.4) == 1.0
    # a tie at the top-k boundary keeps every tied token
    assert p([1.0, 1.0, 0.0, 0.0], 0, temperature=1, top_k=1) == pytest.approx(0.5)


def test_the_two_orders_differ_where_the_nucleus_depends_on_temperature():
    # vLLM: temperature 2 first: 0.4154, 0.3218, 0.2627; mass before the third 0.737 < 0.75: all kept
    assert p(P3, 0, temperature=2, top_p=0.75, order="vllm") == pytest.approx(SQ[0] / SQ.sum())
    # llama.cpp: nucleus at T = 1: mass before the third 0.8 >= 0.75: {0, 1}, then temperature 2
    assert p(P3, 0, temperature=2, top_p=0.75, order="llama.cpp") == pytest.approx(SQ[0] / SQ[:2].sum())
    assert p(P3, 2, temperature=2, top_p=0.75, order="llama.cpp") == 0.0
    # top-k alone: the orders agree (temperature is monotone)
    assert p(P3, 1, temperature=3, top_k=2, order="vllm") == pytest.approx(
        p(P3, 1, temperature=3, top_k=2, order="llama.cpp"))


def test_pz_is_the_product_over_positions():
    rows = np.stack([P3, P3[::-1]])
    got = pz_full(rows, [0, 0], Scheme(temperature=1))
    assert got.kind == "exact" and got.pz == pytest.approx(0.5 * 0.2)
    assert pz_full(rows, [0, 2], Scheme(temperature=0)).pz == 1.0
    assert pz_full(rows, [1, 2], Scheme(temperature=0)).pz == 0.0
    with pytest.raises(ValueError):
        pz_full(rows, [0], Scheme(temperature=1))


def test_np_formulas_by_hand():
    assert extraction_probability(0.1, 10) == pytest.approx(1 - 0.9 ** 10)
    assert extraction_probability(1e-12, 1_000_000) == pytest.approx(1e-6, rel=1e-5)   # no cancellation
    assert extraction_probability(0.0, 10 ** 6) == 0.0 and extraction_probability(1.0, 1) == 1.0
    assert queries_needed(0.5, 0.99) == 7                       # 1 - 0.5^7 = 0.992; 0.5^6 -> 0.984
    assert queries_needed(0.0, 0.5) == math.inf
    for n, pp in ((1, 0.5), (100, 0.9), (10 ** 6, 0.99)):
        e = epsilon_for(n, pp)
        assert extraction_probability(e, n) == pytest.approx(pp)
        assert queries_needed(e * 1.0001, pp) <= n


def test_summary_curves():
    vals = [PZ("exact", log_pz=math.log(0.5)), PZ("exact", log_pz=-math.inf), PZ("unavailable"),
            PZ("bounds", log_lower=math.log(0.1), log_upper=math.log(0.2))]
    s = summarize_pz(vals, Scheme(temperature=1), ns=[1, 10], ps=[0.5])
    assert (s.exact_documents, s.bound_documents, s.unavailable_documents) == (2, 1, 1)
    assert s.mean_curve[0] == (1, pytest.approx((0.5 + 0 + 0.1) / 3))
    assert s.mean_curve[1][1] == pytest.approx((1 - 0.5 ** 10 + 0 + 1 - 0.9 ** 10) / 3)
    # (n=1, p=0.5): only p_z >= 0.5; (n=10, p=0.5): eps = 0.067 -> 0.5 and 0.1
    assert s.extractable[0.5] == [(1, pytest.approx(1 / 3)), (10, pytest.approx(2 / 3))]
    assert s.queries_needed[0.5] == 7                           # median of 1, 7, inf
    d = s.to_dict()
    assert d["median_queries_needed"]["0.5"] == 7


# --- top-k logprobs only (HTTP) ---------------------------------------------------------------

def _random_rows(rng, n, v):
    return [np.log(rng.dirichlet(np.full(v, 0.3))) for _ in range(n)]


def test_topk_exact_cases_equal_the_full_computation():
    rng = np.random.default_rng(3)
    schemes = [Scheme(temperature=1), Scheme(temperature=0), Scheme(temperature=1, top_k=4),
               Scheme(temperature=0.7, top_k=5), Scheme(temperature=1.5, top_k=3, top_p=0.8),
               Scheme(temperature=1, top_p=0.7), Scheme(temperature=2, top_p=0.6, order="llama.cpp"),
               Scheme(temperature=0.5, top_k=6, top_p=0.9, order="vllm")]
    checked = 0
    for row in _random_rows(rng, 60, 12):
        alts = np.sort(row)[::-1][:8]
        for tok in range(12):
            for sc in schemes:
                kind, lo, hi = token_logprob_topk(float(row[tok]), list(alts), sc, vocab_size=12)
                want = token_logprob_full(row, tok, sc)
                if kind == "exact":
                    checked += 1
                    assert lo == hi
                    if want == -math.inf:
                        assert lo == -math.inf
                    else:
                        assert lo == pytest.approx(want, abs=1e-9)
                else:
                    assert kind == "unavailable" and sc.top_p < 1      # only an unclosed nucleus
    assert checked > 3000


def test_topk_bounds_contain_the_true_value():
    rng = np.random.default_rng(5)
    for v in (6, 40):
        for row in _random_rows(rng, 40, v):
            alts = np.sort(row)[::-1][:4]
            for T in (0.5, 0.8, 1.3, 3.0):
                sc = Scheme(temperature=T)
                for tok in rng.integers(0, v, 4):
                    want = token_logprob_full(row, int(tok), sc)
                    for vs in (v, None):
                        kind, lo, hi = token_logprob_topk(float(row[tok]), list(alts), sc, vocab_size=vs)
                        assert kind == "bounds"
                        assert lo - 1e-9 <= want <= hi + 1e-9


def test_topk_hand_cases_and_labels():
    own, alts = math.log(0.5), [math.log(0.5), math.log(0.3)]
    assert pz_topk([own], [{"a": alts[0], "b": alts[1]}], Scheme(temperature=1)).pz == pytest.approx(0.5)
    assert pz_topk([own], [{"a": alts[0], "b": alts[1]}], Scheme(temperature=1, top_k=2)).pz == pytest.approx(0.625)
    assert pz_topk([own], [{"a": alts[0], "b": alts[1]}], Scheme(temperature=1, top_k=3)).kind == "unavailable"
    # T = 2 with the vocabulary known (3 tokens): the one unseen token's mass is pinned: bounds meet
    b = pz_topk([own], [{"a": alts[0], "b": alts[1]}], Scheme(temperature=2), vocab_size=3)
    assert b.kind == "bounds"
    assert math.exp(b.log_lower) == pytest.approx(SQ[0] / SQ.sum())
    assert math.exp(b.log_upper) == pytest.approx(SQ[0] / SQ.sum())
    # nucleus 0.6 closes inside {0.5, 0.3} at T = 1 (llama.cpp order), then temperature 2
    t = pz_topk([own], [{"a": alts[0], "b": alts[1]}], Scheme(temperature=2, top_p=0.6, order="llama.cpp"))
    assert t.kind == "exact" and t.pz == pytest.approx(SQ[0] / SQ[:2].sum())
    # a server that appends the scored token to its top-1 (llama-cpp-python): only the top 1 is the top set
    low = math.log(0.05)
    two = {"a": alts[0], "own": low}
    assert pz_topk([low], [two], Scheme(temperature=1, top_k=2), asked=1).kind == "unavailable"
    assert pz_topk([low], [two], Scheme(temperature=1, top_k=1), asked=1).pz == 0.0
    # the same in vLLM order needs the tempered distribution over the whole vocabulary
    assert pz_topk([own], [{"a": alts[0], "b": alts[1]}], Scheme(temperature=2, top_p=0.6)).kind == "unavailable"


# --- Monte Carlo against an independent sampler -------------------------------------------------

def _vllm_style_sample(rng, logits, sc):
    """An independent sampler written from vLLM's description: temperature, then top-k (threshold at
    the k-th value), then top-p by an ascending cumulative sum masking mass <= 1 - p."""
    z = logits / sc.temperature
    if sc.top_k > 0:
        kth = np.sort(z)[::-1][sc.top_k - 1]
        z = np.where(z < kth, -np.inf, z)
    if sc.top_p < 1:
        pr = np.exp(z - z.max())
        pr /= pr.sum()
        asc = np.argsort(pr, kind="stable")
        cs = np.cumsum(pr[asc])
        cut = cs <= 1 - sc.top_p
        cut[-1] = False
        z = z.copy()
        z[asc[cut]] = -np.inf
    pr = np.exp(z - z.max())
    pr /= pr.sum()
    return rng.choice(len(pr), p=pr)


def test_exact_pz_agrees_with_monte_carlo_on_a_synthetic_model():
    """A synthetic 'model' whose next-token logits depend on the previous token: p_z of a 4-token
    target from teacher-forced rows equals the rate at which free sampling reproduces it."""
    rng = np.random.default_rng(11)
    v = 7
    table = rng.normal(0, 1.5, size=(v, v))          # logits of the next token given the previous one
    target = [int(np.argmax(table[0]))]
    for i in range(3):                               # argmax, then once the second most likely: 0 < p_z < 1
        target.append(int(np.argsort(table[target[-1]])[-1 if i else -2]))
    prev = [0] + target[:-1]
    sc = Scheme(temperature=1.3, top_k=5, top_p=0.95)
    exact = pz_full(table[prev], target, sc).pz
    n = 20000
    hits = 0
    for _ in range(n):
        t, ok = 0, True
        for want in target:
            t = _vllm_style_sample(rng, table[t], sc)
            if t != want:
                ok = False
                break
        hits += ok
    est = hits / n
    se = math.sqrt(exact * (1 - exact) / n)
    assert 0.01 < exact < 0.99
    assert abs(est - exact) < 4 * se
