"""``trawl serve MODEL``: start vLLM (or llama.cpp for a GGUF file), wait, print the endpoint."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="start a model server fit for extraction sweeps (vLLM, or llama.cpp for a .gguf file)",
        description=(
            "Start vLLM's OpenAI-compatible server for an HF model folder or hub name (with "
            "--generation-config vllm, so the model's generation_config sampling defaults do not bias "
            "the audit), or llama.cpp's server for a .gguf file on CPU; wait until it answers, print "
            "the endpoint and model name (one JSON line on stdout), and keep it running until Ctrl-C. "
            "Without MODEL: the embedded Gemma-3-270m GGUF on llama.cpp."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", nargs="?", default=None, help="HF folder / hub name (vLLM) or .gguf file (llama.cpp)")
    p.add_argument("--engine", choices=("auto", "vllm", "llama_cpp"), default="auto",
                   help="auto: llama_cpp for a .gguf file, vllm otherwise")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--name", default=None, help="served model name (default: the file or folder name)")
    p.add_argument("--max-model-len", type=int, default=2048, help="vLLM: context length")
    p.add_argument("--n-ctx", type=int, default=4096, help="llama.cpp: context length")
    p.add_argument("--seed", type=int, default=0, help="vLLM: engine seed")
    p.add_argument("--enforce-eager", action="store_true", default=None,
                   help="vLLM: no CUDA graphs / compilation (faster start; default on vLLM's CPU build)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server")
    p.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                   help="extra argument passed to vLLM as is (repeatable), e.g. --vllm-arg=--tensor-parallel-size=2")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    from corpora.hygiene import number_problem
    from extractor.errors import TrawlError
    from extractor.serving.serve import make_server, server_info, wait_forever

    problem = number_problem("--startup-timeout", args.startup_timeout, above=0, maximum=1e6)
    if problem:
        raise TrawlError(problem)

    srv = make_server(args.model, engine=args.engine, alias=args.name, host=args.host, port=args.port,
                      max_model_len=args.max_model_len, n_ctx=args.n_ctx, seed=args.seed,
                      enforce_eager=args.enforce_eager, extra_args=args.vllm_arg,
                      startup_timeout=args.startup_timeout, log_path=args.log)
    print(f"trawl: starting {type(srv).__name__} for {args.model or 'the embedded model'} "
          f"(log: {srv.log_path or 'a temporary file'}) ...", file=sys.stderr)
    srv.start()
    info = server_info(srv)
    print(json.dumps(info), flush=True)
    print(f"trawl: ready: endpoint {info['endpoint']}  model {info['model']}  (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    return wait_forever(srv)
