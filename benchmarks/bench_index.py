"""Benchmark of trawl's index against pydivsufsort and infini-gram 2.6.0 (prints ratios).

Not a test: run it by hand (see benchmarks/RESULTS-index.md for measured figures)::

    PYTHONPATH=. nice python benchmarks/bench_index.py --size 1GB --work /tmp/bench-index

Steps, each timed in a fresh child process (so peak RSS is the step's own):

1. corpus: ``--size`` bytes of real text from this machine (bench_index_corpus.py),
   deterministic;
2. build: trawl's ``build_index`` on it; then pydivsufsort alone on the very same
   ``.bytes`` file; then infini-gram's indexer (``infini_gram.indexing``, u8
   tokens) on the same bytes, given as pre-written ``tokenized.0``/``offset.0``;
3. workload: 1,000 generations of about 2 KB, half holding one or two verbatim
   corpus spans of 200-800 bytes, the rest word salad (deterministic);
4. matching: trawl's ``SuffixIndex.match`` on all of them (byte threshold
   ``--min-bytes``, and token mode with a whitespace tokenization at
   ``--min-tokens``), infini-gram's ``attribute`` (min_len = min_bytes, u8) on a
   sample; spans must be identical on the sample.

Targets (issue 3): matching >= 300x infini-gram's throughput with identical
spans; build <= 1.2x pydivsufsort's time and >= 4x faster than infini-gram's;
peak build RSS <= 6 bytes and stored index <= 5.1 bytes per corpus byte.
Issue 16: matching >= 5,000 generations per second per core (CPU time of the
single-threaded matching process, batch 1,000, 50-token threshold) at 200 MB and
1 GB. ``--reuse-index`` matches against ``WORK/index`` from an earlier run (no
build timed); ``--batch`` and ``--match-repeat`` set the matching batch and the
number of alternating byte/token rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


def parse_size(s: str) -> int:
    from corpora.cli import parse_size as ps

    return ps(s)


def child(code: str, *args: str, nice: bool = False) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last. Adds peak RSS."""
    prologue = textwrap.dedent(
        """
        import json, resource, sys, time
        sys.path[:0] = [%r, %r]
        def _peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        def _cpu():
            r = resource.getrusage(resource.RUSAGE_SELF)
            c = resource.getrusage(resource.RUSAGE_CHILDREN)
            return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime
        def _status():
            out = {}
            for line in open('/proc/self/status'):
                k, _, v = line.partition(':')
                if k in ('VmHWM', 'RssAnon', 'RssFile'):
                    out[k] = int(v.split()[0]) * 1024
            return out
        """ % (str(ROOT), str(HERE))
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code), *args], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-5000:])
        raise SystemExit(f"child failed: {code.strip().splitlines()[0]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- steps


def step_corpus(work: Path, size: int) -> Path:
    corpus = work / "corpus"
    marker = work / "corpus.size"
    if corpus.is_dir() and marker.is_file() and marker.read_text() == str(size):
        print(f"corpus: reusing {corpus}")
        return corpus
    t = time.perf_counter()
    from bench_index_corpus import build_corpus

    c = build_corpus(corpus, size, progress=sys.stderr.isatty())
    marker.write_text(str(size))
    print(f"corpus: {c.documents} documents, {c.text_bytes / 1e6:.1f} MB of text, {len(c.shards)} shard(s) "
          f"({time.perf_counter() - t:.0f} s)")
    return corpus


def step_build(corpus: Path, index: Path, jobs: int, fsync: bool = False) -> dict:
    return child(
        """
        from suffix_index.build import build_index
        t = time.perf_counter(); c = _cpu()
        m = build_index(sys.argv[1], sys.argv[2], jobs=int(sys.argv[3]), overwrite=True, fsync=sys.argv[4] == '1')
        dt = time.perf_counter() - t
        print(json.dumps({"seconds": dt, "cpu_seconds": _cpu() - c, "peak_rss": _peak(), "bytes": m["bytes"], "text_bytes": m["text_bytes"],
                          "shards": [s["seconds"] for s in m["shards"]]}))
        """,
        str(corpus), str(index), str(jobs), "1" if fsync else "0",
    )


def step_divsufsort(index: Path) -> dict:
    return child(
        """
        import glob, numpy as np
        from pydivsufsort import divsufsort
        total = cpu = 0.0
        for f in sorted(glob.glob(sys.argv[1] + '/shard-*.bytes')):
            buf = np.fromfile(f, dtype=np.uint8)
            t = time.perf_counter(); c = _cpu()
            sa = divsufsort(buf)
            total += time.perf_counter() - t
            cpu += _cpu() - c
            del sa, buf
        print(json.dumps({"seconds": total, "cpu_seconds": cpu, "peak_rss": _peak()}))
        """,
        str(index),
    )


def prepare_peer_dir(index: Path, peer: Path) -> None:
    import numpy as np

    from suffix_index.manifest import load_manifest

    m = load_manifest(index)
    if len(m["shards"]) != 1:
        raise SystemExit("the peer comparison expects a single-shard index (size <= 1 GiB)")
    s = m["shards"][0]
    shutil.rmtree(peer, ignore_errors=True)
    peer.mkdir(parents=True)
    os.link(index / s["files"]["bytes"]["name"], peer / "tokenized.0")
    import pyarrow as pa

    docs = pa.ipc.open_file(pa.memory_map(str(index / s["files"]["docs"]["name"]))).read_all()
    (docs.column("start").to_numpy().astype(np.uint64) - 1).tofile(peer / "offset.0")


def step_peer_build(index: Path, work: Path, mem_gib: int) -> dict:
    peer = work / "peer-index"
    prepare_peer_dir(index, peer)
    data = work / "peer-data"
    data.mkdir(exist_ok=True)
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(data), "--save_dir", str(peer),
         "--token_dtype", "u8", "--version", "4", "--cpus", str(os.cpu_count() or 1), "--mem", str(mem_gib),
         "--ulimit", "20000"],
        capture_output=True, text=True,
    )
    dt = time.perf_counter() - t
    if r.returncode != 0 or not (peer / "table.0").is_file():
        sys.stderr.write(r.stdout[-2000:] + r.stderr[-2000:])
        raise SystemExit("infini-gram indexing failed")
    return {"seconds": dt, "dir": str(peer)}


