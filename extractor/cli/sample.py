"""``trawl sample``: run extraction attacks against a served model and store the generations.

Registered by :mod:`extractor.cli` through :func:`register`.
"""
from __future__ import annotations

import argparse
import json
import sys

from corpora.hygiene import number_problem
from extractor.errors import TrawlError

SAMPLE_EPILOG = """\
examples:
  trawl sample --endpoint http://127.0.0.1:8000 --model my-model --out runs/div \\
      --attack divergence --param words=poem,company --param samples=5 --max-dollars 20
  trawl sample --endpoint http://127.0.0.1:8000 --model my-model --out runs/disc \\
      --attack discoverable --param corpus=corpus/ --param documents=1000 --resume
  trawl sample ... --attack divergence --attack special_chars   (several attacks, one run)

--param NAME=VALUE applies to the --attack before it (lists are comma-separated;
see `trawl attacks NAME` for each attack's parameters and defaults).
Budget caps stop the run cleanly (run.json says why); rerun with --resume to
continue, after a crash or kill too: no finished generation is lost or repeated.
The API key is read from the environment variable named by --api-key-env and is
never written anywhere.
"""


class _AttackAction(argparse.Action):
    def __call__(self, parser, ns, values, option_string=None):
        items = getattr(ns, "attack_list", None) or []
        items.append([values, {}])
        ns.attack_list = items


