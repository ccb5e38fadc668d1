"""How much more is there to extract? Estimators over the frequency counts of
unique memorized windows.

Sampling unit: a *generation*. A unique memorized window (the exact bytes of
50 consecutive generation tokens that occur verbatim in the reference corpus)
is counted at most once per generation, so ``f_k`` is the number of unique
windows that were seen in exactly ``k`` generations, ``n_obs = sum_k f_k`` the
number of unique windows and ``N = sum_k k * f_k`` the number of (window,
generation) incidences. Repeats *across* generations are what the estimators
feed on; a window repeated inside one generation (a model looping on a
memorized passage) is not evidence that the supply is running out.

* Good-Turing (Good 1953): the chance that the next memorized window observed
  is one not seen before is ``f1 / N``.
* Chao1 (Chao 1984), lower-bound estimate of the total number of extractable
  unique windows: ``n_obs + f1^2 / (2 f2)``; when ``f2 = 0`` the bias-corrected
  form ``n_obs + f1 (f1 - 1) / 2``.
* Its 95% confidence interval: log-normal (Chao 1987), see :func:`chao1_ci95`.
* Extrapolated accumulation curve (Chao et al. 2014, Ecological Monographs
  84:45-67, incidence-based form): after ``T + t`` generations,
  ``S(T + t) = n_obs + f0 * (1 - (1 - f1 / (T f0 + f1)) ** t)`` with
  ``f0 = chao1 - n_obs`` and ``T`` the number of generations made. It is
  reliable up to about two to three times the observed sample size, which is
  how far the report draws it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping


def frequency_counts(incidences_per_window) -> dict[int, int]:
    """``{k: f_k}`` from an iterable of per-window generation counts."""
    out: dict[int, int] = {}
    for k in incidences_per_window:
        k = int(k)
        if k > 0:
            out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def good_turing_new(freq: Mapping[int, int]) -> float | None:
    """``f1 / N``: probability that the next memorized window is new. None when N = 0."""
    n = sum(k * f for k, f in freq.items())
    if n == 0:
        return None
    return freq.get(1, 0) / n


def chao1(freq: Mapping[int, int]) -> float:
    """Chao1 estimate of the total number of unique windows (observed + unseen)."""
    n_obs = sum(freq.values())
    f1 = freq.get(1, 0)
    f2 = freq.get(2, 0)
    if f2 > 0:
        return n_obs + f1 * f1 / (2.0 * f2)
    return n_obs + f1 * (f1 - 1) / 2.0


def chao1_variance(freq: Mapping[int, int]) -> float:
    """Variance of :func:`chao1` (Chao 1987; EstimateS's forms):
    ``f2 > 0``: ``f2 (r^4/4 + r^3 + r^2/2)``, ``r = f1/f2``;
    ``f2 = 0``: ``f1(f1-1)/2 + f1(2 f1 - 1)^2/4 - f1^4 / (4 chao1)``."""
    f1 = freq.get(1, 0)
    f2 = freq.get(2, 0)
    if f1 == 0:
        return 0.0
    if f2 > 0:
        r = f1 / f2
        return f2 * (r ** 4 / 4 + r ** 3 + r ** 2 / 2)
    s = chao1(freq)
    return max(0.0, f1 * (f1 - 1) / 2 + f1 * (2 * f1 - 1) ** 2 / 4 - f1 ** 4 / (4 * s))


def chao1_ci95(freq: Mapping[int, int]) -> tuple[float, float]:
    """95% log-normal confidence interval of Chao1 (Chao 1987): with ``T = chao1 - n_obs``,
    ``K = exp(1.96 sqrt(ln(1 + var / T^2)))``, the interval is ``(n_obs + T/K, n_obs + T K)``."""
    n_obs = sum(freq.values())
    s = chao1(freq) if freq else 0.0
    t = s - n_obs
    var = chao1_variance(freq)
    if t <= 0 or var <= 0:
        return (float(n_obs), float(s))
    k = math.exp(1.96 * math.sqrt(math.log(1 + var / (t * t))))
    return (n_obs + t / k, n_obs + t * k)


def extrapolate(freq: Mapping[int, int], generations: int, extra_generations: int) -> float:
    """Expected unique windows after ``generations + extra_generations`` generations
    (Chao et al. 2014 incidence-based extrapolation, f0 from :func:`chao1`)."""
    n_obs = sum(freq.values())
    f1 = freq.get(1, 0)
    f0 = chao1(freq) - n_obs
    if extra_generations <= 0 or f0 <= 0 or f1 == 0 or generations <= 0:
        return float(n_obs)
    base = 1.0 - f1 / (generations * f0 + f1)
    return n_obs + f0 * (1.0 - base ** extra_generations)


def extrapolation_curve(freq: Mapping[int, int], generations: int, factor: float = 3.0,
                        points: int = 40) -> list[tuple[int, float]]:
    """Points ``(generations, expected unique windows)`` from ``generations`` to
    ``factor * generations``."""
    if generations <= 0:
        return []
    end = int(math.ceil(generations * factor))
    xs = sorted({generations + (end - generations) * i // points for i in range(points + 1)})
    return [(g, extrapolate(freq, generations, g - generations)) for g in xs]
