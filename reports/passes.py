"""The passes of :func:`reports.metrics.compute_metrics` after the matches pass
(:mod:`reports.spans`), each with one job, over a typed accumulator:

* :func:`read_generations` streams the generation parts once into a :class:`RunAccumulator`:
  per (attack, variant) :class:`Group` counts (generations, tokens, cost, divergence,
  discoverable hits), and for the generations holding a memorized span its memorized tokens,
  window digests and corpus intervals, and one record per memorized span;
* :func:`threshold_pass`: span counts per threshold and the longest run, per group;
* :func:`windows_pass`: unique windows and their frequency counts, run-wide, per group, per attack;
* :func:`bytes_pass`: unique memorized bytes (union of corpus intervals), same three levels;
* :func:`cost_pass`: the cost each group's figures report.

Definitions: :mod:`reports.metrics`. Memory: 8 bytes per (unique window, generation) incidence,
32 per memorized span interval, a dict per memorized span, one (request id, group) row per
generation when the run has spans; never the text of all generations.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import sys
from array import array
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports.inputs import REQUIRED_GEN_COLUMNS, as_string, iter_batches, open_parquet, raw_bytes, text
from reports.repeats import RepeatedDraws
from reports.spans import THRESHOLDS, MatchIndex, longest_per, union_length
from reports.taxonomy_figures import distinct_count

APPROX_EDIT_RATIO = 0.1
REPEAT_ATTACKS = ("divergence", "special_chars")   # attacks that carry diverged_generations / divergence_rate
DIVERGENCE_ATTACKS = ("divergence",)                # ... with a value; special_chars: n/a (Bai et al. define none)
# what the pass keeps until its end is copied out of the default pool, where the record batches'
# buffers come and go: a small survivor there pins the pages of a freed batch (fragmentation)
LONG_LIVED = pa.system_memory_pool()
OPTIONAL_GEN_COLUMNS = ("cost_usd", "extra", "model", "endpoint", "run_id", "prompt", "params", "seed")


@dataclass
class Group:
    """The figures' inputs for one (attack, variant), one attack (``variant`` None) or the run
    (both None). Counts are filled by the passes; :func:`reports.figures.figures` turns a group
    into its figure dict. ``divergence_rows``: generations of a divergence attack (the rate's
    denominator; 0 where divergence is n/a); ``shows_divergence``: the figure dict carries the
    divergence keys; ``cost_usd``: the streamed sum of cost_usd, ``total_cost_usd``: the cost the
    figures report (:func:`cost_pass`); ``freq``: ``{k: f_k}`` of the group's unique windows."""

    attack: str | None
    variant: str | None
    generations: int = 0
    generated_tokens: int = 0
    cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    diverged: int = 0
    divergence_rows: int = 0
    shows_divergence: bool = False
    memorized_generations: int = 0
    memorized_tokens: int = 0
    longest_run: tuple = (0, 0)                   # (tokens, bytes) of the longest span
    spans_ge: list = field(default_factory=lambda: [0] * len(THRESHOLDS))
    generations_ge: list = field(default_factory=lambda: [0] * len(THRESHOLDS))
    discoverable_rows: int = 0
    exact: int = 0
    approx: int = 0
    unique_windows: int = 0
    unique_bytes: int = 0
    freq: dict = field(default_factory=dict)

    @classmethod
    def combine(cls, attack: str | None, groups: list[Group]) -> Group:
        """The sum of ``groups`` (counts added, the longest run the longest of theirs); unique
        windows, bytes and frequency counts are not additive and are left for the passes."""
        out = cls(attack, None, shows_divergence=any(g.shows_divergence for g in groups))
        for k in ("generations", "generated_tokens", "cost_usd", "total_cost_usd", "diverged", "divergence_rows",
                  "memorized_generations", "memorized_tokens", "discoverable_rows", "exact", "approx"):
            setattr(out, k, sum(getattr(g, k) for g in groups))
        out.longest_run = max((g.longest_run for g in groups), default=(0, 0))
        out.spans_ge = [sum(g.spans_ge[i] for g in groups) for i in range(len(THRESHOLDS))]
        out.generations_ge = [sum(g.generations_ge[i] for g in groups) for i in range(len(THRESHOLDS))]
        return out


