"""Exact (n,p)-extraction (Hayes et al. 2024, "Measuring memorization in language models via
probabilistic extraction").

p_z is the probability that ONE sample, drawn with the attack's sampling scheme, reproduces the
target suffix z after the prefix: the product over the suffix's tokens of each token's
probability under the scheme, read from one scoring pass of prefix + suffix (teacher forcing: the
model sees the target's own earlier tokens, which is exactly the event "every earlier token was
reproduced"). The chance that at least one of n independent samples reproduces it is
p = 1 - (1 - p_z)^n.

**The sampling scheme** (:class:`Scheme`): temperature T (0 = greedy), top-k, top-p, composed in
one of the two orders the supported engines use:

* ``"vllm"`` (vLLM's sampler): logits / T, then top-k, then top-p on the tempered, top-k
  renormalised distribution, then sample;
* ``"llama.cpp"`` (llama.cpp's default sampler chain ``top_k;...;top_p;min_p;...;temperature``):
  top-k, then top-p on the untempered (T = 1) top-k renormalised distribution, then T on the
  survivors. trawl sends min_p = 0 and no penalties (``backends/probe.py``), so those stages are
  the identity.

Rules at the edges (stated because engines differ in them):

* greedy: a token's probability is 1 when it is the argmax of the row and 0 otherwise; a tie for
  the maximum goes to the lowest token id (``torch.argmax`` and llama.cpp's greedy sampler both
  return the first maximal index);
* top-k keeps every token whose value is >= the k-th largest (vLLM's threshold rule: a tie at the
  boundary keeps all tied tokens; llama.cpp keeps exactly k, an arbitrary member of the tie);
  k <= 0 or k >= vocabulary is off;
* top-p keeps, in descending probability (ties by lowest id), each token whose preceding
  cumulative mass is < p (the smallest prefix whose mass reaches p: the rule of both engines);
  p >= 1 is off. Values are computed in float64 from the scorer's rows; an engine that truncates
  in float32 can differ at a boundary that is within rounding of p.

**Which rows** (measured on the embedded Gemma-3-270m Q4_K_M with llama-cpp-python 0.3.36; the
README, "Exact (n,p)-extraction", has the figures): llama.cpp's sampler chain as llama-cpp-python
builds it (penalties, top-k, typical, top-p with min_keep 1, min-p, temperature, dist; trawl sends
typical_p 1, min_p 0 and no penalties) keeps exactly the tokens this module keeps, with the same
probabilities, on the same row. But llama.cpp's CPU logits for a position depend on how the tokens
were split into batches (P(" establish" | "...a more perfect Union,") from 0.48 to 0.80 across
splits), so p_z is exact only from rows evaluated the way the sampler evaluated them: the prompt
in one batch, then one token at a time (``LlamaScorer.score(..., as_generated=True)``, which
:mod:`extractor.attacks.discoverable_np` uses). A llama.cpp server reuses the previous request's
evaluated prefix, so its split is unknowable afterwards; its sampled schemes are labelled
unavailable there (the Monte Carlo rate stands). The same holds wherever the scorer's rows are not the
sampler's (vLLM in bfloat16: a lone request's decode step differs from prefill by up to 0.11 nats;
float32 agrees to 1.2e-5); :mod:`extractor.attacks.discoverable_np` checks it once per run and labels
greedy p_z by the run's observed greedy outcome there (batch splits flip argmaxes).

**Full distributions** (:func:`pz_full`): exact for every scheme. **Top-k logprobs only** (an
HTTP server returns the sampled token's own logprob and its K most likely alternatives,
:func:`pz_topk`): what is computable is labelled per document —

* ``exact``: T = 1 without truncation (the token's own logprob); greedy (the token is the argmax
  iff its logprob >= the best alternative's; a tie is ambiguous without token ids and counted as
  a win); top-k with k <= K at any T (the top-k set is known; temperature is monotone); top-p
  whose nucleus closes inside the K known tokens, when the nucleus is taken at T = 1 (llama.cpp
  order, or T = 1);
* ``bounds``: T != 1 without a closed truncation: the unseen tokens' tempered mass lies between
  its values for the unseen probability mass R concentrated in tokens no larger than the smallest
  known one and R spread evenly over the rest of the vocabulary (``vocab_size``; unknown: 0 or
  unbounded), giving [lower, upper] for p_z;
* ``unavailable``: the truncation set is not determined by the K tokens (k > K, or the nucleus
  does not close inside them, at T != 1 in vLLM order); the Monte Carlo estimate stays the figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# n from 1 to 10^6 on a log grid (1, 2, 5, 10, ...): the report's (n,p) curves.
N_GRID = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
          500_000, 1_000_000]
# the p of the (n,p) form reported: the smallest n with 1-(1-p_z)^n >= p
P_TARGETS = [0.1, 0.5, 0.9, 0.99]

ORDERS = ("vllm", "llama.cpp")


@dataclass(frozen=True)
class Scheme:
    temperature: float = 0.0        # <= 0: greedy
    top_k: int = 0                  # <= 0: off
    top_p: float = 1.0              # >= 1: off
    order: str = "vllm"             # see the module docstring

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"sampling order must be one of {ORDERS}, not {self.order!r}")
        if not self.top_p > 0:
            raise ValueError(f"top_p must be > 0, not {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"temperature {self.temperature:g}"]
        if self.top_k > 0:
            parts.append(f"top-k {self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p {self.top_p:g}")
        if len(parts) > 1:
            parts.append(f"{self.order} order")
        return ", ".join(parts)


@dataclass
class PZ:
    """p_z of one target: ``log_pz`` (natural log; -inf for 0) and, for bounds, ``log_lower`` /
    ``log_upper``; ``kind``: "exact", "bounds" or "unavailable"."""
    kind: str
    log_pz: float | None = None
    log_lower: float | None = None
    log_upper: float | None = None
    tokens: int = 0
    note: str = ""

    @property
    def pz(self) -> float | None:
        return None if self.log_pz is None else math.exp(self.log_pz)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "tokens": self.tokens}
        for k in ("log_pz", "log_lower", "log_upper"):
            v = getattr(self, k)
            d[k] = None if v is None else (v if math.isfinite(v) else None)
        d["p_z"] = None if self.log_pz is None else math.exp(self.log_pz)
        d["p_z_lower"] = None if self.log_lower is None else math.exp(self.log_lower)
        d["p_z_upper"] = None if self.log_upper is None else math.exp(self.log_upper)
        if self.note:
            d["note"] = self.note
        return d


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def _top_k_mask(vals: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    n = int(keep.sum())
    if k <= 0 or k >= n:
        return keep
    kept = vals[keep]
    thr = np.partition(kept, n - k)[n - k]           # the k-th largest
    return keep & (vals >= thr)


def _top_p_mask(vals: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return keep
    idx = np.nonzero(keep)[0]
    lp = _log_softmax(vals[idx])
    probs = np.exp(lp)
    order = np.lexsort((idx, -probs))                 # descending probability, ties by lowest id
    before = np.cumsum(probs[order]) - probs[order]
    out = np.zeros_like(keep)
    out[idx[order[before < p]]] = True
    return out


def token_logprob_full(row: np.ndarray, token: int, scheme: Scheme) -> float:
    """log of ``token``'s probability under ``scheme`` given one full row of logits or log-softmax
    values (any additive constant; float64 inside); -inf when the scheme cannot emit it."""
    v = np.asarray(row, dtype=np.float64)
    if not 0 <= token < v.shape[0]:
        raise ValueError(f"token id {token} outside the row of {v.shape[0]} values")
    if scheme.greedy:
        return 0.0 if int(np.argmax(v)) == token else -math.inf
    keep = np.isfinite(v)
    if scheme.order == "vllm":
        z = v / scheme.temperature
        keep = _top_k_mask(z, keep, scheme.top_k)
        keep = _top_p_mask(z, keep, scheme.top_p)
    else:
        keep = _top_k_mask(v, keep, scheme.top_k)
        keep = _top_p_mask(v, keep, scheme.top_p)
        z = v / scheme.temperature
    if not keep[token]:
        return -math.inf
    lp = _log_softmax(z[keep])
    return float(lp[int(np.count_nonzero(keep[:token]))])


def pz_full(rows, target_ids, scheme: Scheme) -> PZ:
    """Exact p_z from full rows (``rows[i]`` is the distribution that predicts ``target_ids[i]``)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] != len(target_ids):
        raise ValueError(f"need one row per target token: rows {rows.shape}, {len(target_ids)} tokens")
    total = 0.0
    for row, tok in zip(rows, target_ids):
        total += token_logprob_full(row, int(tok), scheme)
        if total == -math.inf:
            break
    return PZ("exact", log_pz=total, tokens=len(target_ids))


