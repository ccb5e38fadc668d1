"""Ingest, index build and match throughput against the number of workers: local vs Ray (prints a table).

Not a test: run it by hand (figures in benchmarks/RESULTS-scale.md)::

    PYTHONPATH=. nice python benchmarks/bench_ray.py --size 64MB --shards 8 --work /tmp/bench-ray

Steps:

1. corpus: ``--size`` bytes of real text from this machine (bench_index_corpus.py) in ``--shards``
   shards; workload: ``--generations`` generations of ~2 KB, half holding verbatim corpus spans
   (bench_index.make_workload), written as a run folder;
   the same text also as ``--ingest-files`` JSONL files (the ingest's input);
2. for each worker count W (``--workers``, default 1 and 2), a Ray started in this process with
   ``num_cpus=W``; then ``--rounds`` rounds, each timing, alternately, the local step (ingest in one
   process; build with ``jobs=W``; match in one process) and the Ray step (ingest: workers read the
   files and write the shards; build: one task per shard; match: W actors), so that the machine's
   load falls on both alike. Every Ray result is compared with the local one (corpus shards, index
   files and matches.parquet byte for byte).

Prints MB/s of text ingested and of corpus built, generations/s matched, the best of the rounds, and
``uptime``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def prepare(work: Path, size: int, shards: int, n: int, ingest_files: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench_index import make_workload
    from bench_index_corpus import records
    from corpora import ingest_records, open_corpus

    corpus = work / "corpus"
    marker = work / "corpus.spec"
    spec = f"{size}/{shards}/{n}/{ingest_files}"
    if not (marker.is_file() and marker.read_text() == spec):
        ingest_records(records(size), corpus, overwrite=True, keep_duplicates=True,
                       max_shard_bytes=max(1, size // shards))
        make_workload(corpus, work / "gens.jsonl", n=n)
        run = work / "run" / "generations"
        shutil.rmtree(work / "run", ignore_errors=True)
        run.mkdir(parents=True)
        rows = [json.loads(line) for line in open(work / "gens.jsonl")]
        pq.write_table(pa.table({
            "run_id": ["bench"] * len(rows),
            "request_id": [f"r{r['key']:06d}" for r in rows],
            "completion": [r["text"] for r in rows],
            "token_offsets": pa.array([r["offsets"] for r in rows], pa.list_(pa.int32())),
        }), run / "part-00000.parquet")
        src = work / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        c = open_corpus(corpus)
        files = [open(src / f"part-{i:04d}.jsonl", "w", encoding="utf-8") for i in range(ingest_files)]
        for k, d in enumerate(c.iter_documents()):
            files[k * ingest_files // c.documents].write(json.dumps({"text": d.text, "id": str(d.doc_id)}) + "\n")
        for f in files:
            f.close()
        marker.write_text(spec)
    return corpus, work / "run"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    from corpora.cli import parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("64MB"))
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ingest-files", type=int, default=16)
    ap.add_argument("--min-tokens", type=int, default=50)
    ap.add_argument("--work", default="/tmp/bench-ray")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args(argv)

    import ray

    from corpora import open_corpus
    from corpora.executor import ExecutorSpec, RayExecutor
    from suffix_index import SuffixIndex, build_index, match_to_parquet
    from suffix_index.distributed import DistributedIndex

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus, run = prepare(work, a.size, a.shards, a.generations, a.ingest_files)
    from corpora import ingest

    inputs = sorted((work / "src").glob("*.jsonl"))
    shard_size = max(1, a.size // a.shards)
    c = open_corpus(corpus)
    mb = c.text_bytes / 1e6
    print(f"corpus {mb:.1f} MB in {len(c.shards)} shards; {a.generations} generations; load before: {load()}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    results = []
    for w in a.workers:
        t = time.perf_counter()
        ray.init(num_cpus=w, include_dashboard=False, logging_level="ERROR", object_store_memory=256 << 20)
        start_s = time.perf_counter() - t
        ex = RayExecutor(ExecutorSpec(kind="ray"))
        best = {f"{k}_{step}": 1e9 for k in ("local", "ray") for step in ("ingest", "build", "match")}
        for r in range(a.rounds):
            order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
            for kind in order:
                s = timed(lambda: ingest(inputs, work / f"c-{kind}", max_shard_bytes=shard_size, overwrite=True,
                                         executor=ex if kind == "ray" else None))
                best[f"{kind}_ingest"] = min(best[f"{kind}_ingest"], s)
            assert all((work / "c-local" / f).read_bytes() == (work / "c-ray" / f).read_bytes()
                       for f in os.listdir(work / "c-local") if f != "corpus.json")
            li, ri = work / "i-local", work / "i-ray"
            for p in (li, ri):
                shutil.rmtree(p, ignore_errors=True)
            order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
            for kind in order:
                if kind == "local":
                    s = timed(lambda: build_index(corpus, li, jobs=w))
                else:
                    s = timed(lambda: build_index(corpus, ri, executor=ex))
                best[f"{kind}_build"] = min(best[f"{kind}_build"], s)
            assert all((li / f).read_bytes() == (ri / f).read_bytes() for f in os.listdir(li) if f != "manifest.json")
            with SuffixIndex.open(li) as idx, DistributedIndex(li, ex) as di:
                idx.prefetch()
                match_to_parquet(idx, run, work / "warm.parquet", min_tokens=a.min_tokens)   # page cache warm
                match_to_parquet(di, run, work / "warm.parquet", min_tokens=a.min_tokens)    # actors started
                for kind in order:
                    target = idx if kind == "local" else di
                    s = timed(lambda: match_to_parquet(target, run, work / f"m-{kind}.parquet", min_tokens=a.min_tokens))
                    best[f"{kind}_match"] = min(best[f"{kind}_match"], s)
            assert (work / "m-local.parquet").read_bytes() == (work / "m-ray.parquet").read_bytes()
        ray.shutdown()
        row = {"workers": w, "ray_start_s": round(start_s, 2),
               "local_ingest_MBps": round(mb / best["local_ingest"], 2),
               "ray_ingest_MBps": round(mb / best["ray_ingest"], 2),
               "local_build_MBps": round(mb / best["local_build"], 2), "ray_build_MBps": round(mb / best["ray_build"], 2),
               "local_match_gps": round(a.generations / best["local_match"], 1),
               "ray_match_gps": round(a.generations / best["ray_match"], 1), "load": load()}
        results.append(row)
        print(json.dumps(row))
    print()
    print("| workers | ingest local (MB/s) | ingest Ray (MB/s) | build local (MB/s) | build Ray (MB/s) "
          "| match local (gen/s) | match Ray (gen/s) | Ray start (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['local_ingest_MBps']} | {r['ray_ingest_MBps']} | {r['local_build_MBps']} | {r['ray_build_MBps']} | {r['local_match_gps']} | "
              f"{r['ray_match_gps']} | {r['ray_start_s']} |")
    print(f"load after: {load()}")
    if a.json:
        Path(a.json).write_text(json.dumps({"corpus_MB": mb, "shards": len(c.shards), "generations": a.generations,
                                            "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