@dataclass
class RunAccumulator:
    """Everything :func:`read_generations` keeps of the generations.

    ``groups``: one :class:`Group` per (attack, variant), ``gid`` = its position; ``win_*``: one
    entry per (unique window, generation) incidence (8-byte digest, group, generation ordinal);
    ``iv_*``: one corpus interval per memorized span; ``span_records``: one dict per memorized
    span (fields of :class:`reports.taxonomy_figures.SpanPool` plus the text), a generation's
    spans contiguous; ``rid_gid``: (request id, gid) of every generation, when any span exists."""

    gid_of: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    generations: int = 0
    rid_gid: list = field(default_factory=list)
    win_hash: bytearray = field(default_factory=bytearray)
    win_gid: array = field(default_factory=lambda: array("I"))
    win_gen: array = field(default_factory=lambda: array("I"))
    iv_gid: array = field(default_factory=lambda: array("I"))
    iv_doc: array = field(default_factory=lambda: array("q"))
    iv_start: array = field(default_factory=lambda: array("q"))
    iv_end: array = field(default_factory=lambda: array("q"))
    span_records: list = field(default_factory=list)
    models: set = field(default_factory=set)
    endpoints: set = field(default_factory=set)
    run_ids: set = field(default_factory=set)
    approx_examples: list = field(default_factory=list)
    no_offsets: int = 0
    memorized_rows_seen: int = 0
    repeats: RepeatedDraws = field(default_factory=RepeatedDraws)

    def group(self, attack: str, variant: str) -> int:
        """The gid of (attack, variant), created on first sight."""
        gid = self.gid_of.get((attack, variant))
        if gid is None:
            gid = self.gid_of[(attack, variant)] = len(self.groups)
            self.groups.append(Group(attack, variant, shows_divergence=attack in REPEAT_ATTACKS))
        return gid

    def attacks(self) -> list[str]:
        return sorted({g.attack for g in self.groups})

    def attack_of_gid(self) -> np.ndarray:
        """Index in :meth:`attacks` of each group's attack."""
        attacks = self.attacks()
        return (np.array([attacks.index(g.attack) for g in self.groups], dtype=np.int64) if self.groups
                else np.zeros(0, np.int64))


# ----------------------------------------------------------------------------------------- generations

def read_generations(parts: list[str], mi: MatchIndex, W: int, batch_rows: int, top_spans: int,
                     progress: bool = False) -> RunAccumulator:
    """The generations pass: every part streamed once (``progress``: a tqdm bar on stderr)."""
    acc = RunAccumulator()
    mem_rids = mi.memorized_request_ids()
    bar = None
    if progress:
        from tqdm import tqdm
        total_rows = sum(open_parquet(p_, REQUIRED_GEN_COLUMNS).metadata.num_rows for p_ in parts)
        bar = tqdm(total=total_rows, unit=" gen", desc="trawl report", file=sys.stderr, leave=False)
    for path in parts:
        pf = open_parquet(path, REQUIRED_GEN_COLUMNS)
        names = pf.schema_arrow.names
        want = list(REQUIRED_GEN_COLUMNS) + [c for c in OPTIONAL_GEN_COLUMNS if c in names]
        for batch in iter_batches(pf, path, want, batch_rows):
            if batch.num_rows == 0:
                continue
            acc.repeats.add(batch)
            # as bytes: a stray invalid UTF-8 byte in a name must not fail the report
            attack = pc.fill_null(pc.cast(batch.column("attack"), pa.binary()), b"")
            variant = pc.fill_null(pc.cast(batch.column("variant"), pa.binary()), b"")
            extra = pc.fill_null(batch.column("extra"), "") if "extra" in names else None
            _run_info(acc, batch, names)
            _group_counts(acc, batch, names, attack, variant, extra)
            row_gid = _row_groups(acc, attack, variant)
            if mi.per_request is not None:
                rid = pc.take(batch.column("request_id"), pa.array(np.arange(batch.num_rows)), memory_pool=LONG_LIVED)
                acc.rid_gid.append(pa.table({"request_id": pc.cast(rid, pa.string(), memory_pool=LONG_LIVED),
                                             "gid": pa.array(row_gid, memory_pool=LONG_LIVED)}))
            if extra is not None:
                _discoverable(acc, batch, attack, extra, row_gid, top_spans)
            _memorized(acc, batch, row_gid, mem_rids, mi, W)
            acc.generations += batch.num_rows
            if bar is not None:
                bar.update(batch.num_rows)
    if bar is not None:
        bar.close()
    return acc