def _unseen_tempered_mass(rest: float, smallest: float, a: float, unseen: int | None) -> tuple[float, float]:
    """[min, max] of sum q_j^a over unseen tokens with sum q_j = ``rest``, each q_j <= ``smallest``,
    ``unseen`` of them (None: unknown, any number)."""
    if rest <= 0:
        return 0.0, 0.0
    smallest = max(smallest, 1e-300)
    full = math.floor(rest / smallest)
    conc = full * smallest ** a + (rest - full * smallest) ** a         # as concentrated as allowed
    if unseen is not None and unseen > 0:
        spread = unseen * (rest / unseen) ** a                           # as even as possible
    else:
        spread = 0.0 if a > 1 else math.inf
    return (min(conc, spread), max(conc, spread))


def token_logprob_topk(own: float, alternatives, scheme: Scheme, vocab_size: int | None = None,
                       asked: int | None = None) -> tuple[str, float, float]:
    """``(kind, log_lower, log_upper)`` of a token's probability under ``scheme`` from its own
    logprob (T = 1) and the logprobs of the server's top alternatives (``alternatives``: values;
    the token itself may be among them). ``asked``: the number of alternatives asked for — a
    server that appends the scored token to its top ``asked`` (llama-cpp-python) returns one more,
    which is not the next most likely token, so only the ``asked`` largest count as the top set.
    ``kind`` "exact" has lower == upper."""
    alts = sorted((float(x) for x in alternatives), reverse=True)
    if asked is not None:
        alts = alts[:max(int(asked), 0)]
    k_known = len(alts)
    # the known set: the alternatives, plus the token itself when it is not among them
    in_alts = any(abs(x - own) <= 1e-9 for x in alts)
    known = alts if in_alts else sorted(alts + [own], reverse=True)
    if scheme.greedy:
        if not alts:
            return "unavailable", -math.inf, 0.0
        return ("exact", 0.0, 0.0) if own >= alts[0] - 1e-9 else ("exact", -math.inf, -math.inf)
    T = scheme.temperature
    probs = [math.exp(x) for x in known]
    rest = max(0.0, 1.0 - sum(probs))
    smallest = math.exp(alts[-1]) if alts else 1.0
    unseen = None if vocab_size is None else max(0, vocab_size - len(known))
    rank = sum(1 for x in known if x > own + 1e-9)       # tokens strictly more likely than this one
    trunc_k = 0 < scheme.top_k and (vocab_size is None or scheme.top_k < vocab_size)
    trunc_p = scheme.top_p < 1.0
    if not trunc_k and not trunc_p:
        if T == 1.0:
            return "exact", own, own
        a = 1.0 / T
        lo_rest, hi_rest = _unseen_tempered_mass(rest, smallest, a, unseen)
        known_mass = sum(p ** a for p in probs)
        num = math.exp(own) ** a
        upper = math.log(num / (known_mass + lo_rest)) if num > 0 else -math.inf
        lower = math.log(num / (known_mass + hi_rest)) if num > 0 and math.isfinite(hi_rest) else -math.inf
        return "bounds", lower, upper
    # truncation: the surviving set must be fully known
    cand = np.array(alts)                              # T = 1 logprobs, descending
    if trunc_k:
        if scheme.top_k > k_known:
            return "unavailable", -math.inf, 0.0
        if rank >= scheme.top_k:
            return "exact", -math.inf, -math.inf
        cand = cand[:scheme.top_k]
    if trunc_p:
        if trunc_k:                                    # the candidates are all known: renormalise them
            z = cand / T if scheme.order == "vllm" else cand
            w = np.exp(z - z.max())
            w /= w.sum()
        elif scheme.order == "vllm" and T != 1.0:
            return "unavailable", -math.inf, 0.0      # the tempered nucleus needs the whole vocabulary
        else:
            w = np.exp(cand)                           # true probabilities; the unseen rest is smaller
        before = np.cumsum(w) - w
        inside = before < scheme.top_p
        if not trunc_k and float(np.sum(w[inside])) < scheme.top_p:
            return "unavailable", -math.inf, 0.0      # the nucleus does not close inside the known tokens
        if rank >= int(inside.sum()):
            return "exact", -math.inf, -math.inf
        cand = cand[inside]
    zz = cand / T
    m = float(zz.max())
    lp = own / T - (m + math.log(float(np.sum(np.exp(zz - m)))))
    return "exact", lp, lp


