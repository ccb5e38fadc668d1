"""Benchmark: what an object store costs (corpora/stores.py), through ``file://`` on this machine.

Rounds alternate so that machine load cancels:

* ``build``: ``build_index`` to a path, against the same build to ``file://`` (staged locally, then
  published: every file copied, the manifest last);
* ``open``: ``SuffixIndex.open`` of the path, against the URL on a cold node (an empty cache: every
  file downloaded and its sha256 checked as it streams) and on a warm one (a cache hit: every file
  re-hashed).

The store is a local folder, so these are trawl's own costs (copy, hash, rename), not a network's:
a real bucket adds its transfer time (bytes / bandwidth) to the cold open and to the publish.

    PYTHONPATH=. python benchmarks/bench_store.py [--mb 32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--mb", type=int, default=32, help="corpus size in MB (default: 32)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from corpora import ingest_records
    from corpora.readers import Record
    from suffix_index.build import build_index
    from suffix_index.engine import SuffixIndex

    tmp = Path(tempfile.mkdtemp(prefix="trawl-bench-store-"))
    os.environ["TRAWL_CACHE_DIR"] = str(tmp / "cache")
    try:
        rng = random.Random(1)
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                 for _ in range(5000)]
        target = args.mb * 1_000_000
        docs, total = [], 0
        while total < target:
            d = " ".join(rng.choice(words) for _ in range(400))
            docs.append(d)
            total += len(d)
        ingest_records((Record(source=f"d{i}", text=t) for i, t in enumerate(docs)), tmp / "corpus",
                       max_shard_bytes=8 << 20)
        times: dict[str, list[float]] = {k: [] for k in ("build path", "build file://", "open path",
                                                         "open URL cold", "open URL warm")}
        index_bytes = 0
        for r in range(args.rounds):
            for kind in (("path", "url") if r % 2 == 0 else ("url", "path")):
                dest = tmp / f"index-{kind}"
                shutil.rmtree(dest, ignore_errors=True)
                target_ = str(dest) if kind == "path" else f"file://{dest}"
                shutil.rmtree(tmp / "cache", ignore_errors=True)
                t0 = time.perf_counter()
                build_index(tmp / "corpus", target_, overwrite=True)
                times["build path" if kind == "path" else "build file://"].append(time.perf_counter() - t0)
            index_bytes = sum(p.stat().st_size for p in (tmp / "index-path").iterdir())
            url = f"file://{tmp / 'index-url'}"
            for step in (("open path", "open URL cold", "open URL warm") if r % 2 == 0
                         else ("open URL cold", "open URL warm", "open path")):
                if step == "open URL cold":
                    shutil.rmtree(tmp / "cache", ignore_errors=True)
                t0 = time.perf_counter()
                with SuffixIndex.open(tmp / "index-path" if step == "open path" else url):
                    pass
                times[step].append(time.perf_counter() - t0)
        load = os.getloadavg()
        print(f"corpus {total / 1e6:.1f} MB, index {index_bytes / 1e6:.1f} MB on disk; {args.rounds} alternating "
              f"rounds, medians; load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        for k, v in times.items():
            med = statistics.median(v)
            rate = f"  ({index_bytes / 1e6 / med:.0f} MB/s of index)" if k.startswith("open URL") else ""
            print(f"  {k:<14} {med:7.2f} s{rate}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
