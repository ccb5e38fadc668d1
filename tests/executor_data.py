"""A corpus, index and run folder for the executor tests: random text over a small alphabet, so that
spans repeat within and across shards (every case of the distributed merge happens), and
generations that splice corpus pieces with noise."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from corpora import ingest_records
from corpora.readers import Record


def corpus_docs(seed: int = 7, docs: int = 120, alphabet: str = "abcdefgh ", length=(50, 900)) -> list[str]:
    rng = random.Random(seed)
    base = ["".join(rng.choice(alphabet) for _ in range(rng.randint(*length))) for _ in range(docs)]
    # passages copied between documents (so between shards): counts summed over shards
    for i in range(0, docs, 3):
        src = base[rng.randrange(docs)]
        a = rng.randrange(max(1, len(src) - 60))
        base[i] = base[i] + src[a:a + 60]
    return base


def write_corpus(out: Path, docs: list[str], shard_bytes: int = 8_000) -> Path:
    recs = [Record(source=f"doc{i}.txt", text=t) for i, t in enumerate(docs)]
    ingest_records(recs, out, max_shard_bytes=shard_bytes, keep_duplicates=True)
    return out


def generations(docs: list[str], n: int = 300, seed: int = 11, alphabet: str = "abcdefgh ") -> list[tuple[str, bytes, list[int]]]:
    """``(request_id, completion, token_offsets)``: corpus pieces and noise, tokens of 1-4 bytes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.6:
                d = docs[rng.randrange(len(docs))]
                a = rng.randrange(len(d))
                parts.append(d[a:a + rng.randint(5, 120)])
            else:
                parts.append("".join(rng.choice(alphabet + "xyz") for _ in range(rng.randint(3, 40))))
        text = "".join(parts)
        if rng.random() < 0.05:
            text += "\u00ff\u00e9"   # non-ASCII bytes
        data = text.encode("utf-8")
        offs, pos = [], 0
        while pos < len(data):
            offs.append(pos)
            pos += rng.randint(1, 4)
        out.append((f"req-{i:05d}", data, offs))
    return out


def write_run(run_dir: Path, gens, run_id: str = "run-ray", parts: int = 2) -> Path:
    g = run_dir / "generations"
    g.mkdir(parents=True, exist_ok=True)
    step = (len(gens) + parts - 1) // parts
    for p in range(parts):
        chunk = gens[p * step:(p + 1) * step]
        table = pa.table({
            "run_id": pa.array([run_id] * len(chunk), pa.string()),
            "request_id": pa.array([r for r, _, _ in chunk], pa.string()),
            "completion": pa.array([d.decode("utf-8") for _, d, _ in chunk], pa.string()),
            "token_offsets": pa.array([o for _, _, o in chunk], pa.list_(pa.int32())),
        })
        pq.write_table(table, g / f"part-{p:05d}.parquet")
    return run_dir


def index_files(index: Path) -> dict[str, bytes]:
    """Every file of an index folder but the manifest, by name."""
    return {f: (index / f).read_bytes() for f in sorted(os.listdir(index)) if f != "manifest.json"}


def manifest_shards(index: Path) -> list[dict]:
    """The manifest's shard entries without their timings."""
    import json

    m = json.loads((index / "manifest.json").read_text())
    return [{k: v for k, v in s.items() if k != "seconds"} for s in m["shards"]]