def pz_topk(own_logprobs, top_logprobs, scheme: Scheme, vocab_size: int | None = None,
            asked: int | None = None) -> PZ:
    """p_z from per-token own logprobs and top-alternative dicts (``{token: logprob}`` per position);
    ``asked``: see :func:`token_logprob_topk`."""
    lo = hi = 0.0
    kinds = set()
    for own, top in zip(own_logprobs, top_logprobs):
        kind, a, b = token_logprob_topk(float(own), list((top or {}).values()), scheme, vocab_size, asked)
        kinds.add(kind)
        if kind == "unavailable":
            return PZ("unavailable", tokens=len(own_logprobs),
                      note="the truncation set is not determined by the server's top logprobs")
        lo += a
        hi += b
    if kinds <= {"exact"}:
        return PZ("exact", log_pz=lo, tokens=len(own_logprobs))
    return PZ("bounds", log_lower=lo, log_upper=hi, tokens=len(own_logprobs))


def extraction_probability(pz: float, n: int) -> float:
    """p = 1 - (1 - p_z)^n, accurate for tiny p_z (log1p/expm1)."""
    if pz <= 0:
        return 0.0
    if pz >= 1:
        return 1.0
    return -math.expm1(n * math.log1p(-pz))


def queries_needed(pz: float, p: float) -> float:
    """The smallest n with 1 - (1 - p_z)^n >= p (inf when p_z = 0)."""
    if pz <= 0:
        return math.inf
    if pz >= 1:
        return 1
    return max(1, math.ceil(math.log1p(-p) / math.log1p(-pz) - 1e-12))


