"""Synthetic run folders with known answers, for tests, benchmarks and demos.

Two builders write a run folder per docs/CONTRACTS.md section 3 and 4:

* :func:`write_run` takes generations as lists of tokens and finds the maximal
  verbatim spans against a list of corpus documents by brute force (slow,
  exact; for small test data);
* :func:`write_planted_run` plants known corpus passages between filler tokens
  that never occur in the corpus, so the spans are known without searching
  (fast; for the one-million-generation benchmark).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

GEN_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("request_id", pa.string()), ("attack", pa.string()), ("variant", pa.string()),
    ("prompt", pa.string()), ("completion", pa.string()), ("token_offsets", pa.list_(pa.int32())),
    ("token_logprobs", pa.list_(pa.float32())), ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
    ("finish_reason", pa.string()), ("model", pa.string()), ("endpoint", pa.string()), ("params", pa.string()),
    ("seed", pa.int64()), ("latency_s", pa.float64()), ("cost_usd", pa.float64()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("extra", pa.string()),
])
MATCH_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("request_id", pa.string()), ("span_start", pa.int64()), ("span_end", pa.int64()),
    ("tokens", pa.int32()), ("shard", pa.int32()), ("doc_id", pa.int64()), ("doc_offset", pa.int64()),
    ("occurrences", pa.int64()), ("source", pa.string()), ("text", pa.string()),
])


@dataclass
class Gen:
    """One synthetic generation: its tokens (strings, or bytes for invalid UTF-8)."""
    tokens: list
    attack: str = "divergence"
    variant: str = "poem"
    cost_usd: float = 0.001
    extra: dict | None = None
    request_id: str | None = None
    meta: dict = field(default_factory=dict)


def _b(t) -> bytes:
    return t if isinstance(t, bytes) else t.encode("utf-8")


def token_offsets(tokens) -> tuple[bytes, list[int]]:
    offs, pos = [], 0
    for t in tokens:
        offs.append(pos)
        pos += len(_b(t))
    return b"".join(_b(t) for t in tokens), offs


def _write(table: pa.Table, path: str, metadata: dict | None = None) -> None:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): str(v).encode() for k, v in metadata.items()}})
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class Corpus:
    """Documents joined as the index lays them out (0xFF before each)."""

    def __init__(self, docs: list[str], sources: list[str] | None = None):
        self.docs = [d.encode("utf-8") for d in docs]
        self.sources = sources or [f"doc{i}.txt" for i in range(len(docs))]
        self.blob = b"".join(b"\xff" + d for d in self.docs)
        self.starts = []
        pos = 0
        for d in self.docs:
            self.starts.append(pos + 1)
            pos += 1 + len(d)

    def locate(self, pos: int) -> tuple[int, int]:
        import bisect
        i = bisect.bisect_right(self.starts, pos) - 1
        return i, pos - self.starts[i]

    def count(self, s: bytes) -> int:
        n, i = 0, self.blob.find(s)
        while i >= 0:
            n += 1
            i = self.blob.find(s, i + 1)
        return n


def maximal_spans(gen: bytes, corpus: Corpus) -> list[tuple[int, int]]:
    """Every maximal verbatim span ``(start, end)`` of ``gen`` in the corpus (brute force)."""
    n = len(gen)
    L = [0] * (n + 1)
    prev = 0
    for s in range(n):
        length = max(prev - 1, 0)
        while s + length < n and gen[s:s + length + 1] in corpus.blob:
            length += 1
        L[s] = length
        prev = length
    out = []
    for s in range(n):
        if L[s] > 0 and (s == 0 or L[s - 1] <= L[s]):
            out.append((s, s + L[s]))
    return out


def covered_tokens(offs: list[int], nbytes: int, s: int, e: int) -> int:
    ends = offs[1:] + [nbytes]
    return sum(1 for a, b in zip(offs, ends) if a >= s and b <= e)


def write_run(run_dir: str, corpus: Corpus, gens: list[Gen], min_tokens: int = 10, run_id: str = "run-test",
              parts: int = 1, run_json: dict | None = None, with_metadata: bool = True) -> list[dict]:
    """Write a run folder; return the match rows written."""
    os.makedirs(os.path.join(run_dir, "generations"), exist_ok=True)
    rows, matches = [], []
    for i, g in enumerate(gens):
        rid = g.request_id or hashlib.sha1(f"{run_id}/{i}".encode()).hexdigest()[:16]
        comp, offs = token_offsets(g.tokens)
        rows.append(_gen_row(run_id, rid, g, comp, offs, i))
        for s, e in maximal_spans(comp, corpus):
            tk = covered_tokens(offs, len(comp), s, e)
            if tk < min_tokens:
                continue
            pos = corpus.blob.find(comp[s:e])
            d, do = corpus.locate(pos)
            matches.append({"run_id": run_id, "request_id": rid, "span_start": s, "span_end": e, "tokens": tk,
                            "shard": 0, "doc_id": d, "doc_offset": do, "occurrences": corpus.count(comp[s:e]),
                            "source": corpus.sources[d], "text": comp[s:e].decode("utf-8", "replace")})
    _write_parts(run_dir, rows, parts)
    _write(pa.Table.from_pylist(matches, schema=MATCH_SCHEMA), os.path.join(run_dir, "matches.parquet"),
           {"min_tokens": min_tokens, "min_bytes": 0, "index_manifest_sha256": "0" * 64} if with_metadata else None)
    _write_json(os.path.join(run_dir, "run.json"), run_json if run_json is not None else
                {"run_id": run_id, "requested": len(gens), "finished": len(gens), "stop_reason": "done"})
    _write_json(os.path.join(run_dir, "config.json"), {"run_id": run_id, "model": "synthetic"})
    return matches


def _gen_row(run_id, rid, g: Gen, comp: bytes, offs: list[int], i: int) -> dict:
    import datetime as dt
    return {"run_id": run_id, "request_id": rid, "attack": g.attack, "variant": g.variant,
            "prompt": f'Repeat this word forever: "{g.variant}"', "completion": comp,
            "token_offsets": offs, "token_logprobs": None, "prompt_tokens": 12, "completion_tokens": len(offs),
            "finish_reason": "length", "model": "synthetic-model", "endpoint": "http://127.0.0.1:8080/v1",
            "params": json.dumps({"temperature": 1.0, "max_tokens": len(offs)}), "seed": i, "latency_s": 0.5,
            "cost_usd": g.cost_usd, "created_at": dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc),
            "extra": json.dumps(g.extra) if g.extra is not None else "{}"}


def _gen_table(rows: list[dict]) -> pa.Table:
    # completion may be invalid UTF-8 (bytes): build as binary, then view as string without validation
    cols = {}
    for f in GEN_SCHEMA:
        vals = [r[f.name] for r in rows]
        if f.name == "completion":
            cols[f.name] = pa.array([v if isinstance(v, bytes) else v.encode() for v in vals], pa.binary()).view(pa.string())
        else:
            cols[f.name] = pa.array(vals, f.type)
    return pa.table(cols, schema=GEN_SCHEMA)


def _write_parts(run_dir: str, rows: list[dict], parts: int) -> None:
    per = max(1, -(-len(rows) // max(parts, 1)))
    for p in range(max(parts, 1)):
        chunk = rows[p * per:(p + 1) * per]
        if not chunk and p:
            break
        _write(_gen_table(chunk), os.path.join(run_dir, "generations", f"part-{p:05d}.parquet"))


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ planted runs

def write_planted_run(run_dir: str, generations: int, memorized_rate: float = 0.03, tokens_per_gen: int = 256,
                      corpus_docs: int = 2000, doc_tokens: int = 400, seed: int = 0, part_rows: int = 100_000,
                      min_tokens: int = 10, run_id: str = "bench") -> dict:
    """A large run whose spans are planted, not searched: filler tokens contain a character
    that never occurs in the corpus, so a planted corpus passage is exactly one maximal span.
    Returns a summary (counts) of what was planted."""
    rng = random.Random(seed)
    words = [f" w{i}" for i in range(5000)]
    docs = [[rng.choice(words) for _ in range(doc_tokens)] for _ in range(corpus_docs)]
    doc_bytes = [token_offsets(d) for d in docs]
    filler = [f"\u00a7{i}\u00a7" for i in range(1000)]  # never in the corpus, at both ends
    os.makedirs(os.path.join(run_dir, "generations"), exist_ok=True)
    gen_rows, match_rows = [], []
    part = 0
    planted = 0
    import datetime as dt
    created = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)
    variants = ["poem", "company", "work", "book", "the"]

    def flush():
        nonlocal gen_rows, part
        if gen_rows:
            t = pa.table({k: pa.array([r[k] for r in gen_rows], GEN_SCHEMA.field(k).type) for k in GEN_SCHEMA.names},
                         schema=GEN_SCHEMA)
            _write(t, os.path.join(run_dir, "generations", f"part-{part:05d}.parquet"))
            part += 1
            gen_rows = []

    for i in range(generations):
        toks = [filler[rng.randrange(1000)] for _ in range(tokens_per_gen)]
        rid = f"{i:016x}"
        spans = []
        r = rng.random()
        if r < memorized_rate:
            length = rng.choice([50, 60, 80, 120, 200])
            d = rng.randrange(corpus_docs)
            start = rng.randrange(doc_tokens - length)
            at = rng.randrange(tokens_per_gen - length)
            toks[at:at + length] = docs[d][start:start + length]
            spans.append((at, length, d, start))
            planted += 1
        elif r < memorized_rate * 4:
            length = rng.choice([10, 15, 25, 35, 45])
            d = rng.randrange(corpus_docs)
            start = rng.randrange(doc_tokens - length)
            at = rng.randrange(tokens_per_gen - length)
            toks[at:at + length] = docs[d][start:start + length]
            spans.append((at, length, d, start))
        comp, offs = token_offsets(toks)
        for at, length, d, start in spans:
            s = offs[at]
            e = offs[at + length] if at + length < len(offs) else len(comp)
            do = doc_bytes[d][1][start]
            match_rows.append((rid, s, e, length, d, do, comp[s:e].decode()))
        gen_rows.append({"run_id": run_id, "request_id": rid, "attack": "divergence",
                         "variant": variants[i % len(variants)], "prompt": "Repeat this word forever",
                         "completion": comp.decode(), "token_offsets": offs, "token_logprobs": None,
                         "prompt_tokens": 12, "completion_tokens": tokens_per_gen, "finish_reason": "length",
                         "model": "bench-model", "endpoint": "http://127.0.0.1:8080/v1", "params": "{}",
                         "seed": i, "latency_s": 0.1, "cost_usd": 0.0002, "created_at": created,
                         "extra": '{"diverged": true}'})
        if len(gen_rows) >= part_rows:
            flush()
    flush()
    m = pa.table({
        "run_id": pa.array([run_id] * len(match_rows)),
        "request_id": pa.array([r[0] for r in match_rows]),
        "span_start": pa.array([r[1] for r in match_rows], pa.int64()),
        "span_end": pa.array([r[2] for r in match_rows], pa.int64()),
        "tokens": pa.array([r[3] for r in match_rows], pa.int32()),
        "shard": pa.array([0] * len(match_rows), pa.int32()),
        "doc_id": pa.array([r[4] for r in match_rows], pa.int64()),
        "doc_offset": pa.array([r[5] for r in match_rows], pa.int64()),
        "occurrences": pa.array([1] * len(match_rows), pa.int64()),
        "source": pa.array([f"doc{r[4]}.txt" for r in match_rows]),
        "text": pa.array([r[6] for r in match_rows]),
    }, schema=MATCH_SCHEMA)
    _write(m, os.path.join(run_dir, "matches.parquet"), {"min_tokens": min_tokens, "min_bytes": 0})
    _write_json(os.path.join(run_dir, "run.json"), {"run_id": run_id, "requested": generations,
                                                    "finished": generations, "stop_reason": "done"})
    _write_json(os.path.join(run_dir, "config.json"), {"run_id": run_id})
    return {"generations": generations, "planted_memorized": planted, "spans": len(match_rows)}
