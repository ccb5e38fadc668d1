"""Repeated draws: stored completions that repeat more often than independent sampling explains.

A report counts what was stored; if the sampler stored one draw twice (a seed reused across
requests, a retry stored as a new sample), every figure built on "generations" and the
Good-Turing / Chao1 extrapolation (which feed on repeats) is wrong. Two checks, over the
*sampled* rows only (a row is greedy, and exempt, when its ``params`` JSON has
``"temperature": 0`` or ``"top_k": 1``):

* **same draw** (exact): rows of one group - same ``attack``, ``variant``, ``prompt`` and
  ``params`` - with the same *effective seed* ``seed + n_choice`` (``n_choice`` from ``extra``,
  0 when absent; rows with a null ``seed`` are not checked). Under vLLM's semantics choice k of a
  request with ``n`` samples uses ``seed + k``, so such rows are one draw by construction.
* **implausible duplicates**: ``k`` rows of one group with byte-identical completions, the group
  holding ``m`` sampled rows. When the rows carry ``token_logprobs``, with ``p = exp(sum of the
  completion's token logprobs)`` (the probability the server reported; exact at temperature 1
  without top-k/top-p truncation), the copies are flagged when the binomial upper tail
  ``P(X >= k | m, p) < 1e-6``. Without logprobs, a duplicate is flagged only when it is long and
  high-entropy: at least 64 completion tokens and ``len(zlib.compress(text)) / len(text) >= 0.5``
  (a repetitive completion such as ``poem poem poem ...`` compresses far below that, so the
  model may well draw it twice; a memorized passage drawn twice is not told apart from a stored
  duplicate without logprobs, and is flagged).

Counts are of *repeat rows*: the rows of a class (same draw, or same completion) beyond its
first, in the order the files hold them. Memory: 32 bytes per sampled row plus its request id
(Arrow); completions are hashed as they stream past (a group: 64-bit BLAKE2b of attack, variant,
prompt and params; a completion: Python's 64-bit SipHash, about 3e-8 chance of one false pair in
a million rows) and only one representative row per duplicated class is read again at the end.
"""
from __future__ import annotations

import hashlib
import math
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports.errors import ReportError
from reports.inputs import eight_bytes as _eight_bytes, encoded, low_bytes_mask, open_parquet

TAIL_THRESHOLD = 1e-6
MIN_TOKENS_NO_LOGPROBS = 64
MIN_ZLIB_RATIO = 0.5
EXAMPLES = 5
COLUMNS = ("request_id", "attack", "variant", "prompt", "params", "seed", "extra", "completion",
           "completion_tokens")

# kept until the end of the pass: allocated apart from the record batches' buffers (the default
# pool), so that freeing a batch returns its memory instead of leaving it pinned by small survivors
_LONG_LIVED = pa.system_memory_pool()
_PACKED_LIMIT = 2.0 ** 62      # dictionary codes of a row packed into one int64 below this many combinations

RULE = (f"sampled rows (temperature > 0 and top_k != 1 in params) grouped by attack, variant, prompt and params; "
        f"same draw: same seed + extra.n_choice (vLLM: choice k of a request uses seed + k); implausible: k "
        f"identical completions among the group's m rows with binomial P(X >= k | m, p) < {TAIL_THRESHOLD:g}, "
        f"p = exp(sum of token_logprobs); without logprobs only completions of >= {MIN_TOKENS_NO_LOGPROBS} tokens "
        f"whose zlib-compressed size is >= {MIN_ZLIB_RATIO} of their size; counts are rows beyond the first copy")


