"""Benchmark: the sampler where trawl itself is the bottleneck — an instant local server.

A vLLM-like server in its own process answers every completion at once (its answers are
rendered once per shape and cached: the server's cost per request is a lookup and a write), so
what is measured is the client: trawl's ``run_attacks`` (planning, sending, parsing, token
boundaries from the answer's logprobs, journaling, Parquet parts, run.json) against a minimal
threaded ``requests`` client that replays **the very request bodies trawl sent** (recorded by
the server during trawl's run), parses each answer's JSON, builds rows with every column of
trawl's generations schema (text, token byte offsets, log-probs, counts, parameters, seed,
latency, time) and writes them to one Parquet file durably (temporary file, fsync, rename, folder
fsync: the write a careful user makes, and what trawl does for its parts). Rounds alternate which client goes first;
the figure is generations per second, the ratio trawl / raw (issue 16's goal: >= 0.98), and
each client's CPU seconds per run (steadier than wall time on a shared machine). The server's
listen backlog is 1,024: socketserver's 5 drops SYNs when 64 clients connect at once, and each
drop costs a random client a 1 s retransmission.

    PYTHONPATH=. python benchmarks/bench_sampler_ceiling.py                     # 1,000 and 10,000 generations
    PYTHONPATH=. python benchmarks/bench_sampler_ceiling.py --generations 10000 --rounds 5 --one-per-request

``--one-per-request`` turns ``n`` and prompt lists off (one generation per request).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORD = " memorized"   # every token of every answer: 10 bytes


def _serve(port: int, tokens: int) -> None:
    """The instant server (runs in a child process until killed)."""
    bodies: list[bytes] = []
    cache: dict = {}
    lock = threading.Lock()

    def answer(d: dict) -> bytes:
        prompts = d["prompt"] if isinstance(d["prompt"], list) else [d["prompt"]]
        n, k = int(d.get("n", 1) or 1), int(d.get("max_tokens", 16))
        key = (len(prompts), n, k, d.get("logprobs") is not None)
        if key not in cache:
            toks = [WORD] * k
            ch = {"text": WORD * k, "finish_reason": "length",
                  "logprobs": {"tokens": toks, "token_logprobs": [-1.0] * k} if key[3] else None}
            cache[key] = json.dumps({"id": "c", "object": "text_completion", "model": "m",
                                     "choices": [dict(ch, index=i) for i in range(len(prompts) * n)],
                                     "usage": {"prompt_tokens": 8 * len(prompts),
                                               "completion_tokens": k * n * len(prompts)}}).encode()
        return cache[key]

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _send(self, body: bytes, code: int = 200):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            # headers and body in one write, as real servers send a small answer: two writes (what
            # end_headers() then write() do) meet Nagle's algorithm and the client's delayed ACK, and
            # each answer waits ~20-40 ms for nothing (it cost trawl's start-up probe 50 ms a run)
            self._headers_buffer.append(b"\r\n")
            self.wfile.write(b"".join(self._headers_buffer) + body)
            self._headers_buffer = []

        def do_GET(self):
            if self.path == "/version":
                return self._send(b'{"version": "0.32.0"}')
            if self.path == "/v1/models":
                return self._send(b'{"object": "list", "data": [{"id": "m", "owned_by": "vllm"}]}')
            if self.path == "/_bodies":
                with lock:
                    out = b"[" + b",".join(bodies) + b"]"
                    bodies.clear()
                return self._send(out)
            self._send(b'{"detail": "Not Found"}', 404)

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            d = json.loads(raw)
            if self.path == "/v1/completions":
                if d.get("max_tokens", 0) > 8:     # not the capability probe's short requests
                    with lock:
                        bodies.append(raw)
                return self._send(answer(d))
            if self.path == "/tokenize":
                text = d.get("prompt", "")
                return self._send(json.dumps({"tokens": [ord(c) for c in text], "count": len(text)}).encode())
            if self.path == "/detokenize":
                return self._send(json.dumps({"prompt": "".join(chr(i) for i in d["tokens"])}).encode())
            self._send(b'{"detail": "Not Found"}', 404)

    class Server(ThreadingHTTPServer):
        # a listen backlog of 5 (socketserver's default) drops the SYNs of 64 clients connecting at
        # once: each dropped one costs its client a 1 s retransmission, at random, to either client
        request_queue_size = 1024

    httpd = Server(("127.0.0.1", port), H)
    httpd.daemon_threads = True
    httpd.serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trawl(endpoint: str, args, out: str) -> tuple[int, float]:
    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    words = ["poem", "company", "book", "work", "data", "time", "year", "life"]
    per = max(1, args.generations // len(words))
    spec = AttackSpec("divergence", {"words": words, "samples": per, "repetitions": 20,
                                     "max_tokens": args.max_tokens})
    extra = {"use_n": False, "use_prompt_lists": False} if args.one_per_request else {}
    t0 = time.perf_counter()
    s = run_attacks(out, endpoint=endpoint, model="m", attacks=[spec], concurrency=args.concurrency,
                    progress=False, api_key_env=None, log=lambda m: None, **extra)
    el = time.perf_counter() - t0
    assert s.status == "finished", s.line()
    return s.finished, el


def run_raw(endpoint: str, bodies: list[dict], concurrency: int, out: str) -> tuple[int, float]:
    """Send the bodies, parse the answers, build rows with the columns of trawl's generations
    (text, token byte offsets, log-probs, counts, finish reason, parameters, seed, latency, time),
    write them to one Parquet file with trawl's schema, durably (fsynced before and after the rename)."""
    import datetime as dt
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    import requests

    from corpora.storage import GENERATIONS_SCHEMA

    local = threading.local()
    url = endpoint + "/v1/completions"

    def one(body: dict) -> list[dict]:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        t0 = time.monotonic()
        r = s.post(url, json=body, timeout=600)
        r.raise_for_status()
        data = r.json()
        latency = time.monotonic() - t0
        now = dt.datetime.now(dt.timezone.utc)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = body.get("n", 1)
        params = json.dumps({k: v for k, v in body.items() if k not in ("prompt", "seed", "model")}, sort_keys=True)
        rows = []
        for c in sorted(data["choices"], key=lambda c: c["index"]):
            i, k = divmod(c["index"], n)
            offs, pos = [], 0
            for t in c["logprobs"]["tokens"]:
                offs.append(pos)
                pos += len(t.encode("utf-8"))
            rid = hashlib.sha1(f"{prompts[i]}\0{body.get('seed')}\0{k}".encode()).hexdigest()[:16]
            rows.append({"run_id": "raw", "request_id": rid, "attack": "divergence", "variant": "",
                         "prompt": prompts[i], "completion": c["text"], "token_offsets": offs,
                         "token_logprobs": c["logprobs"]["token_logprobs"], "prompt_tokens": 8,
                         "completion_tokens": len(offs), "finish_reason": c["finish_reason"], "model": body["model"],
                         "endpoint": endpoint, "params": params, "seed": body.get("seed"), "latency_s": latency,
                         "cost_usd": 0.0, "created_at": now, "extra": "{}"})
        return rows

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        rows = [row for part in ex.map(one, bodies) for row in part]
    table = pa.table({name: [r[name] for r in rows] for name in GENERATIONS_SCHEMA.names}, schema=GENERATIONS_SCHEMA)
    # the durable write a careful user makes (what trawl's parts get): a temporary file, fsync, rename,
    # the folder fsynced; without it a power cut can leave an empty or half-written raw.parquet
    tmp, final = os.path.join(out, ".raw.parquet.tmp"), os.path.join(out, "raw.parquet")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(rows), time.perf_counter() - t0