def use_own_sa_for_peer(index: Path, work: Path) -> dict:
    """--skip-peer-build: give infini-gram our suffix array (same bytes, same order, 4-byte pointers)."""
    peer = work / "peer-index"
    prepare_peer_dir(index, peer)
    from suffix_index.manifest import load_manifest

    s = load_manifest(index)["shards"][0]
    os.link(index / s["files"]["sa"]["name"], peer / "table.0")
    return {"seconds": None, "dir": str(peer)}


def make_workload(corpus: Path, out: Path, n: int = 1000, seed: int = 12345) -> None:
    """n generations of ~2 KB; half hold 1-2 verbatim corpus spans of 200-800 bytes."""
    import numpy as np

    from corpora import open_corpus

    rng = random.Random(seed)
    c = open_corpus(corpus)
    tables = [c.table(i) for i in range(len(c.shards))]
    texts = [t for tb in tables for t in tb.column("text").to_pylist() if len(t.encode()) >= 1000]
    weights = np.array([len(t) for t in texts], dtype=np.float64)
    cum = np.cumsum(weights) / weights.sum()
    vocab = sorted({w for t in texts[:: max(1, len(texts) // 200)] for w in re.findall(r"[A-Za-z]{2,12}", t[:20000])})
    rng.shuffle(vocab)
    vocab = sorted(vocab[:20000])

    def salad(nbytes: int) -> str:
        words = []
        size = 0
        while size < nbytes:
            w = rng.choice(vocab)
            words.append(w)
            size += len(w) + 1
        return " ".join(words)

    rows = []
    for i in range(n):
        parts = []
        if i % 2 == 0:
            for _ in range(rng.choice((1, 1, 2))):
                doc = texts[int(np.searchsorted(cum, rng.random()))]
                ln = rng.randint(200, 800)
                a = rng.randint(0, max(0, len(doc) - ln))
                span = doc[a : a + ln]
                while len(span.encode()) > 800:
                    span = span[:-1]
                parts.append(salad(rng.randint(50, 600)))
                parts.append(span)
            parts.append(salad(max(50, 2000 - sum(len(p.encode()) for p in parts))))
            g = " ".join(parts)
        else:
            g = salad(2000)
        offs = [m.start() for m in re.finditer(rb"\s*\S+|\s+$", g.encode())]
        rows.append({"key": i, "text": g, "offsets": offs})
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def step_match(index: Path, gens: Path, min_bytes: int, min_tokens: int, repeat: int = 2,
               batch: int = 1000) -> dict:
    """trawl's matching, byte and token thresholds in alternating rounds (best of ``repeat`` each):
    wall time and this process's CPU time (matching is single-threaded: generations per CPU second
    is the per-core figure, and it is what a loaded machine distorts least)."""
    return child(
        """
        import os
        import numpy as np
        from suffix_index import SuffixIndex
        rows = [json.loads(l) for l in open(sys.argv[2])]
        min_bytes, min_tokens, batch = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
        items_b = [(r["key"], r["text"].encode(), None) for r in rows]
        items_t = [(r["key"], r["text"].encode(), np.array(r["offsets"])) for r in rows]
        idx = SuffixIndex.open(sys.argv[1])
        t = time.perf_counter(); c = time.process_time()
        idx.check_blocks(); idx._matcher.sample(0)
        setup = (time.perf_counter() - t, time.process_time() - c)
        wb, cb, wt, ct, loads = [], [], [], [], []
        for _ in range(int(sys.argv[5])):
            t = time.perf_counter(); c = time.process_time()
            spans = idx.match(items_b, min_bytes=min_bytes, batch_size=batch)
            wb.append(time.perf_counter() - t); cb.append(time.process_time() - c)
            t = time.perf_counter(); c = time.process_time()
            spans_t = idx.match(items_t, min_tokens=min_tokens, batch_size=batch)
            wt.append(time.perf_counter() - t); ct.append(time.process_time() - c)
            loads.append(os.getloadavg()[0])
        st = _status()
        out = {"first_seconds": wb[0], "seconds": min(wb), "cpu_seconds": min(cb),
               "token_seconds": min(wt), "token_cpu_seconds": min(ct),
               "all": {"wall": [round(x, 3) for x in wb], "cpu": [round(x, 3) for x in cb],
                       "token_wall": [round(x, 3) for x in wt], "token_cpu": [round(x, 3) for x in ct]},
               "setup_seconds": setup[0], "setup_cpu_seconds": setup[1], "load": loads,
               "spans": [[s.key, s.start, s.end, s.occurrences] for s in spans], "token_spans": len(spans_t),
               "peak_rss": _peak(), "rss_anon": st.get("RssAnon"), "rss_file": st.get("RssFile"),
               "generations": len(rows), "batch": batch}
        print(json.dumps(out))
        """,
        str(index), str(gens), str(min_bytes), str(min_tokens), str(repeat), str(batch),
    )


def step_peer_match(peer_dir: str, gens: Path, min_bytes: int, sample: int) -> dict:
    return child(
        """
        from infini_gram.engine import InfiniGramEngine
        rows = [json.loads(l) for l in open(sys.argv[2])][: int(sys.argv[4])]
        # u8 engines take a u8 vocab_size, so 255 at most, and eos < vocab_size; attribute() never uses eos
        eng = InfiniGramEngine(index_dir=sys.argv[1], eos_token_id=254, vocab_size=255, version=4, token_dtype='u8')
        spans = []
        t = time.perf_counter()
        for r in rows:
            ids = list(r["text"].encode())
            res = eng.attribute(input_ids=ids, delim_ids=[], min_len=int(sys.argv[3]), max_cnt=10**15, enforce_bow=False)
            if "error" in res:
                raise SystemExit(res["error"])
            for s in res["spans"]:
                spans.append([r["key"], s["l"], s["r"], s["count"]])
        dt = time.perf_counter() - t
        print(json.dumps({"seconds": dt, "generations": len(rows), "spans": spans, "peak_rss": _peak()}))
        """,
        peer_dir, str(gens), str(min_bytes), str(sample),
    )


def run_builds(args, corpus: Path, index: Path, res: dict):
    """Alternate trawl's build and pydivsufsort's sort, keep each one's best time (noisy machine)."""
    builds, sorts = [], []
    for _ in range(args.repeat):
        builds.append(step_build(corpus, index, args.jobs, args.fsync))
        sorts.append(step_divsufsort(index))
    b = min(builds, key=lambda r: r["seconds"])
    b["peak_rss"] = max(r["peak_rss"] for r in builds)
    b["all_seconds"] = [round(r["seconds"], 1) for r in builds]
    b["all_cpu_seconds"] = [round(r["cpu_seconds"], 1) for r in builds]
    d = min(sorts, key=lambda r: r["seconds"])
    d["all_seconds"] = [round(r["seconds"], 1) for r in sorts]
    d["all_cpu_seconds"] = [round(r["cpu_seconds"], 1) for r in sorts]
    res["build"] = b
    n = b["text_bytes"]
    print(f"build (trawl):        {b['seconds']:8.1f} s {b['all_seconds']}  peak RSS {b['peak_rss'] / n:.2f} bytes/corpus byte "
          f"({b['peak_rss'] / 2**30:.2f} GiB)")
    res["divsufsort"] = d
    print(f"pydivsufsort alone:   {d['seconds']:8.1f} s {d['all_seconds']}  peak RSS {d['peak_rss'] / n:.2f} bytes/corpus byte")

    return b, d, n


def report_builds(b: dict, d: dict, n: int, peer, res: dict) -> None:
    ratio_sort = b["seconds"] / d["seconds"]
    ratio_cpu = min(b["all_cpu_seconds"]) / min(d["all_cpu_seconds"])
    res["build_ratio"], res["build_cpu_ratio"] = ratio_sort, ratio_cpu
    print(f"  build / pydivsufsort            {ratio_sort:6.2f}x   (target <= 1.2x)  {'OK' if ratio_sort <= 1.2 else 'MISSED'}"
          f"   [best wall times; CPU time ratio {ratio_cpu:.2f}x; wall {b['all_seconds']} vs {d['all_seconds']}, "
          f"CPU {b['all_cpu_seconds']} vs {d['all_cpu_seconds']}]")
    if peer and peer.get("seconds"):
        r = peer["seconds"] / b["seconds"]
        print(f"  infini-gram build / trawl build {r:6.2f}x   (target >= 4x)    {'OK' if r >= 4 else 'MISSED'}")
        res["peer_build_ratio"] = r
    pk = b["peak_rss"] / n
    print(f"  peak build RSS per corpus byte  {pk:6.2f}    (target <= 6)     {'OK' if pk <= 6 else 'MISSED'}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("1GB"), help="corpus size (default 1GB; e.g. 100MB)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/trawl-bench-index"), help="working folder")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--fsync", action="store_true", help="time builds with --fsync (durable big files)")
    ap.add_argument("--repeat", type=int, default=2, help="timed builds of each kind (best kept)")
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--min-bytes", type=int, default=100, help="byte threshold for the span comparison")
    ap.add_argument("--min-tokens", type=int, default=50, help="token threshold for the token-mode timing")
    ap.add_argument("--peer-sample", type=int, default=50, help="generations given to infini-gram's attribute")
    ap.add_argument("--peer-mem", type=int, default=8, help="GiB given to infini-gram's indexer")
    ap.add_argument("--skip-peer-build", action="store_true",
                    help="do not time infini-gram's indexer; give its engine our suffix array")
    ap.add_argument("--skip-peer", action="store_true", help="no infini-gram at all")
    ap.add_argument("--match-repeat", type=int, default=5, help="alternating rounds of byte and token matching "
                    "(best of each kept)")
    ap.add_argument("--batch", type=int, default=1000, help="matching batch size")
    ap.add_argument("--reuse-index", action="store_true",
                    help="match against the index already in WORK/index (built by an earlier run): no builds")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"size": args.size, "command": " ".join(sys.argv)}
    corpus = step_corpus(work, args.size)
    index = work / "index"

    if args.reuse_index and (index / "manifest.json").is_file():
        from suffix_index.manifest import load_manifest

        n = load_manifest(index)["text_bytes"]
        print(f"index: reusing {index} (no build timed)")
        b = d = None
    else:
        b, d, n = run_builds(args, corpus, index, res)
    stored = sum(f.stat().st_size for f in index.iterdir() if f.is_file())
    res["stored_bytes"] = stored
    print(f"stored index:         {stored / n:.3f} bytes/corpus byte ({stored / 1e6:.0f} MB)")

    peer = None
    if not args.skip_peer:
        if args.skip_peer_build:
            peer = use_own_sa_for_peer(index, work)
        else:
            peer = step_peer_build(index, work, args.peer_mem)
            print(f"build (infini-gram):  {peer['seconds']:8.1f} s")
        res["peer_build"] = peer

    gens = work / "generations.jsonl"
    make_workload(corpus, gens, n=args.generations)
    m = step_match(index, gens, args.min_bytes, args.min_tokens, repeat=args.match_repeat, batch=args.batch)
    res["match"] = {k: v for k, v in m.items() if k != "spans"}
    G = m["generations"]
    gps = G / m["seconds"]
    per_core_b, per_core_t = G / m["cpu_seconds"], G / m["token_cpu_seconds"]
    res["match_per_core"], res["match_token_per_core"] = per_core_b, per_core_t
    print(f"match (trawl):        {gps:8.0f} generations/s warm ({G / m['first_seconds']:.0f}/s first run), "
          f"{per_core_b:.0f}/s per core (CPU time), {len(m['spans'])} spans >= {args.min_bytes} bytes")
    print(f"match, token mode:    {G / m['token_seconds']:8.0f} generations/s warm, {per_core_t:.0f}/s per core (CPU time), "
          f"{m['token_spans']} spans >= {args.min_tokens} tokens (whitespace tokens)")
    print(f"match rounds:         batch {m['batch']}, {args.match_repeat} alternating rounds, best kept; CPU s bytes "
          f"{m['all']['cpu']}, tokens {m['all']['token_cpu']}; load average {[round(x, 1) for x in m['load']]}; "
          f"open + block check + prefix sample {m['setup_seconds']:.2f} s ({m['setup_cpu_seconds']:.2f} s CPU)")
    print(f"match memory:         peak RSS {m['peak_rss'] / 2**20:.0f} MiB, of which anonymous {m['rss_anon'] / 2**20:.0f} MiB "
          f"and mapped index pages {m['rss_file'] / 2**20:.0f} MiB at the end")

    print()
    print("targets:")
    for label, v in ((f">= {args.min_tokens} tokens", per_core_t), (f">= {args.min_bytes} bytes", per_core_b)):
        print(f"  match per core, {label:13s}  {v:6.0f}/s  (target >= 5,000) {'OK' if v >= 5000 else 'MISSED'}")
    if b is not None:
        report_builds(b, d, n, peer, res)
    print(f"  stored bytes per corpus byte    {stored / n:6.3f}   (target <= 5.1)   {'OK' if stored / n <= 5.1 else 'MISSED'}")
    if peer:
        pm = step_peer_match(peer["dir"], gens, args.min_bytes, args.peer_sample)
        res["peer_match"] = {k: v for k, v in pm.items() if k != "spans"}
        peer_gps = pm["generations"] / pm["seconds"]
        ours = sorted(tuple(s[:3]) for s in m["spans"] if s[0] < args.peer_sample)
        theirs = sorted(tuple(s[:3]) for s in pm["spans"])
        ours_cnt = sorted(tuple(s) for s in m["spans"] if s[0] < args.peer_sample)
        theirs_cnt = sorted(tuple(s) for s in pm["spans"])
        same = ours == theirs
        ratio = gps / peer_gps
        res["match_ratio"] = ratio
        res["identical_spans"] = same
        res["identical_counts"] = ours_cnt == theirs_cnt
        print(f"  infini-gram attribute           {pm['seconds'] / pm['generations']:.3f} s/generation "
              f"({pm['generations']} generations)")
        print(f"  match throughput vs infini-gram {ratio:6.0f}x   (target >= 300x)  {'OK' if ratio >= 300 else 'MISSED'}")
        print(f"  identical spans on the sample   {'yes' if same else 'NO'} ({len(theirs)} spans; occurrence counts "
              f"{'identical' if ours_cnt == theirs_cnt else 'DIFFER'})")
        if not same:
            print("    only trawl:", sorted(set(ours) - set(theirs))[:10])
            print("    only infini-gram:", sorted(set(theirs) - set(ours))[:10])
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