def _run_info(acc: RunAccumulator, batch: pa.RecordBatch, names: list[str]) -> None:
    """Models, endpoints and run ids seen (up to about 20 of each)."""
    for colname, bag in (("model", acc.models), ("endpoint", acc.endpoints), ("run_id", acc.run_ids)):
        if colname in names and len(bag) < 20:
            bag.update(x for x in pc.unique(batch.column(colname)).to_pylist() if x)


def _group_counts(acc: RunAccumulator, batch: pa.RecordBatch, names: list[str], attack: pa.Array,
                  variant: pa.Array, extra: pa.Array | None) -> None:
    """Generations, generated tokens, cost and diverged rows of the batch, added per group."""
    n = batch.num_rows
    ctoks = pc.fill_null(batch.column("completion_tokens"), 0)
    cost = (pc.fill_null(batch.column("cost_usd"), 0.0) if "cost_usd" in names
            else pa.nulls(n, pa.float64()).fill_null(0.0))
    if extra is not None:
        # divergence rows say "diverged": true (CONTRACTS.md §3); special_chars' "escaped" is no divergence
        diverged = pc.cast(pc.and_(pc.match_substring_regex(extra, r'"diverged"\s*:\s*true'),
                                   pc.is_in(attack, value_set=pa.array([a.encode() for a in DIVERGENCE_ATTACKS],
                                                                       pa.binary()))), pa.int64())
    else:
        diverged = pa.array(np.zeros(n, dtype=np.int64))
    tbl = pa.table({"attack": attack, "variant": variant, "ct": pc.cast(ctoks, pa.int64()),
                    "cost": pc.cast(cost, pa.float64()), "div": diverged})
    agg = tbl.group_by(["attack", "variant"], use_threads=False).aggregate([("ct", "sum"), ("cost", "sum"), ("div", "sum"),
                                                         ("ct", "count")])
    for a, v, cts, cs, dv, cnt in zip(*(agg.column(c).to_pylist() for c in
                                       ("attack", "variant", "ct_sum", "cost_sum", "div_sum", "ct_count"))):
        grp = acc.groups[acc.group(a.decode("utf-8", "replace"), v.decode("utf-8", "replace"))]
        grp.generations += cnt
        grp.generated_tokens += cts or 0
        grp.cost_usd += cs or 0.0
        grp.diverged += dv or 0
        if grp.attack in DIVERGENCE_ATTACKS:
            grp.divergence_rows += cnt


def _row_groups(acc: RunAccumulator, attack: pa.Array, variant: pa.Array) -> np.ndarray:
    """The gid of every row (vectorised through a dictionary of the batch's groups; the key is
    length-prefixed, so unambiguous whatever bytes the names hold)."""
    keys = pc.binary_join_element_wise(pc.cast(pc.cast(pc.binary_length(attack), pa.string()), pa.binary()),
                                       attack, variant, b"\x00")
    uniq = pc.unique(keys)
    first = pc.index_in(uniq, value_set=keys).to_numpy(zero_copy_only=False)
    fa, fv = attack.take(pa.array(first)).to_pylist(), variant.take(pa.array(first)).to_pylist()
    lut = np.array([acc.gid_of[(a.decode("utf-8", "replace"), v.decode("utf-8", "replace"))]
                    for a, v in zip(fa, fv)], dtype=np.int32)
    return lut[pc.index_in(keys, value_set=uniq).to_numpy(zero_copy_only=False)]