def binomial_upper_tail(k: int, m: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(m, p)``, summed in log space (exact for tiny ``p``)."""
    if k <= 0:
        return 1.0
    if k > m or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    lg = math.lgamma(m + 1)
    terms = []
    for j in range(k, m + 1):
        t = lg - math.lgamma(j + 1) - math.lgamma(m - j + 1) + j * lp + (m - j) * lq
        terms.append(t)
        if j > m * p and t < terms[0] - 50:      # past the mode the terms only shrink
            break
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def per_distinct(arr: pa.Array, fn):
    """``fn`` (Arrow array -> NumPy array, one value per element) of ``arr`` computed once per
    distinct value (rows of a run share a few params and extra strings) and spread back to the rows;
    a dictionary array (:func:`reports.inputs.encoded`): once per entry of its dictionary."""
    if pa.types.is_dictionary(arr.type):
        if arr.indices.null_count or arr.dictionary.null_count:
            return fn(arr.dictionary_decode())
        return fn(arr.dictionary)[arr.indices.to_numpy(zero_copy_only=False)]
    if arr.null_count:              # (callers fill nulls first; with nulls: on every row)
        return fn(arr)
    enc = pc.dictionary_encode(arr)
    return fn(enc.dictionary)[enc.indices.to_numpy(zero_copy_only=False)]


_JSON_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"


def _sampled_mask(params: pa.Array) -> np.ndarray:
    """True where the row is sampled (not greedy): params' temperature is not 0 and top_k is not 1."""
    def number(values, key):
        # a JSON number (a negative exponent included: temperature 1e-3), so that the cast reads every match
        got = pc.extract_regex(values, rf'"{key}"\s*:\s*(?P<v>{_JSON_NUMBER})')
        v = pc.struct_field(got, "v") if got.type.num_fields else pa.nulls(len(values), pa.string())
        try:
            return pc.cast(v, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):    # e.g. out of float64's range: Python's float
            return np.array([math.nan if x is None else float(x) for x in v.to_pylist()], dtype=np.float64)

    def sampled(values):
        t, k = number(values, "temperature"), number(values, "top_k")
        return ~((t == 0) | (k == 1))          # NaN (absent) compares False: sampled
    return per_distinct(params, sampled)


def _n_choice(extra: pa.Array) -> np.ndarray:
    """extra's ``n_choice`` per row (int64; -1 where absent)."""
    def parse(values):
        got = pc.extract_regex(values, r'"n_choice"\s*:\s*(?P<k>[0-9]+)')
        k = pc.struct_field(got, "k") if got.type.num_fields else pa.nulls(len(values), pa.string())
        return pc.fill_null(pc.cast(k, pa.int64()), -1).to_numpy(zero_copy_only=False)
    return per_distinct(extra, parse)


class RepeatedDraws:
    """Streams generation batches (:meth:`add`), then :meth:`result` gives metrics.json's
    ``repeated_draws`` section."""

    def __init__(self):
        self.g64, self.fp, self.eff, self.ctoks, self.ordinal = [], [], [], [], []
        self.rids: list[pa.Array] = []
        self.group_rows: dict[int, int] = {}       # group digest -> sampled rows (np.unique of g64, counted as added)
        self.greedy = 0
        self.rows_added = 0

    def add(self, batch: pa.RecordBatch, codes: dict | None = None) -> None:
        """Add a batch of generations; ``codes``: some of its columns dictionary-encoded already
        (``pc.dictionary_encode`` of the column as read, nulls as null codes), used instead of
        encoding them again."""
        names = batch.schema.names
        n = batch.num_rows
        codes = codes or {}

        def col(name, default=b""):     # as bytes: invalid UTF-8 must not fail the report (a dictionary array)
            if name not in names:
                return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([default], pa.binary()))
            return encoded(codes[name] if name in codes else batch.column(name), default)

        params = col("params", b"{}")
        keep = np.nonzero(_sampled_mask(params))[0]
        self.greedy += n - len(keep)
        self.rows_added += n
        if not len(keep):
            return
        take = pa.array(keep)
        every = len(keep) == n      # no greedy row: the columns as they are, no copies

        def rows(c):
            return c if every else c.take(take)
        self.g64.append(group_digests([col(c) for c in ("attack", "variant", "prompt", "params")], keep,
                                      self.group_rows))
        self.fp.append(fingerprints(batch.column("completion"), keep))
        self.ordinal.append(self.rows_added - n + keep)
        seed = rows(batch.column("seed")) if "seed" in names else pa.nulls(len(keep), pa.int64())
        nch = _n_choice(rows(col("extra", b"{}")))
        eff = pc.add(pc.cast(seed, pa.int64()), pa.array(np.maximum(nch, 0)))
        self.eff.append(np.where(pc.is_valid(eff).to_numpy(zero_copy_only=False),
                                 pc.fill_null(eff, 0).to_numpy(zero_copy_only=False), np.iinfo(np.int64).min))
        self.ctoks.append(pc.fill_null(rows(batch.column("completion_tokens")), 0)
                          .to_numpy(zero_copy_only=False).astype(np.int64))
        self.rids.append(pc.cast(pc.take(batch.column("request_id"), take, memory_pool=_LONG_LIVED), pa.string(),
                                 memory_pool=_LONG_LIVED))

    def result(self, parts: list[str]) -> dict:
        """The ``repeated_draws`` section; ``parts`` (the generation files, in the order they were
        added) are read again for one representative row of each duplicated completion."""
        cat = lambda xs, t: np.concatenate(xs) if xs else np.zeros(0, t)  # noqa: E731
        g64, fp, eff, ctoks = cat(self.g64, np.uint64), cat(self.fp, np.uint64), cat(self.eff, np.int64), \
            cat(self.ctoks, np.int64)
        ordinal = cat(self.ordinal, np.int64)
        rids = pa.chunked_array(self.rids, pa.string()) if self.rids else pa.chunked_array([], pa.string())
        has_seed = eff != np.iinfo(np.int64).min
        # a class of equal keys holds equal second keys: only rows whose seed (fingerprint) occurs twice
        # can be in one, so the two-key sorts run on those alone
        seeded = np.nonzero(has_seed)[0]
        seeded = seeded[occurs_twice(eff[seeded])]
        same_rows, same_classes = _repeat_rows((g64[seeded], eff[seeded]), seeded)
        # identical completions have identical fingerprints: only rows sharing (group, fingerprint) with
        # another can repeat one; their completions are read again and compared by their full hash
        cand = np.zeros(len(fp), dtype=bool)
        twice = np.nonzero(occurs_twice(fp))[0]
        cand[np.concatenate([c[0] for c in _repeat_rows((g64[twice], fp[twice]), twice)[1]] or
                            [np.zeros(0, np.int64)])] = True
        cand = np.nonzero(cand)[0]
        d64 = _completion_hashes(parts, ordinal[cand])
        dup_rows, dup_classes = _repeat_rows((g64[cand], d64), cand)
        reps = [int(c[1]) for c in dup_classes]            # a second copy of each duplicated completion
        try:
            info = _fetch(parts, rids.take(pa.array(reps, pa.int64())).to_pylist() if reps else [])
        except (OSError, pa.ArrowException):   # judged without logprobs rather than failing the report
            info = {}
        flagged_rows, examples = [], []
        for (rows, _), rep in zip(dup_classes, reps):
            k, m = len(rows), self.group_rows[int(g64[rep])]
            ex = _judge(info.get(rids[rep].as_py(), {}), k, m, int(ctoks[rep]))
            if ex["flagged"]:
                flagged_rows.extend(rows[1:].tolist())
                if len(examples) < EXAMPLES:
                    examples.append(dict(ex, kind="implausible duplicate",
                                         request_ids=rids.take(pa.array(rows[:5])).to_pylist()))
        same_examples = [{"kind": "same draw", "copies": len(rows), "effective_seed": int(eff[rows[0]]),
                          "request_ids": rids.take(pa.array(rows[:5])).to_pylist()}
                         for rows, _ in same_classes[:EXAMPLES]]
        same_set, flag_set = set(same_rows.tolist()), set(flagged_rows)
        return {"rows_checked": int(len(g64)), "greedy_rows_exempt": int(self.greedy),
                "groups_checked": len(self.group_rows),
                "duplicate_rows": int(len(dup_rows)), "duplicate_completions": len(dup_classes),
                "same_draw_rows": len(same_set), "flagged_rows": len(flag_set),
                "repeated_rows": len(same_set | flag_set), "examples": same_examples + examples, "rule": RULE}