def epsilon_for(n: int, p: float) -> float:
    """The smallest p_z for which a target is (n,p)-extractable: 1 - (1 - p)^(1/n)."""
    return -math.expm1(math.log1p(-p) / n)


@dataclass
class NPSummary:
    """Per-run (n,p) figures over the documents' p_z (exact values, or bounds' lower ends as a floor)."""
    documents: int
    exact_documents: int
    bound_documents: int
    unavailable_documents: int
    scheme: str
    mean_curve: list = field(default_factory=list)          # [(n, mean p over documents)]
    extractable: dict = field(default_factory=dict)         # {p: [(n, share of documents (n,p)-extractable)]}
    queries_needed: dict = field(default_factory=dict)      # {p: median n over documents, inf when never}

    def to_dict(self) -> dict:
        return {"documents": self.documents, "exact_documents": self.exact_documents,
                "bound_documents": self.bound_documents, "unavailable_documents": self.unavailable_documents,
                "scheme": self.scheme,
                "mean_curve": [[n, p] for n, p in self.mean_curve],
                "extractable": {str(p): [[n, s] for n, s in v] for p, v in self.extractable.items()},
                "median_queries_needed": {str(p): (None if not math.isfinite(v) else v)
                                          for p, v in self.queries_needed.items()}}


def summarize_pz(values: list[PZ], scheme: Scheme, ns=N_GRID, ps=P_TARGETS) -> NPSummary:
    """Curves over documents: exact p_z where known, the lower bound for "bounds" documents (so the
    figures are floors), unavailable documents left out (counted)."""
    pzs = []
    for v in values:
        if v.kind == "exact":
            pzs.append(math.exp(v.log_pz))
        elif v.kind == "bounds":
            pzs.append(math.exp(v.log_lower))
    s = NPSummary(documents=len(values), exact_documents=sum(v.kind == "exact" for v in values),
                  bound_documents=sum(v.kind == "bounds" for v in values),
                  unavailable_documents=sum(v.kind == "unavailable" for v in values), scheme=scheme.describe())
    if not pzs:
        return s
    s.mean_curve = [(n, sum(extraction_probability(pz, n) for pz in pzs) / len(pzs)) for n in ns]
    for p in ps:
        eps = [epsilon_for(n, p) for n in ns]
        s.extractable[p] = [(n, sum(pz >= e for pz in pzs) / len(pzs)) for n, e in zip(ns, eps)]
        need = sorted(queries_needed(pz, p) for pz in pzs)
        s.queries_needed[p] = need[(len(need) - 1) // 2]
    return s
