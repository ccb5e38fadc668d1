"""Benchmark: `trawl report` over a large run, against a plain pyarrow baseline.

    PYTHONPATH=. python benchmarks/bench_report.py --generations 1000000 [--run DIR] [--keep] [--rounds 3]

1. writes a synthetic run (tests/synthetic_runs.py write_planted_run: 256 tokens per generation,
   3% of generations with a planted 50-200-token corpus passage, 9% with a 10-45-token one)
   unless --run points at an existing one;
2. baseline: reads the same generation columns the report reads (request_id, attack,
   variant, completion, token_offsets, completion_tokens, cost_usd, extra, and for the
   repeated-draw checks and the run section model, endpoint, run_id, prompt, params, seed)
   and the matches file with ``pyarrow.parquet.ParquetFile.iter_batches`` and does nothing
   with them;
3. report: ``reports.write_report`` (compute_metrics + HTML + Markdown + JSON).

Each phase runs in its own process and reports its wall time, CPU time and peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). ``--rounds`` rounds alternate the order
(baseline first, then report first, ...) so that a load change on a shared machine falls on
both; the script prints the load average around each round, the medians and both ratios
(time and peak memory, report / baseline).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

COLUMNS = ["request_id", "attack", "variant", "completion", "token_offsets", "completion_tokens", "cost_usd", "extra",
           "model", "endpoint", "run_id", "prompt", "params", "seed"]     # reports.passes: required + optional


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def phase_gen(run: str, n: int, rate: float) -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from synthetic_runs import write_planted_run   # a test helper: tests/synthetic_runs.py
    t = time.perf_counter()
    info = write_planted_run(run, n, memorized_rate=rate, short_rate=3 * rate)
    return {k: int(v) for k, v in info.items()} | {"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_mb()}


def phase_baseline(run: str) -> dict:
    import glob

    import pyarrow.parquet as pq
    t, c = time.perf_counter(), _cpu_s()
    rows = 0
    for p in sorted(glob.glob(os.path.join(run, "generations", "part-*.parquet"))):
        pf = pq.ParquetFile(p)
        cols = [c for c in COLUMNS if c in pf.schema_arrow.names]
        for b in pf.iter_batches(batch_size=16_384, columns=cols):
            rows += b.num_rows
    for b in pq.ParquetFile(os.path.join(run, "matches.parquet")).iter_batches(batch_size=16_384):
        rows += 0
    return {"rows": rows, "seconds": time.perf_counter() - t, "cpu_s": _cpu_s() - c, "peak_rss_mb": _peak_mb()}


def phase_report(run: str) -> dict:
    from reports import write_report
    t, c = time.perf_counter(), _cpu_s()
    paths = write_report(run)
    m = paths.metrics["metrics"]
    return {"seconds": time.perf_counter() - t, "cpu_s": _cpu_s() - c, "peak_rss_mb": _peak_mb(),
            "timings": paths.metrics.get("timings"),
            "figures": {k: m[k] for k in ("generations", "memorized_generations", "memorized_token_fraction",
                                          "unique_memorized_windows", "unique_memorized_bytes", "spans_ge_10",
                                          "chao1_total_windows", "unique_memorized_documents")},
            "html_bytes": os.path.getsize(paths.html)}


def _run_phase(name: str, run: str, n: int, rate: float = 0.03) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--run", run, "--generations", str(n),
                          "--memorized-rate", str(rate)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if out.returncode:
        sys.exit(f"phase {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=1_000_000)
    ap.add_argument("--run", help="existing run folder (else a temporary one is written)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run")
    ap.add_argument("--memorized-rate", type=float, default=0.03,
                    help="share of generations with a planted >= 50-token passage (default 0.03; 3x as many short ones)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating baseline/report rounds (default 3)")
    ap.add_argument("--phase", choices=["gen", "baseline", "report"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        fn = {"gen": lambda: phase_gen(a.run, a.generations, a.memorized_rate), "baseline": lambda: phase_baseline(a.run),
              "report": lambda: phase_report(a.run)}[a.phase]
        print(json.dumps(fn()))
        return
    tmp = None
    run = a.run
    if run is None:
        tmp = tempfile.mkdtemp(prefix="bench-report-")
        run = os.path.join(tmp, "run")
    try:
        if not os.path.exists(os.path.join(run, "matches.parquet")):
            g = _run_phase("gen", run, a.generations, a.memorized_rate)
            print(f"wrote synthetic run: {g['generations']:,} generations, {g['planted_memorized']:,} with a memorized "
                  f"passage, {g['spans']:,} spans in {g['seconds']:.1f} s")
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _d, fs in os.walk(run) for f in fs)
        print(f"run folder: {size / 1e6:,.0f} MB on disk")
        import statistics

        rounds = {"baseline": [], "report": []}
        for i in range(max(1, a.rounds)):
            order = ("baseline", "report") if i % 2 == 0 else ("report", "baseline")
            before = os.getloadavg()[0]
            for name in order:
                rounds[name].append(_run_phase(name, run, a.generations))
            print(f"round {i + 1} ({' then '.join(order)}): load average {before:.2f} -> {os.getloadavg()[0]:.2f} "
                  f"(on {os.cpu_count()} CPUs); baseline {rounds['baseline'][-1]['seconds']:.1f} s, "
                  f"report {rounds['report'][-1]['seconds']:.1f} s", flush=True)
        med = {name: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu_s", "peak_rss_mb")}
               for name, rs in rounds.items()}
        b, r = med["baseline"], med["report"]
        last = rounds["report"][-1]
        print(f"medians of {len(rounds['report'])} round(s):")
        print(f"baseline (pyarrow iter_batches over the same columns): {b['seconds']:.1f} s wall, "
              f"{b['cpu_s']:.1f} s CPU, peak RSS {b['peak_rss_mb']:,.0f} MB")
        print(f"trawl report (metrics + HTML/MD/JSON/JSONL):           {r['seconds']:.1f} s wall, "
              f"{r['cpu_s']:.1f} s CPU, peak RSS {r['peak_rss_mb']:,.0f} MB")
        print(f"ratio report/baseline: time {r['seconds'] / b['seconds']:.2f}x wall, {r['cpu_s'] / b['cpu_s']:.2f}x CPU; "
              f"peak memory {r['peak_rss_mb'] / b['peak_rss_mb']:.2f}x (goal: <= 2x both)")
        print("report stages of the last round (s): " +
              ", ".join(f"{k} {v['seconds']:.1f}" for k, v in (last["timings"] or {}).items()))
        print("figures: " + json.dumps(last["figures"]))
    finally:
        if tmp and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            print(f"kept {run}")


if __name__ == "__main__":
    main()