def group_digests(columns: list[pa.Array], rows: np.ndarray, counts: dict | None = None) -> np.ndarray:
    """The group digest of each of ``rows``: the 64-bit BLAKE2b of its values of ``columns`` (binary,
    no nulls; or dictionary arrays of such values, a value perhaps twice in a dictionary) joined by NUL
    bytes. Rows of a run share a few values per column, so each column is dictionary-encoded (unless
    it is a dictionary array) and each distinct combination of codes joined and hashed once; equal to
    hashing every row's joined values (tests/reports). ``counts`` (digest -> rows), when given, has
    the rows of each digest added (combinations hashing alike added together): summed over the
    batches, the ``np.unique(digests, return_counts=True)`` of all rows without a sort of them."""
    codes, dicts = [], []
    for c in columns:
        enc = c if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c)
        codes.append(enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)[rows])
        dicts.append(enc.dictionary.to_pylist())
    key = codes[0]
    width = [len(d) for d in dicts]
    if np.prod([float(w) for w in width]) < _PACKED_LIMIT:       # the codes packed in one int64 exactly
        for c, w in zip(codes[1:], width[1:]):
            key = key * w + c
        uniq, inv = np.unique(key, return_inverse=True)
        combos = []
        for k in uniq.tolist():
            parts = []
            for w in reversed(width[1:]):
                k, r = divmod(k, w)
                parts.append(r)
            combos.append([k] + parts[::-1])
    else:
        uniq, inv = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
        combos = uniq.tolist()
    digests = np.frombuffer(b"".join(hashlib.blake2b(b"\x00".join(d[i] for d, i in zip(dicts, combo)),
                                                     digest_size=8).digest() for combo in combos), "<u8")
    if counts is not None and len(combos):
        for d, c in zip(digests.tolist(), np.bincount(inv.ravel(), minlength=len(combos)).tolist()):
            counts[d] = counts.get(d, 0) + c
    return digests[inv.ravel()] if len(combos) else np.zeros(0, np.uint64)


