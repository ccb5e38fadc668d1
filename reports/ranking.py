"""Membership signals of one generation, and how well each ranks memorized generations.

Pure functions over per-token log-probabilities (natural logs, temperature 1, as
``Backend.score`` returns them; NaN = a position the backend did not score, left out). The
model-facing driver that obtains them is :mod:`extractor.scoring`; ``trawl rank`` writes the
figures to ``RUN/scores.parquet`` (docs/CONTRACTS.md §7) and the report reads them.

Signals (each column of ``scores.parquet``; :data:`RANKINGS` says how each ranks, higher =
ranked first = more likely memorized):

Carlini et al. 2021, "Extracting Training Data from Large Language Models" (USENIX Security),
§5.1-5.2, with the orientations of their code (github.com/ftramer/LM_Memorization,
``extraction.py``: each metric's largest values are inspected first):

* ``perplexity`` P = exp(-1/n sum_i log p(x_i | x_<i)); ranked by -log P (low perplexity first).
* ``ref_ratio`` ("Small"/"zlib"-style comparison with a reference model): log P_ref / log P
  (the reference model's log-perplexity over the target's; large when the target is far more
  confident than a model that did not see the text).
* ``zlib_ratio``: zlib entropy over log-perplexity, ``len(zlib.compress(text_utf8)) / log P``
  (zlib entropy in bytes, default compression level as their code).
* ``lower_ratio``: log P_lower / log P, P_lower the target's perplexity of the lowercased text.
* ``window_ppl``: the minimum perplexity over every window of ``window`` (50) consecutive scored
  tokens (the whole text when shorter); ranked by -log (lowest first).

Shi et al. 2024, "Detecting Pretraining Data from Large Language Models" (ICLR): ``min_k``, the
mean of the k% lowest token log-probabilities (``int(k * n)`` of them, at least 1, as their code
``int(len(all_prob) * ratio)`` but never none); ranked by it (higher first).

Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data from Large
Language Models": per position s_t = (log p(x_t) - mu_t) / sigma_t with mu_t = E_{z~p}[log p(z)]
and sigma_t^2 = E_{z~p}[(log p(z) - mu_t)^2] over the next-token distribution; ``min_k_pp`` is
the mean of the k% lowest s_t, ranked by it. Exact only from the full distribution
(``min_k_pp_exact``); over HTTP mu and sigma come from the top-k renormalised, an approximation
the report says.

Evaluation against the suffix array's ground truth (a generation "holds a memorized window": a
verbatim span of >= W = 50 generation tokens, as ``reports/metrics.py`` defines a memorized
generation): :func:`precision_at` (of the N generations ranked first, the fraction memorized)
and :func:`roc_auc` (the probability that a memorized generation ranks above a non-memorized one,
ties counted half: the Mann-Whitney statistic). Generations without a value for a signal are
ranked last for it (they are counted, not dropped: N is of all generations).
"""
from __future__ import annotations

import math
import zlib

import numpy as np

DEFAULT_K = 0.2          # min-k%: the 20% lowest (Shi et al.'s best setting; Zhang et al. use it too)
DEFAULT_WINDOW = 50      # Carlini et al.'s sliding window, in tokens
PRECISION_NS = (10, 100, 1000)

# ranking name -> (scores.parquet column, transform to "higher = more likely memorized", description)
RANKINGS = {
    "perplexity": ("perplexity", lambda v: -np.log(v), "low perplexity (Carlini et al. 2021)"),
    "reference_ratio": ("ref_ratio", lambda v: v, "log-perplexity ratio, reference model / target (Carlini et al. 2021)"),
    "zlib": ("zlib_ratio", lambda v: v, "zlib entropy / target log-perplexity (Carlini et al. 2021)"),
    "lowercase": ("lower_ratio", lambda v: v, "lowercased / original log-perplexity (Carlini et al. 2021)"),
    "window": ("window_ppl", lambda v: -np.log(v), "lowest perplexity over a sliding window (Carlini et al. 2021)"),
    "min_k": ("min_k", lambda v: v, "min-k% prob (Shi et al. 2024)"),
    "min_k_pp": ("min_k_pp", lambda v: v, "min-k%++ (Zhang et al. 2024)"),
}


def _finite(lps) -> np.ndarray:
    a = np.asarray(lps, dtype=np.float64)
    return a[np.isfinite(a)]


def log_perplexity(lps) -> float:
    """-mean log p over the scored positions (NaN when none): log P."""
    a = _finite(lps)
    return float(-a.mean()) if a.size else float("nan")


def perplexity(lps) -> float:
    lp = log_perplexity(lps)
    return math.exp(lp) if lp == lp else float("nan")