def _discoverable(acc: RunAccumulator, batch: pa.RecordBatch, attack: pa.Array, extra: pa.Array,
                  row_gid: np.ndarray, top_spans: int) -> None:
    """Discoverable rows: exact hits and approximate ones (``edit_distance_ratio`` <= 0.1)."""
    disc = np.nonzero(pc.equal(attack, pa.scalar(b"discoverable", pa.binary())).to_numpy(zero_copy_only=False))[0]
    if not len(disc):
        return
    for i, x in zip(disc.tolist(), text(extra.take(pa.array(disc)))):
        grp = acc.groups[row_gid[i]]
        grp.discoverable_rows += 1
        try:
            d = json.loads(x) if x else {}
        except ValueError:
            d = {}
        if not isinstance(d, dict):
            d = {}
        if d.get("exact") is True:
            grp.exact += 1
            continue
        r = d.get("edit_distance_ratio")
        if isinstance(r, (int, float)) and not isinstance(r, bool) and r <= APPROX_EDIT_RATIO:
            grp.approx += 1
            if len(acc.approx_examples) < top_spans:
                acc.approx_examples.append({
                    "request_id": batch.column("request_id")[i].as_py(), "variant": grp.variant,
                    "doc_id": d.get("doc_id"), "edit_distance_ratio": r, "target": str(d.get("target", ""))[:2000],
                    "completion": text(batch.column("completion").slice(i, 1))[0][:2000]})


def _memorized(acc: RunAccumulator, batch: pa.RecordBatch, row_gid: np.ndarray, mem_rids: pa.Array,
               mi: MatchIndex, W: int) -> None:
    """The batch's generations holding memorized spans: their tokens, windows and span records."""
    if not len(mem_rids):
        return
    hit = np.nonzero(pc.is_in(as_string(batch.column("request_id")), value_set=mem_rids)
                     .to_numpy(zero_copy_only=False))[0]
    if not len(hit):
        return
    take = pa.array(hit)
    rids = text(batch.column("request_id").take(take))
    comps = raw_bytes(batch.column("completion").take(take))
    offs_l = batch.column("token_offsets").take(take).to_pylist()
    for j, i in enumerate(hit.tolist()):
        acc.memorized_rows_seen += 1
        gid = int(row_gid[i])
        grp = acc.groups[gid]
        comp, spans = comps[j], mi.memorized.get(rids[j], ())
        grp.memorized_generations += 1
        offs = offs_l[j]
        if offs:
            o = np.asarray(offs, dtype=np.int64)          # as the matcher does (token_arrays)
            np.clip(o, 0, len(comp), out=o)
            np.maximum.accumulate(o, out=o)
            offs = o.tolist()
        if not offs:
            acc.no_offsets += 1
            grp.memorized_tokens += max(sp[2] for sp in spans)
            span_tok = [(None, b"")] * len(spans)
        else:
            tokens, wins, span_tok = generation_windows(comp, offs, spans, W)
            grp.memorized_tokens += tokens
            if wins:
                acc.win_hash += b"".join(wins)           # 8-byte digests, read as little-endian uint64
                acc.win_gid.extend([gid] * len(wins))
                acc.win_gen.extend([acc.generations + i] * len(wins))
        _span_records(acc, gid, rids[j], comp, spans, span_tok)


