"""Benchmark: trawl's sampler against a minimal raw ``requests`` client on the same server.

Both send the same requests (the divergence attack's prompts, the same
``max_tokens``, temperature and per-request seeds, and the neutral sampling
fields trawl adds for the server: the raw client's JSON bodies come from the
probed backend's ``payload``) with the same number of threads; rounds alternate
which goes first, so drift in the machine's load hits both. When the benchmark
starts the embedded server it knows the model file, and trawl takes token
boundaries from it in-process as ``trawl demo`` does (``--server-tokenize`` for
the path through the server's tokenize endpoint). The figure is generated (completion) tokens per second as the server
reports them in ``usage``, over the whole of each run: trawl's time includes
planning, journaling, token-boundary requests and Parquet parts (not its
capability probe, which is done once before the rounds, as a long run pays it
once). trawl must reach at least 98% of the raw client's rate.

    python benchmarks/bench_sampler.py                      # starts the embedded Gemma-3-270m server
    python benchmarks/bench_sampler.py --endpoint http://127.0.0.1:8000 --model NAME --concurrency 64

Prints one line per run and the ratio; ``--json FILE`` writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests  # noqa: E402

from extractor.attacks import AttackSpec, PlanContext, get_attack  # noqa: E402
from extractor.attacks.base import draw_seed  # noqa: E402
from extractor.backends import OpenAIBackend  # noqa: E402
from extractor.sampling import run_attacks  # noqa: E402


def workload(args) -> list[AttackSpec]:
    words = ["poem", "company", "book", "work", "data", "time", "year", "life"]
    per = max(1, args.generations // len(words))
    words = words[: max(1, min(len(words), args.generations))]
    return [AttackSpec("divergence", {"words": words, "samples": per, "repetitions": args.repetitions,
                                      "max_tokens": args.max_tokens, "temperature": 1.0})]


def raw_payloads(specs, args, run_id: str, backend: OpenAIBackend) -> list[dict]:
    """Exactly what trawl sends, planned the same way: the JSON bodies come from the probed
    backend's own ``payload`` (prompt, attack parameters, seed, and the server's neutral sampling
    fields: on llama.cpp top_k=0 samples from the whole 262k vocabulary, which costs the server
    more per token than its default top_k=40, so leaving them out would favour the raw client)."""
    out = []
    for spec in specs:
        cls = get_attack(spec.name)
        for job in cls().plan(cls.resolve(spec.params), PlanContext(run_id=run_id, backend=None)):
            # trawl's seed of generation g of the plan (seed scheme 2: extractor.attacks.base.draw_seed)
            out.append(backend.payload(job.prompt, job.params, seed=draw_seed(run_id, len(out))))
    return out


def run_raw(endpoint: str, payloads: list[dict], concurrency: int) -> tuple[int, float]:
    local = threading.local()
    url = endpoint.rstrip("/") + "/v1/completions"

    def one(p):
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        r = s.post(url, json=p, timeout=600)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        tokens = sum(ex.map(one, payloads))
    return tokens, time.perf_counter() - t0


def run_paired(endpoint: str, model: str, specs, payloads: list[dict], concurrency: int, workdir: str,
               trim: float = 0.2, tokenizer_file: str | None = None) -> dict:
    """trawl and the raw client at the same time on the same server, each with ``concurrency`` requests
    in flight: both see the same machine load, so drift cannot favour either. The raw client cycles
    through the same payloads until trawl has finished. Both are counted over the middle of trawl's
    run (``trim`` of it cut at each end: at the start one client's requests are queued ahead of the
    other's, at the end trawl's queue drains while the raw client's does not), each request's billed
    completion tokens pro rata of its time inside that window (trawl's requests from its rows:
    ``created_at`` and ``latency_s``)."""
    stop = threading.Event()
    done: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    url = endpoint.rstrip("/") + "/v1/completions"

    def raw_worker(k: int):
        s = requests.Session()
        i = k
        while not stop.is_set():
            p = payloads[i % len(payloads)]
            i += concurrency
            t0 = time.time()
            r = s.post(url, json=p, timeout=600)
            r.raise_for_status()
            with lock:
                done.append((t0, time.time(), int(r.json()["usage"]["completion_tokens"])))

    threads = [threading.Thread(target=raw_worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    run_dir = run_trawl(endpoint, model, specs, concurrency, workdir, with_window=True,
                        tokenizer_file=tokenizer_file)[-1]
    stop.set()
    for t in threads:
        t.join()
    from extractor.sampling.run_folder import RunDir

    rows = RunDir(run_dir).read_generations(columns=["created_at", "latency_s", "extra"]).to_pylist()
    mine = []
    for r in rows:
        end = r["created_at"].timestamp()
        mine.append((end - r["latency_s"], end, float(json.loads(r["extra"])["billed_completion_tokens"])))
    a, b = min(x[0] for x in mine), max(x[1] for x in mine)
    w0, w1 = a + trim * (b - a), b - trim * (b - a)

    def inside(reqs):
        tot = 0.0
        for s0, s1, n in reqs:
            overlap = max(0.0, min(s1, w1) - max(s0, w0))
            if s1 > s0:
                tot += n * overlap / (s1 - s0)
        return tot

    tt, rt = inside(mine), inside(done)
    el = w1 - w0
    return {"trawl_tokens": round(tt, 1), "raw_tokens": round(rt, 1), "seconds": round(el, 3),
            "trawl_tokens_per_s": round(tt / el, 3), "raw_tokens_per_s": round(rt / el, 3),
            "ratio": tt / rt if rt else float("nan")}


def run_trawl(endpoint: str, model: str, specs, concurrency: int, workdir: str, with_window: bool = False,
              tokenizer_file: str | None = None):
    run_dir = tempfile.mkdtemp(prefix="trawl-bench-", dir=workdir)
    shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    s = run_attacks(run_dir, endpoint=endpoint, model=model, attacks=specs, concurrency=concurrency,
                    tokenizer_file=tokenizer_file,
                    progress=False, log=lambda m: None)
    t1 = time.perf_counter()
    assert s.status == "finished", s.line()
    if with_window:
        return s.completion_tokens, t1 - t0, s.run_id, t0, t1, run_dir
    return s.completion_tokens, t1 - t0, s.run_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", help="server base URL (default: start the embedded model server)")
    ap.add_argument("--model", help="model name (default: the embedded model's)")
    ap.add_argument("--generations", type=int, default=16, help="generations per run (default 16)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per generation (default 64)")
    ap.add_argument("--repetitions", type=int, default=20, help="word repetitions in each prompt (default 20)")
    ap.add_argument("--concurrency", type=int, default=4, help="threads / requests in flight (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--mode", choices=("sequential", "paired", "both"), default="sequential",
                    help="sequential: alternate whole runs (ABBA), everything trawl does from start to end "
                         "counted; paired: trawl and the raw client at the same time on the same server, counted "
                         "over the middle 60%% of trawl's run (steady state; immune to drift in the machine's "
                         "load); both: paired rounds, then sequential ones (default: sequential)")
    ap.add_argument("--tokenizer-file", metavar="GGUF", help="with --endpoint on a llama.cpp server: the GGUF "
                    "file it loaded, for token boundaries in trawl's process (as trawl demo does)")
    ap.add_argument("--server-tokenize", action="store_true", help="token boundaries through the server's "
                    "tokenize endpoint even when the model file is known (the path for llama.cpp servers "
                    "trawl did not start)")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    args = ap.parse_args(argv)

    server = None
    if not args.endpoint:
        from extractor.serving.embedded import EmbeddedServer

        server = EmbeddedServer().start()
        args.endpoint, args.model = server.base_url, server.model
        if not args.server_tokenize:
            args.tokenizer_file = str(server.model_path)
    elif not args.model:
        ap.error("--model is required with --endpoint")
    workdir = tempfile.mkdtemp(prefix="trawl-bench-")
    try:
        specs = workload(args)
        probed = OpenAIBackend(args.endpoint, args.model, tokenizer_file=args.tokenizer_file)
        probed.probe()  # once, cached for the rounds
        # warm-up: one request so that neither side pays the server's first-request costs
        requests.post(args.endpoint + "/v1/completions", json={"model": args.model, "prompt": "Hello",
                                                               "max_tokens": 4}, timeout=600)
        results = {"raw": [], "trawl": []}
        from extractor.sampling.plan import canonical as _canonical
        import hashlib

        resolved = [{"name": sp.name, "params": get_attack(sp.name).resolve(sp.params)} for sp in specs]
        plan_run_id = hashlib.sha1(_canonical({"model": args.model, "attacks": resolved, "seed": 0})
                                   .encode()).hexdigest()[:12]
        payloads = raw_payloads(specs, args, plan_run_id, probed)
        out = {"args": vars(args)}
        ok = True
        if args.mode in ("paired", "both"):
            paired = []
            for rnd in range(args.rounds):
                r = run_paired(args.endpoint, args.model, specs, payloads, args.concurrency, workdir,
                               tokenizer_file=args.tokenizer_file)
                paired.append(r)
                print(f"paired round {rnd + 1}: trawl {r['trawl_tokens_per_s']:.2f} tokens/s, raw "
                      f"{r['raw_tokens_per_s']:.2f} tokens/s over the same {r['seconds']:.1f} s; "
                      f"ratio {r['ratio']:.3f}", flush=True)
            pr = sum(r["trawl_tokens"] for r in paired) / sum(r["raw_tokens"] for r in paired)
            per = ", ".join(f"{r['ratio']:.3f}" for r in paired)
            print(f"paired: ratio trawl/raw = {pr:.3f} (per round: {per})")
            out["paired"] = {"rounds": paired, "ratio": pr}
            ok = ok and pr >= 0.98
        if args.mode == "paired":
            print("PASS" if ok else "FAIL", "(target: ratio >= 0.98)")
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(out, fh, indent=2)
            return 0 if ok else 1
        for rnd in range(args.rounds):
            order = ["raw", "trawl"] if rnd % 2 == 0 else ["trawl", "raw"]
            for who in order:
                if who == "trawl":
                    tokens, el, run_id = run_trawl(args.endpoint, args.model, specs, args.concurrency, workdir,
                                                   tokenizer_file=args.tokenizer_file)
                    assert run_id == plan_run_id
                else:
                    tokens, el = run_raw(args.endpoint, payloads, args.concurrency)
                results[who].append({"tokens": tokens, "seconds": round(el, 3), "tokens_per_s": round(tokens / el, 3)})
                print(f"round {rnd + 1} {who:5s}: {tokens} tokens in {el:.2f} s = {tokens / el:.2f} tokens/s",
                      flush=True)
        tot = {k: (sum(r["tokens"] for r in v), sum(r["seconds"] for r in v)) for k, v in results.items()}
        rate = {k: t / s for k, (t, s) in tot.items()}
        ratio = rate["trawl"] / rate["raw"]
        per_round = [t["tokens_per_s"] / r["tokens_per_s"] for t, r in zip(results["trawl"], results["raw"])]
        print(f"raw client: {rate['raw']:.2f} tokens/s; trawl: {rate['trawl']:.2f} tokens/s; "
              f"ratio trawl/raw = {ratio:.3f} (per round: {', '.join(f'{x:.3f}' for x in per_round)}; "
              f"median {statistics.median(per_round):.3f})")
        ok = ok and ratio >= 0.98
        print("PASS" if ok else "FAIL", "(target: ratio >= 0.98)")
        if args.json:
            out["sequential"] = {"results": results, "rate": rate, "ratio": ratio, "per_round": per_round}
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=2)
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
