"""Benchmark: trawl's sampler against a minimal raw ``requests`` client on the same server.

Both send the same requests (the divergence attack's prompts, the same
``max_tokens``, temperature and per-request seeds) with the same number of
threads; rounds alternate which goes first, so drift in the machine's load hits
both. The figure is generated (completion) tokens per second as the server
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

from extractor.attacks import AttackSpec, PlanContext, get_attack, request_id, seed_for  # noqa: E402
from extractor.backends import OpenAIBackend  # noqa: E402
from extractor.sampler import run_attacks  # noqa: E402


def workload(args) -> list[AttackSpec]:
    words = ["poem", "company", "book", "work", "data", "time", "year", "life"]
    per = max(1, args.generations // len(words))
    words = words[: max(1, min(len(words), args.generations))]
    return [AttackSpec("divergence", {"words": words, "samples": per, "repetitions": args.repetitions,
                                      "max_tokens": args.max_tokens, "temperature": 1.0})]


def raw_payloads(specs, args, run_id: str) -> list[dict]:
    """Exactly what trawl sends (prompt, params, seed), planned the same way."""
    out = []
    for spec in specs:
        cls = get_attack(spec.name)
        for job in cls().plan(cls.resolve(spec.params), PlanContext(run_id=run_id, backend=None)):
            rid = request_id(run_id, job.attack, job.variant, job.prompt, job.sample)
            out.append({"model": args.model, "prompt": job.prompt, **job.params, "seed": seed_for(rid)})
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


def run_trawl(endpoint: str, model: str, specs, concurrency: int, workdir: str) -> tuple[int, float, str]:
    run_dir = tempfile.mkdtemp(prefix="trawl-bench-", dir=workdir)
    shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    s = run_attacks(run_dir, endpoint=endpoint, model=model, attacks=specs, concurrency=concurrency,
                    progress=False, log=lambda m: None)
    el = time.perf_counter() - t0
    assert s.status == "finished", s.line()
    return s.completion_tokens, el, s.run_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", help="server base URL (default: start the embedded model server)")
    ap.add_argument("--model", help="model name (default: the embedded model's)")
    ap.add_argument("--generations", type=int, default=16, help="generations per run (default 16)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per generation (default 64)")
    ap.add_argument("--repetitions", type=int, default=20, help="word repetitions in each prompt (default 20)")
    ap.add_argument("--concurrency", type=int, default=4, help="threads / requests in flight (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    args = ap.parse_args(argv)

    server = None
    if not args.endpoint:
        from extractor.embedded import EmbeddedServer

        server = EmbeddedServer().start()
        args.endpoint, args.model = server.base_url, server.model
    elif not args.model:
        ap.error("--model is required with --endpoint")
    workdir = tempfile.mkdtemp(prefix="trawl-bench-")
    try:
        specs = workload(args)
        OpenAIBackend(args.endpoint, args.model).probe()  # once, cached for the rounds
        # warm-up: one request so that neither side pays the server's first-request costs
        requests.post(args.endpoint + "/v1/completions", json={"model": args.model, "prompt": "Hello",
                                                               "max_tokens": 4}, timeout=600)
        results = {"raw": [], "trawl": []}
        payloads = None
        for rnd in range(args.rounds):
            order = ["raw", "trawl"] if rnd % 2 == 0 else ["trawl", "raw"]
            for who in order:
                if who == "trawl":
                    tokens, el, run_id = run_trawl(args.endpoint, args.model, specs, args.concurrency, workdir)
                    if payloads is None:
                        payloads = raw_payloads(specs, args, run_id)
                else:
                    if payloads is None:  # the run id is the hash of the plan; a dry trawl plan gives it
                        from extractor.sampler import _canonical
                        import hashlib

                        resolved = [{"name": s.name, "params": get_attack(s.name).resolve(s.params)} for s in specs]
                        rid = hashlib.sha1(_canonical({"model": args.model, "attacks": resolved, "seed": 0})
                                           .encode()).hexdigest()[:12]
                        payloads = raw_payloads(specs, args, rid)
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
        print("PASS" if ratio >= 0.98 else "FAIL", "(target: ratio >= 0.98)")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"args": vars(args), "results": results, "rate": rate, "ratio": ratio,
                           "per_round": per_round}, fh, indent=2)
        return 0 if ratio >= 0.98 else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