def generation_windows(comp: bytes, offs: list[int], spans, W: int) -> tuple[int, set, list]:
    """For one generation (completion bytes, token offsets, its memorized spans): the tokens
    inside some span (each once), the set of its distinct W-token window digests (64-bit
    BLAKE2b of the window's bytes; windows only inside one span), and per span ``((a, b),
    digests)``: the covered token indices ``[a, b)`` and its windows' digests concatenated."""
    blake = hashlib.blake2b
    nb = len(comp)
    ends = offs[1:] + [nb]
    covered, wins, span_tok = [], set(), []
    for sp in spans:
        s, e = sp[0], sp[1]
        a = bisect.bisect_left(offs, s)
        b = bisect.bisect_right(ends, e) - 1
        if b - a + 1 < 1:
            span_tok.append(((a, a), b""))
            continue
        covered.append((a, b + 1))
        sw = [blake(comp[offs[k]:ends[k + W - 1]], digest_size=8).digest() for k in range(a, b - W + 2)]
        wins.update(sw)
        span_tok.append(((a, b + 1), b"".join(sw)))
    covered.sort()
    tot = 0
    cs_, ce_ = -1, -1
    for a, b in covered:
        if a > ce_:
            tot += ce_ - cs_ if ce_ > cs_ else 0
            cs_, ce_ = a, b
        elif b > ce_:
            ce_ = b
    tot += ce_ - cs_ if ce_ > cs_ else 0
    return tot, wins, span_tok


def _span_records(acc: RunAccumulator, gid: int, rid: str, comp: bytes, spans, span_tok: list) -> None:
    """One corpus interval and one record per memorized span of a generation."""
    for sp, (trange, swins) in zip(spans, span_tok):
        s, e, tk, sh, d, do, oc, src, _ = sp
        raw = comp[s:e]
        acc.iv_gid.append(gid)
        acc.iv_doc.append(d)
        acc.iv_start.append(do)
        acc.iv_end.append(do + (e - s))
        acc.span_records.append({"request_id": rid, "gid": gid, "span_start": s, "span_end": e, "tokens": tk,
                                 "bytes": e - s, "shard": sh, "doc_id": d, "doc_offset": do, "occurrences": oc,
                                 "source": src, "text": raw.decode("utf-8", "replace"),   # as matches' `text`
                                 "raw": raw, "tok_range": trange, "wins": swins})


# ----------------------------------------------------------------------------------------- after the stream

def threshold_pass(acc: RunAccumulator, mi: MatchIndex) -> dict | None:
    """Spans and generations per threshold and the longest run of every group (one join of the
    per-request table with the generations' groups); returns the run-wide longest span (a row
    of :func:`reports.spans.longest_per`, ``gid`` added), None when no span has a token count."""
    if mi.per_request is None or not acc.rid_gid:
        return None
    groups = acc.groups
    joined = mi.per_request.join(pa.concat_tables(acc.rid_gid), "request_id", join_type="inner")
    acc.rid_gid = []
    gids = joined.column("gid").to_numpy(zero_copy_only=False)
    for ti in range(len(THRESHOLDS)):
        v = joined.column(f"s{ti}_sum").to_numpy(zero_copy_only=False).astype(np.int64)
        sp = np.bincount(gids, weights=v, minlength=len(groups))
        gn = np.bincount(gids, weights=(v > 0), minlength=len(groups))
        for gid, g in enumerate(groups):
            g.spans_ge[ti] = int(sp[gid])
            g.generations_ge[ti] = int(gn[gid])
    # the longest run over every span (not only memorized ones): per group the longest span (by tokens,
    # then bytes), whose tokens and bytes are both reported; run-wide, the longest of those
    if "mt" not in joined.column_names:
        return None
    per_gid = longest_per(joined.filter(pc.is_valid(joined.column("mt"))), "gid")
    for r in per_gid.to_pylist():
        groups[r["gid"]].longest_run = (r["mt"], r["mb"])
    return longest_per(per_gid, None).to_pylist()[0] if per_gid.num_rows else None