class _ParamAction(argparse.Action):
    def __call__(self, parser, ns, values, option_string=None):
        items = getattr(ns, "attack_list", None) or []
        if not items:
            parser.error("--param must follow the --attack it belongs to")
        if "=" not in values:
            parser.error(f"--param expects NAME=VALUE, got {values!r}")
        k, v = values.split("=", 1)
        items[-1][1][k.strip()] = v
        ns.attack_list = items


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="run extraction attacks against a served model and store the generations",
        description="Run extraction attacks against an OpenAI-compatible /v1/completions or "
                    "/v1/chat/completions server "
                    "(vLLM, llama.cpp, OpenAI) and store every generation in a run folder "
                    "(docs/CONTRACTS.md section 3).",
        epilog=SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("server")
    g.add_argument("--backend", choices=("openai", "vllm"), default="openai",
                   help="openai: any OpenAI-compatible /v1/completions server at --endpoint (default); "
                        "vllm: vLLM's engine in this process (vllm.LLM, on a GPU host), --model being an "
                        "HF folder or hub name, no server and no --endpoint")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="--backend vllm: the engine's dtype (default: auto, vLLM's choice: bfloat16 on the CPU "
                        "build). float32 makes a lone request's logits equal the batch's, which exact (n,p) "
                        "needs (README, 'Exact (n,p)-extraction'); a server's dtype is set where it is started")
    g.add_argument("--endpoint", metavar="URL", action="append",
                   help="server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted); repeat it for "
                        "replicas of the same model: the load is spread and a dead replica is routed around")
    g.add_argument("--api", choices=("completions", "chat", "auto"), default="completions",
                   help="completions: /v1/completions (default); chat: /v1/chat/completions (a chat model: each "
                        "prompt is a user turn, or the attack's own conversation); auto: completions where the "
                        "server answers them, else chat. run.json records the API, the conversations as sent "
                        "and the chat template's hash where the server exposes it")
    g.add_argument("--model", required=True, metavar="NAME", help="model name to send in each request")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default: OPENAI_API_KEY; unset is fine "
                        "for local servers)")
    g.add_argument("--concurrency", type=int, default=64, metavar="N",
                   help="requests in flight (default: 64, sized for vLLM's continuous batching; use 1-4 for "
                        "llama.cpp)")
    g.add_argument("--tokenizer-file", metavar="GGUF",
                   help="the GGUF model file a llama.cpp server loaded: token boundaries are computed in this "
                        "process with its tokenizer (checked against the server's) instead of tokenize requests "
                        "that queue behind generations on the server")
    g.add_argument("--max-prompts", type=int, default=8, metavar="N",
                   help="prompts per request as a prompt list, where the server honours lists (vLLM): "
                        "consecutive prompts with the same settings share a request; 1 turns lists off "
                        "(default: 8)")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="total time limit of one request in seconds, > 0 (default: 300)")
    g.add_argument("--max-retries", type=int, default=6, metavar="N",
                   help="retries of a failed request, >= 0 (connection errors, timeouts, 429, 5xx; default: 6)")
    g.add_argument("--token-info", choices=("auto", "logprobs", "tokenize"), default="auto",
                   help="where token boundaries come from: per-token logprobs or the server's tokenize "
                        "endpoint (default: auto; llama.cpp uses tokenize, its logprobs are slow)")
    a = p.add_argument_group("attacks")
    a.add_argument("--attack", action=_AttackAction, metavar="NAME", dest="attack_placeholder",
                   help="attack to run (repeatable); see `trawl attacks`")
    a.add_argument("--param", action=_ParamAction, metavar="NAME=VALUE", dest="param_placeholder",
                   help="parameter of the preceding --attack (repeatable)")
    a.add_argument("--seed", type=int, default=0, help="run seed (document selection, prompt sampling; default: 0)")
    r = p.add_argument_group("run folder")
    r.add_argument("--out", required=True, metavar="RUN", help="run folder (created; must be new unless --resume)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in RUN (after a crash, kill or budget stop); starts it if absent")
    r.add_argument("--run-id", default=None, help="run id (default: a hash of model + attacks + seed)")
    b = p.add_argument_group("budget (a run stops cleanly at the first cap reached; default for each: none, no cap)")
    b.add_argument("--max-generations", type=int, default=None, metavar="N", help="generations in the whole run (default: no cap)")
    b.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="prompt + completion tokens billed in the whole run (default: no cap)")
    b.add_argument("--max-dollars", type=float, default=None, metavar="X", help="spend in USD in the whole run, from the --price-* or --gpu-hourly-usd prices "
                        "(default: no cap)")
    b.add_argument("--max-seconds", type=float, default=None, metavar="S", help="wall time of this invocation (default: no cap); when it is reached no new request "
                        "is sent and the requests in flight may finish, for up to the drain time (60 s), "
                        "so the run can end up to a minute later; any still unanswered then are dropped and sampled "
                        "again by --resume")
    c = p.add_argument_group("cost (per-million-token prices, or an hourly GPU price times wall time)")
    c.add_argument("--price-input-per-mtok", type=float, default=0.0, metavar="P", help="USD per 1M prompt tokens (default: 0)")
    c.add_argument("--price-output-per-mtok", type=float, default=0.0, metavar="P",
                   help="USD per 1M completion tokens (default: 0)")
    c.add_argument("--gpu-hourly-usd", type=float, default=None, metavar="P", help="USD per hour of wall time (default: none; not with --price-*)")
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from extractor.attacks import AttackSpec
    from extractor.sampling.budget import Budget, Pricing
    from extractor.sampling import run_attacks

    items = getattr(args, "attack_list", None) or []
    if not items:
        raise TrawlError("no attack given; use --attack NAME (see `trawl attacks`)")
    specs = [AttackSpec(name, params) for name, params in items]
    for flag in ("max_dollars", "max_seconds"):      # inf is no cap in disguise: leave the flag out instead
        problem = number_problem("--" + flag.replace("_", "-"), getattr(args, flag))
        if problem:
            raise TrawlError(problem + " (leave the flag out for no cap)")
    budget = Budget(max_generations=args.max_generations, max_tokens=args.max_tokens,
                    max_dollars=args.max_dollars, max_seconds=args.max_seconds)
    pricing = Pricing(input_per_mtok=args.price_input_per_mtok, output_per_mtok=args.price_output_per_mtok,
                      gpu_hourly_usd=args.gpu_hourly_usd)
    if args.backend == "openai" and not args.endpoint:
        raise TrawlError("--endpoint URL is required with the openai backend (or use --backend vllm)")
    if args.backend == "vllm" and args.endpoint:
        raise TrawlError("--backend vllm runs the model in this process: drop --endpoint")
    if args.backend == "vllm" and args.tokenizer_file:
        raise TrawlError("--tokenizer-file is for llama.cpp servers; the vllm backend has its model's tokenizer")
    if args.backend == "vllm":
        endpoint = f"vllm://{args.model}"
    else:
        endpoint = args.endpoint[0] if len(args.endpoint) == 1 else args.endpoint
    summary = run_attacks(args.out, endpoint=endpoint, model=args.model, attacks=specs, budget=budget,
                          pricing=pricing, concurrency=args.concurrency, max_prompts=args.max_prompts,
                          tokenizer_file=args.tokenizer_file,
                          resume=args.resume,
                          progress=not args.no_progress, api_key_env=args.api_key_env, timeout=args.timeout,
                          max_retries=args.max_retries, run_id=args.run_id, seed=args.seed,
                          token_info=args.token_info, backend=args.backend, api=args.api, dtype=args.dtype)
    print(f"trawl: {summary.line()}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    return 0 if summary.status in ("finished", "stopped") else 3
