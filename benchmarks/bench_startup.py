"""Benchmark: ``trawl --help`` start-up (issue 16's goal: < 0.15 s).

Times ``python -m extractor.cli --help`` from this checkout against a bare ``python -c pass`` of the
same interpreter (the interpreter's own start-up, which no change to trawl can remove), rounds
alternating so that machine load cancels; then lists the slowest imports of one ``--help`` run
(``python -X importtime``). Commands that need pyarrow, NumPy or the report code import them when
they run, not when the parser is built (lazy package names: corpora/lazy.py).

    PYTHONPATH=. python benchmarks/bench_startup.py [--rounds 20] [--args "sample --help"]
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--args", default="--help", help="trawl's arguments (default: --help)")
    ap.add_argument("--top", type=int, default=12, help="slowest imports to list")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": REPO}
    # as installed: byte-code cached (the warm-up writes it); with PYTHONDONTWRITEBYTECODE every
    # start compiles trawl's modules again (~0.04 s), which no installed trawl does
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    trawl = [sys.executable, "-m", "extractor.cli", *shlex.split(args.args)]
    bare = [sys.executable, "-c", "pass"]
    _time(trawl, env), _time(bare, env)                     # warm the file cache
    t, b = [], []
    for r in range(args.rounds):
        for who in (("trawl", "bare") if r % 2 == 0 else ("bare", "trawl")):
            (t if who == "trawl" else b).append(_time(trawl if who == "trawl" else bare, env))
    mt, mb = statistics.median(t), statistics.median(b)
    print(f"load {os.getloadavg()[0]:.1f}; {args.rounds} alternating rounds, medians:")
    print(f"  trawl {args.args}: {mt:.3f} s   (goal < 0.15 s)")
    print(f"  python -c pass: {mb:.3f} s   (the interpreter alone)")
    print(f"  trawl's own share: {mt - mb:.3f} s")
    out = subprocess.run([sys.executable, "-X", "importtime", *trawl[1:]], env=env, cwd=REPO,
                         capture_output=True, text=True).stderr
    rows = []
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = line[len("import time:"):].split("|")
            if cum.strip().isdigit():
                rows.append((int(cum), name.rstrip()))
    top = [r for r in rows if not r[1].startswith("  ")]   # top-level imports
    print(f"  imports (top level, cumulative): {sum(c for c, _ in top) / 1e6:.3f} s; slowest:")
    for cum, name in sorted(top, reverse=True)[:args.top]:
        print(f"    {cum / 1e6:.4f} s  {name.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