def uniques_and_freq_per_key(keys: np.ndarray, hashes: np.ndarray) -> tuple[dict[int, int], dict[int, dict[int, int]]]:
    """Per key: the number of distinct hashes, and the frequency counts ``{k: f_k}`` (how many
    distinct hashes occur exactly k times under that key; each entry is one generation's
    incidence already)."""
    if not len(keys):
        return {}, {}
    order = np.lexsort((hashes, keys))
    k, h = keys[order], hashes[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (h[1:] != h[:-1])
    starts = np.nonzero(new)[0]
    runs = np.diff(np.append(starts, len(k)))          # incidences of each (key, hash)
    run_keys = k[starts]
    ks, n_unique = np.unique(run_keys, return_counts=True)
    # (key, run length) pairs -> f_k per key, vectorised
    base = int(runs.max()) + 1
    upairs, fk = np.unique(run_keys.astype(np.int64) * base + runs, return_counts=True)
    freq: dict[int, dict[int, int]] = {}
    for pr, f in zip(upairs.tolist(), fk.tolist()):
        freq.setdefault(pr // base, {})[pr % base] = f
    return {int(a): int(b) for a, b in zip(ks, n_unique)}, freq


def windows_pass(acc: RunAccumulator, run: Group, attacks: list[Group]) -> np.ndarray:
    """Unique windows and frequency counts of the run, of each group and of each attack (in
    :meth:`RunAccumulator.attacks` order); returns the sorted generation ordinals at which
    each unique window was first seen (the observed accumulation curve)."""
    wh = np.frombuffer(bytes(acc.win_hash), dtype="<u8").astype(np.uint64) if acc.win_hash else np.zeros(0, np.uint64)
    acc.win_hash = bytearray()
    if not len(wh):
        return np.zeros(0, np.int64)
    wg = np.frombuffer(acc.win_gid, dtype=np.uint32).astype(np.int64)
    wn = np.frombuffer(acc.win_gen, dtype=np.uint32)
    u, first_idx, counts = np.unique(wh, return_index=True, return_counts=True)
    kk, fk = np.unique(counts, return_counts=True)
    run.freq = {int(k): int(f) for k, f in zip(kk, fk)}
    run.unique_windows = int(len(u))
    for level, keys in ((acc.groups, wg), (attacks, acc.attack_of_gid()[wg])):
        uniq, freq = uniques_and_freq_per_key(keys, wh)
        for i, g in enumerate(level):
            g.unique_windows, g.freq = uniq.get(i, 0), freq.get(i, {})
    return np.sort(wn[first_idx])


def bytes_pass(acc: RunAccumulator, run: Group, attacks: list[Group]) -> int:
    """Unique memorized bytes of the run, of each group and of each attack; returns the number
    of distinct source documents (canonical occurrence)."""
    if not len(acc.iv_doc):
        return 0
    ig = np.frombuffer(acc.iv_gid, dtype=np.uint32).astype(np.int64)
    idoc = np.frombuffer(acc.iv_doc, dtype=np.int64)
    ist = np.frombuffer(acc.iv_start, dtype=np.int64)
    ien = np.frombuffer(acc.iv_end, dtype=np.int64)
    run.unique_bytes = sum(union_length(idoc, ist, ien).values())
    for level, keys in ((acc.groups, ig), (attacks, acc.attack_of_gid()[ig])):
        per: dict = defaultdict(int)
        for (k, _d), v in union_length((keys, idoc), ist, ien).items():
            per[k] += v
        for i, g in enumerate(level):
            g.unique_bytes = per.get(i, 0)
    return distinct_count(idoc)


def cost_pass(acc: RunAccumulator, run_json_cost: float) -> tuple[float, str]:
    """Each group's reported cost: its cost_usd sum, or, when that column sums to 0 over the run
    and run.json has a total, the total split in proportion to generations. Returns the run's
    total cost and where it came from."""
    col_cost = sum(g.cost_usd for g in acc.groups)
    total_cost, source = col_cost, "sum of cost_usd over generations"
    if col_cost <= 0 and run_json_cost:
        total_cost, source = run_json_cost, "run.json"
    if total_cost <= 0:
        source = "no cost recorded"
    for g in acc.groups:
        g.total_cost_usd = (g.cost_usd if source != "run.json"
                            else total_cost * g.generations / max(acc.generations, 1))
    return total_cost, source