def bench(endpoint: str, args) -> dict:
    import requests

    tmp = tempfile.mkdtemp(prefix="bench-ceiling-")
    try:
        requests.get(endpoint + "/_bodies", timeout=10)                 # start clean
        n, _ = run_trawl(endpoint, args, os.path.join(tmp, "warm"))      # warm-up, records the bodies
        bodies = requests.get(endpoint + "/_bodies", timeout=60).json()
        trawl_r, raw_r, trawl_cpu, raw_cpu = [], [], [], []
        for r in range(args.rounds):
            order = ("trawl", "raw") if r % 2 == 0 else ("raw", "trawl")
            for who in order:
                d = os.path.join(tmp, f"{who}-{r}")
                os.makedirs(d)
                c0 = time.process_time()
                if who == "trawl":
                    g, el = run_trawl(endpoint, args, d)
                    requests.get(endpoint + "/_bodies", timeout=60)
                    trawl_r.append(g / el)
                else:
                    g, el = run_raw(endpoint, bodies, args.concurrency, d)
                    raw_r.append(g / el)
                cpu = time.process_time() - c0
                (trawl_cpu if who == "trawl" else raw_cpu).append(cpu)
                print(f"  round {r + 1} {who:5s}: {g} generations in {el:.2f} s = {g / el:,.0f} gens/s "
                      f"(CPU {cpu:.2f} s)", flush=True)
                shutil.rmtree(d)
        t, w = statistics.median(trawl_r), statistics.median(raw_r)
        return {"generations": n, "requests": len(bodies), "trawl_gens_per_s": t, "raw_gens_per_s": w,
                "ratio": t / w, "rounds": args.rounds, "trawl_rounds": trawl_r, "raw_rounds": raw_r,
                "trawl_cpu_s": trawl_cpu, "raw_cpu_s": raw_cpu,
                "cpu_ratio": statistics.median(raw_cpu) / statistics.median(trawl_cpu)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--generations", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--one-per-request", action="store_true", help="n and prompt lists off")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port, args.max_tokens), daemon=True)
    proc.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import requests

        for _ in range(100):
            try:
                requests.get(endpoint + "/v1/models", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        results = []
        gens = args.generations
        for g in gens:
            args.generations = g
            print(f"{g} generations, max_tokens {args.max_tokens}, concurrency {args.concurrency}"
                  f"{', one per request' if args.one_per_request else ''}; load {os.getloadavg()[0]:.1f}")
            res = bench(endpoint, args)
            print(f"=> {res['requests']} requests: trawl {res['trawl_gens_per_s']:,.0f} gens/s, raw client "
                  f"{res['raw_gens_per_s']:,.0f} gens/s, ratio {res['ratio']:.3f} (goal >= 0.98); CPU per run, raw/trawl "
                  f"{res['cpu_ratio']:.3f}\n", flush=True)
            results.append(res)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
    finally:
        proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