def zlib_entropy(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (Carlini et al.: ``len(zlib.compress(bytes(s, 'utf-8')))``)."""
    return len(zlib.compress(text.encode("utf-8", "replace")))


def ratio(num: float, den: float) -> float:
    """num / den, NaN when either is NaN or den is 0."""
    if num != num or den != den or den == 0:
        return float("nan")
    return num / den


def window_perplexity(lps, window: int = DEFAULT_WINDOW) -> float:
    """Minimum perplexity over windows of ``window`` consecutive scored tokens (the whole text when shorter)."""
    a = _finite(lps)
    if not a.size:
        return float("nan")
    w = min(int(window), a.size)
    c = np.concatenate([[0.0], np.cumsum(a)])
    means = (c[w:] - c[:-w]) / w
    return math.exp(float(-means.max()))


def _lowest_mean(a: np.ndarray, k: float) -> float:
    if not a.size:
        return float("nan")
    m = max(1, int(a.size * k))
    return float(np.sort(a)[:m].mean())


def min_k(lps, k: float = DEFAULT_K) -> float:
    """Mean of the ``k`` fraction lowest token log-probabilities (Shi et al. 2024)."""
    return _lowest_mean(_finite(lps), k)


def min_k_pp(lps, mean, var, k: float = DEFAULT_K) -> float:
    """Mean of the ``k`` fraction lowest (log p - mu) / sigma (Zhang et al. 2024); positions with
    no value or sigma = 0 are left out."""
    a = np.asarray(lps, dtype=np.float64)
    mu = np.asarray(mean, dtype=np.float64)
    sd = np.sqrt(np.asarray(var, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (a - mu) / sd
    return _lowest_mean(s[np.isfinite(s)], k)


def signals(text: str, lps, *, mean=None, var=None, lower_lps=None, ref_lps=None, k: float = DEFAULT_K,
            window: int = DEFAULT_WINDOW) -> dict:
    """Every signal of one text (NaN where an input is missing), as ``scores.parquet`` columns."""
    logp = log_perplexity(lps)
    out = {
        "scored_tokens": int(_finite(lps).size),
        "perplexity": math.exp(logp) if logp == logp else float("nan"),
        "zlib_entropy": zlib_entropy(text),
        "window_ppl": window_perplexity(lps, window),
        "min_k": min_k(lps, k),
        "min_k_pp": min_k_pp(lps, mean, var, k) if mean is not None and var is not None else float("nan"),
    }
    out["zlib_ratio"] = ratio(out["zlib_entropy"], logp)
    out["lower_ratio"] = ratio(log_perplexity(lower_lps), logp) if lower_lps is not None else float("nan")
    out["ref_ratio"] = ratio(log_perplexity(ref_lps), logp) if ref_lps is not None else float("nan")
    return out


def ranking_scores(values) -> np.ndarray:
    """Values of a column -> ranking scores (higher first); NaN -> -inf (ranked last)."""
    a = np.asarray(values, dtype=np.float64)
    a = np.where(np.isfinite(a), a, -np.inf)
    return a


def order(scores, keys=None) -> np.ndarray:
    """Indexes ranked first to last: by score descending, ties by ``keys`` (e.g. request ids) ascending."""
    s = np.asarray(scores, dtype=np.float64)
    if keys is None:
        keys = np.arange(s.size)
    return np.lexsort((np.asarray(keys), -s))


def precision_at(scores, labels, n: int, keys=None) -> float | None:
    """Fraction of memorized generations among the ``n`` ranked first (None when fewer than ``n``)."""
    lab = np.asarray(labels, dtype=bool)
    if lab.size < n or n <= 0:
        return None
    top = order(scores, keys)[:n]
    return float(lab[top].mean())


def roc_auc(scores, labels) -> float | None:
    """P(score of a memorized > score of a non-memorized), ties 1/2 (None without both classes)."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    npos, nneg = int(lab.sum()), int((~lab).sum())
    if not npos or not nneg:
        return None
    ranks = _midranks(s)
    return float((ranks[lab].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _midranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks, ascending, ties given their mean rank (-inf ties together)."""
    idx = np.argsort(s, kind="mergesort")
    sorted_s = s[idx]
    ranks = np.empty(s.size, dtype=np.float64)
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[idx[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_curve(scores, labels) -> list[tuple[float, float]]:
    """(FPR, TPR) points from (0, 0) to (1, 1), one per distinct score threshold (ties together)."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    npos, nneg = int(lab.sum()), int((~lab).sum())
    if not npos or not nneg:
        return []
    idx = np.argsort(-s, kind="mergesort")
    pts = [(0.0, 0.0)]
    tp = fp = 0
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and s[idx[j + 1]] == s[idx[i]]:
            j += 1
        block = lab[idx[i:j + 1]]
        tp += int(block.sum())
        fp += int(block.size - block.sum())
        pts.append((fp / nneg, tp / npos))
        i = j + 1
    return pts


def evaluate(columns: dict, labels, keys=None, ns=PRECISION_NS) -> dict:
    """Per ranking: ``precision_at`` {N: value}, ``auc``, ``roc`` points, ``scored`` (rows with a value),
    for every ranking whose column is present with at least one value."""
    out = {}
    lab = np.asarray(labels, dtype=bool)
    for name, (col, tf, _desc) in RANKINGS.items():
        vals = columns.get(col)
        if vals is None:
            continue
        v = np.asarray(vals, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            sc = ranking_scores(tf(v))
        scored = int(np.isfinite(sc).sum())
        if not scored:
            continue
        out[name] = {"precision_at": {int(n): precision_at(sc, lab, int(n), keys) for n in ns},
                     "auc": roc_auc(sc, lab), "roc": roc_curve(sc, lab), "scored": scored}
    return out


def best_figures(section: dict | None) -> dict:
    """The ledger's ranking figures from metrics.json's ``ranking`` section: the highest ROC AUC and the
    highest precision@N (N in :data:`PRECISION_NS`) over the rankings, each None when no ranking has it
    (no scores, nothing memorized, fewer than N generations)."""
    rankings = (section or {}).get("rankings") or {}
    aucs = [r.get("auc") for r in rankings.values()]
    out = {"ranking_best_auc": max((a for a in aucs if a is not None), default=None)}
    for n in PRECISION_NS:
        vals = [(r.get("precision_at") or {}).get(str(n)) for r in rankings.values()]
        out[f"ranking_best_precision_at_{n}"] = max((v for v in vals if v is not None), default=None)
    return out


# -- RUN/scores.parquet (docs/CONTRACTS.md §7): written by extractor/scoring, read here -------------
SCORES_NAME = "scores.parquet"
SCORES_FORMAT = "1"
SIGNAL_COLUMNS = ("perplexity", "zlib_ratio", "lower_ratio", "ref_ratio", "window_ppl", "min_k", "min_k_pp")


def scores_schema():
    import pyarrow as pa
    return pa.schema([
        ("run_id", pa.string()), ("request_id", pa.string()), ("attack", pa.string()), ("variant", pa.string()),
        ("scored_tokens", pa.int32()), ("perplexity", pa.float64()), ("zlib_entropy", pa.int32()),
        ("zlib_ratio", pa.float64()), ("lower_ratio", pa.float64()), ("ref_ratio", pa.float64()),
        ("window_ppl", pa.float64()), ("min_k", pa.float64()), ("min_k_pp", pa.float64()),
        ("min_k_pp_exact", pa.bool_()), ("token_logprobs", pa.list_(pa.float32())), ("error", pa.string()),
    ])


def memorized_ids(matches_path: str, window_tokens: int = 50) -> set[str]:
    """Request ids of generations holding a memorized window: a verbatim span of at least
    ``window_tokens`` covered tokens (the matches' ``tokens`` column, as reports/metrics.py counts)."""
    import pyarrow.compute as pc

    from reports.inputs import iter_batches, open_parquet
    pf = open_parquet(matches_path, ("request_id", "tokens"))
    out: set[str] = set()
    for b in iter_batches(pf, matches_path, ["request_id", "tokens"], 65536):
        tok = b.column(1)
        keep = pc.fill_null(pc.greater_equal(tok, int(window_tokens)), False)
        out.update(x for x in b.column(0).filter(keep).to_pylist() if isinstance(x, str))
    return out


def read_scores(path: str) -> tuple[dict, dict]:
    """``scores.parquet`` as columns (lists) and its key-value metadata (strings); a damaged file or a
    missing column is a ReportError naming the file."""
    from reports.errors import ReportError
    from reports.inputs import open_parquet
    need = ("request_id", "attack", "variant") + SIGNAL_COLUMNS
    pf = open_parquet(path, need)
    try:
        t = pf.read(columns=list(need) + [c for c in ("min_k_pp_exact", "scored_tokens", "error")
                                          if c in pf.schema_arrow.names])
    except Exception as exc:
        from corpora.storage import first_line
        raise ReportError(f"{path}: damaged data ({type(exc).__name__}: {first_line(exc)})") from None
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in (pf.schema_arrow.metadata or {}).items() if not k.startswith(b"ARROW:")}
    cols = {name: t.column(name).to_pylist() for name in t.column_names}
    for c in SIGNAL_COLUMNS:
        cols[c] = [float("nan") if not isinstance(v, (int, float)) else float(v) for v in cols[c]]
    return cols, meta