def fingerprints(completions: pa.Array, rows: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of the completion of each of ``rows``, computed on the column's buffers:
    its length and 8 bytes at 8 evenly spaced places. Equal completions (null as empty) have equal
    fingerprints; different ones usually differ (they are compared in full where they do not)."""
    arr = completions.combine_chunks() if isinstance(completions, pa.ChunkedArray) else completions
    if pa.types.is_string(arr.type):
        arr = arr.view(pa.binary())
    elif pa.types.is_large_string(arr.type):
        arr = arr.view(pa.large_binary())
    elif not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        arr = pc.cast(arr, pa.large_binary())
    bufs = arr.buffers()
    otype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    off = np.frombuffer(bufs[1], dtype=otype)[arr.offset:arr.offset + len(arr) + 1].astype(np.int64)
    start, length = off[:-1][rows], np.diff(off)[rows]
    if arr.null_count:
        length = np.where(arr.is_valid().to_numpy(zero_copy_only=False)[rows], length, 0)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and len(bufs[2]) else np.zeros(1, np.uint8)
    ar8 = np.arange(8)
    # bytes past a short row's end count as 0: the low `length` bytes of each little-endian word kept
    keep = low_bytes_mask(length)
    span = np.maximum(length - 8, 0)
    fp = length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for k in range(8):
            at = start + span * k // 7          # 8 bytes inside the row (a row of >= 8 bytes)
            word = _eight_bytes(data, at, ar8) & keep
            fp = (fp ^ word) * np.uint64(0xBF58476D1CE4E5B9)
            fp ^= fp >> np.uint64(31)
    return fp


def _completion_hashes(parts: list[str], ordinals: np.ndarray) -> np.ndarray:
    """The 64-bit hash (Python's, as bytes) of the completion of each row at these stream ordinals
    (ascending), reading only the row groups that hold them, a row group at a time."""
    out = np.zeros(len(ordinals), dtype=np.int64)
    if not len(ordinals):
        return out
    base, j = 0, 0
    for path in parts:
        pf = open_parquet(path, ("completion",))
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            k = j
            while k < len(ordinals) and ordinals[k] < base + n:
                k += 1
            if k > j:
                try:
                    col = pf.read_row_group(rg, columns=["completion"]).column(0)
                except (OSError, pa.ArrowException) as exc:
                    raise ReportError(f"{path}: damaged Parquet data ({exc})") from None
                comp = pc.cast(col.take(pa.array(ordinals[j:k] - base)), pa.large_binary()).to_pylist()
                out[j:k] = [hash(c or b"") for c in comp]
                j = k
            base += n
            if j == len(ordinals):
                return out
    raise ReportError(f"{parts[-1]}: the generation files changed while the report read them")


def occurs_twice(values: np.ndarray) -> np.ndarray:
    """True where the value occurs at least twice in ``values``: one sort, or, for integers in a range
    of less than 4 values per element (effective seeds are often consecutive), a count per value."""
    if len(values) < 2:
        return np.zeros(len(values), dtype=bool)
    if values.dtype.kind in "iu" and len(values) >= 64:
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < 4 * len(values):
            at = (values - values.dtype.type(lo)).astype(np.int64)
            return np.bincount(at)[at] >= 2
    s = np.sort(values)
    dup = s[1:][s[1:] == s[:-1]]
    return np.isin(values, dup) if len(dup) else np.zeros(len(values), dtype=bool)


def _repeat_rows(keys: tuple, rows: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
    """Rows beyond the first of each class of equal ``keys``, and each class of >= 2 rows as
    ``(its rows in file order, its second row)``."""
    if not len(rows):
        return np.zeros(0, np.int64), []
    order = np.lexsort(keys[::-1])          # stable: file order inside a class
    ks = [k[order] for k in keys]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = np.any([k[1:] != k[:-1] for k in ks], axis=0)
    srows = rows[order]
    starts = np.nonzero(new)[0]
    bounds = np.append(starts, len(rows))
    classes = [(srows[a:b], int(srows[a + 1])) for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1]
    return srows[~new], classes


def _fetch(parts: list[str], request_ids: list[str]) -> dict[str, dict]:
    """completion and token_logprobs of the given request ids, reading only the row groups holding them."""
    want, out = set(request_ids), {}
    for path in parts:
        if len(out) == len(want):
            break
        pf = open_parquet(path, ("request_id", "completion"))
        cols = ["request_id", "completion"] + (["token_logprobs"] if "token_logprobs" in pf.schema_arrow.names else [])
        try:
            groups = [(rg, pf.read_row_group(rg, columns=["request_id"])) for rg in range(pf.metadata.num_row_groups)]
        except (OSError, pa.ArrowException) as exc:
            raise ReportError(f"{path}: damaged Parquet data ({exc})") from None
        for rg, ids in groups:
            ids = pc.cast(ids.column(0), pa.string())
            hit = pc.is_in(ids, value_set=pa.array(list(want), pa.string()))
            hit = np.nonzero(hit.to_numpy(zero_copy_only=False))[0]
            if len(hit):
                try:
                    t = pf.read_row_group(rg, columns=cols).take(pa.array(hit))
                except (OSError, pa.ArrowException) as exc:
                    raise ReportError(f"{path}: damaged Parquet data ({exc})") from None
                comp = pc.cast(t.column("completion"), pa.large_binary()).to_pylist()
                lps = t.column("token_logprobs").to_pylist() if "token_logprobs" in cols else [None] * len(hit)
                for r, c, lp in zip(t.column("request_id").to_pylist(), comp, lps):
                    out[r] = {"completion": c or b"", "token_logprobs": lp}
    return out


def _judge(row: dict, k: int, m: int, ctoks: int) -> dict:
    """Whether k identical completions among m sampled rows are implausible (module docstring)."""
    lps = [x for x in (row.get("token_logprobs") or []) if x is not None]
    text = row.get("completion") or b""
    ex = {"copies": k, "group_rows": m, "completion_tokens": ctoks}
    if lps:
        p = math.exp(min(0.0, float(sum(lps))))
        tail = binomial_upper_tail(k, m, p)
        return dict(ex, basis="token_logprobs", p=p, tail_probability=tail, flagged=tail < TAIL_THRESHOLD)
    ratio = len(zlib.compress(text)) / len(text) if text else 0.0
    return dict(ex, basis="no logprobs: length and zlib ratio", zlib_ratio=round(ratio, 4),
                flagged=ctoks >= MIN_TOKENS_NO_LOGPROBS and ratio >= MIN_ZLIB_RATIO)
