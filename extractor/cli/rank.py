"""``trawl rank RUN``: score every generation with the model and rank them by membership signals.

Registered by :mod:`extractor.cli` through :func:`register`. The driver is
:mod:`extractor.scoring`; the signals and their evaluation are :mod:`reports.ranking`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from corpora.hygiene import number_problem
from extractor.errors import TrawlError

EPILOG = """\
examples:
  trawl rank runs/div                       (the run's own server and model, from config.json)
  trawl rank runs/div --model-file gemma.gguf           (llama.cpp in this process: exact min-k%++)
  trawl rank runs/div --reference-endpoint http://127.0.0.1:8001 --reference-model small-model

Writes RUN/scores.parquet (docs/CONTRACTS.md section 7): per generation the Carlini et al. 2021
signals (perplexity, reference-model ratio, zlib ratio, lowercase ratio, sliding-window
perplexity), min-k% and min-k%++. Where RUN/matches.parquet exists, prints each ranking's
precision@10/100/1000 and ROC AUC against "holds a memorized 50-token window"; `trawl report`
shows them with the top candidates of each ranking. Budget caps stop cleanly; rerun to continue.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rank", help="score a run's generations with the model and rank them by membership signals",
        description="Score every generation of a run with the model (per-token logprobs of the text) and "
                    "rank them by membership signals, for audits without (or to test against) the training data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder (written by trawl sample)")
    g = p.add_argument_group("scorer (default: the run's own endpoint and model, from RUN/config.json)")
    g.add_argument("--scorer", choices=("auto", "http", "inprocess"), default="auto",
                   help="auto (default): llama.cpp in this process when the run's llama.cpp server loaded a GGUF "
                        "trawl knows (--tokenizer-file, the demo, embedded campaigns) or --model-file is given, "
                        "else the server (echo + logprobs)")
    g.add_argument("--endpoint", metavar="URL", help="score on this server instead of the run's")
    g.add_argument("--model", metavar="NAME", help="model name to send (default: the run's)")
    g.add_argument("--model-file", metavar="GGUF", help="score with llama.cpp in this process from this GGUF "
                   "(the full distribution: exact min-k%%++)")
    g.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the API key "
                   "(default: the run's)")
    g.add_argument("--reference-endpoint", metavar="URL", help="a reference (e.g. smaller) model's server for the "
                   "reference-ratio signal")
    g.add_argument("--reference-model", metavar="NAME", help="the reference model's name at --reference-endpoint")
    g.add_argument("--reference-model-file", metavar="GGUF", help="the reference model in this process (llama.cpp)")
    add_batch_args(g)
    g.add_argument("--timeout", type=float, default=300.0, metavar="S", help="time limit of one request (default: 300)")
    m = p.add_argument_group("signals")
    m.add_argument("--k", type=float, default=20.0, metavar="PCT",
                   help="min-k%% and min-k%%++: the percentage of lowest-scoring tokens averaged (default: 20)")
    m.add_argument("--window", type=int, default=50, metavar="TOKENS",
                   help="sliding-window perplexity: window length in tokens (default: 50, Carlini et al.)")
    m.add_argument("--top-k", type=int, default=20, metavar="N",
                   help="alternatives per position asked of a server, for min-k%%++'s approximation (default: 20)")
    m.add_argument("--no-lowercase", action="store_true", help="skip the lowercase-ratio signal (halves the cost)")
    m.add_argument("--window-tokens", type=int, default=50, metavar="W",
                   help="evaluation: a generation is memorized when it holds a verbatim span of >= W tokens (default: 50)")
    add_budget_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--restart", action="store_true", help="discard RUN/scores.parquet and score everything again")
    o.add_argument("--json", action="store_true", help="print the summary and evaluation as JSON on stdout")
    o.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal)")
    p.set_defaults(func=cmd_rank)


# -- the scoring flags and settings, shared by `trawl rank` and `trawl mia` (one copy) -----------------

def add_batch_args(g) -> None:
    """How texts are sent to the scorer: --batch, --concurrency, --max-retries."""
    g.add_argument("--batch", type=int, default=8, metavar="N", help="texts per scoring call (default: 8)")
    g.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="scoring calls in flight (default: 4 over HTTP, 1 in process)")
    g.add_argument("--max-retries", type=int, default=6, metavar="N", help="retries of a failed request (default: 6)")


def add_budget_args(p) -> None:
    """The budget caps and prices of scoring (as trawl sample's): the driver stops cleanly at a cap."""
    b = p.add_argument_group("budget and cost (as trawl sample; default: no cap)")
    b.add_argument("--max-tokens", type=int, default=None, metavar="N", help="prompt tokens scored, all sessions")
    b.add_argument("--max-dollars", type=float, default=None, metavar="X", help="spend in USD, all sessions")
    b.add_argument("--max-seconds", type=float, default=None, metavar="S", help="wall time of this invocation")
    b.add_argument("--price-input-per-mtok", type=float, default=0.0, metavar="P", help="USD per 1M prompt tokens")
    b.add_argument("--price-output-per-mtok", type=float, default=0.0, metavar="P", help="USD per 1M generated tokens")
    b.add_argument("--gpu-hourly-usd", type=float, default=None, metavar="P", help="USD per hour of wall time")


def score_settings(args, **signals):
    """The driver's :class:`~extractor.scoring.ScoreSettings` from the flags of :func:`add_batch_args` and
    :func:`add_budget_args` (plus --timeout, --restart, --no-progress) and the command's ``signals``
    settings (k, window, top_k, lowercase); a bad number is one line."""
    from extractor.sampling.budget import Budget, Pricing
    from extractor.scoring import ScoreSettings

    for flag in ("max_dollars", "max_seconds", "timeout"):
        problem = number_problem("--" + flag.replace("_", "-"), getattr(args, flag))
        if problem:
            raise TrawlError(problem)
    budget = Budget(max_tokens=args.max_tokens, max_dollars=args.max_dollars, max_seconds=args.max_seconds)
    pricing = Pricing(input_per_mtok=args.price_input_per_mtok, output_per_mtok=args.price_output_per_mtok,
                      gpu_hourly_usd=args.gpu_hourly_usd)
    return ScoreSettings(batch=args.batch, concurrency=args.concurrency, timeout=args.timeout,
                         budget=budget, pricing=pricing, restart=args.restart, progress=not args.no_progress,
                         **signals)


def make_scorers(args) -> tuple[object, object | None]:
    """The scorer and the reference scorer the arguments name (module docstring of extractor.scoring)."""
    from extractor.backends import make_backend
    if (args.reference_endpoint or args.reference_model) and not (args.reference_endpoint and args.reference_model):
        raise TrawlError("give both --reference-endpoint and --reference-model")
    run = os.path.abspath(args.run)
    if not os.path.isdir(run):
        raise TrawlError(f"{run}: no such run folder")
    from reports.inputs import read_json   # the report's reader: a damaged file is one line, not {}

    cfg = read_json(os.path.join(run, "config.json"))
    status = read_json(os.path.join(run, "run.json"))
    be_cfg = cfg.get("backend") if isinstance(cfg.get("backend"), dict) else {}
    caps = status.get("capabilities") if isinstance(status.get("capabilities"), dict) else {}
    model_file = args.model_file
    if args.scorer == "inprocess" and not model_file:
        tf = caps.get("tokenizer_file")
        model_file = tf if isinstance(tf, str) and os.path.isfile(tf) else None
        if not model_file:
            raise TrawlError("--scorer inprocess needs --model-file GGUF (the run names no model file trawl can find)")
    if args.scorer == "auto" and not model_file and not args.endpoint:
        tf = caps.get("tokenizer_file")
        if caps.get("server") == "llama_cpp" and isinstance(tf, str) and os.path.isfile(tf):
            model_file = tf     # the GGUF the run's llama.cpp server loaded: in process scores the first token too
    if args.scorer == "http":
        model_file = None
    model = args.model or be_cfg.get("model") or cfg.get("model")
    if model_file:
        from extractor.backends.llama_inprocess import LlamaScorer
        scorer = LlamaScorer(model_file, model=model)
    else:
        endpoint = args.endpoint or be_cfg.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint or not isinstance(model, str) or not model:
            raise TrawlError(f"{run}/config.json names no endpoint and model to score with; give --endpoint and --model")
        key_env = args.api_key_env or be_cfg.get("api_key_env")
        if be_cfg.get("backend") == "vllm" and not args.endpoint:
            scorer = make_backend("vllm", model=model)
        else:
            scorer = make_backend("openai", endpoint=endpoint, model=model, api_key_env=key_env,
                                  timeout=args.timeout, max_retries=args.max_retries)
    reference = None
    if args.reference_model_file:
        from extractor.backends.llama_inprocess import LlamaScorer
        reference = LlamaScorer(args.reference_model_file)
    elif args.reference_endpoint:
        reference = make_backend("openai", endpoint=args.reference_endpoint, model=args.reference_model,
                                 api_key_env=args.api_key_env or be_cfg.get("api_key_env"), timeout=args.timeout,
                                 max_retries=args.max_retries)
    return scorer, reference


def cmd_rank(args) -> int:
    from extractor.scoring import score_run
    from reports import ranking

    problem = number_problem("--k", args.k)
    if problem:
        raise TrawlError(problem)
    if not (0 < args.k <= 100):
        raise TrawlError(f"--k is a percentage in (0, 100], got {args.k:g}")
    if args.window_tokens < 1:
        raise TrawlError("--window-tokens must be >= 1")
    st = score_settings(args, k=args.k / 100.0, window=args.window, top_k=args.top_k, lowercase=not args.no_lowercase)
    scorer, reference = make_scorers(args)
    try:
        summary = score_run(args.run, scorer, reference=reference, settings=st)
    finally:
        for be in (scorer, reference):
            if be is not None:
                be.close()
    print(f"trawl: {summary.line()}", file=sys.stderr)
    for n in summary.notes:
        print(f"trawl: note: {n}", file=sys.stderr)
    from reports.render_ranking import write_ranking_report
    html_path, _md, _sec = write_ranking_report(os.path.abspath(args.run), args.window_tokens)
    print(f"trawl: top candidates by each ranking: {html_path}", file=sys.stderr)
    evaluation = None
    matches = os.path.join(os.path.abspath(args.run), "matches.parquet")
    cols, _meta = ranking.read_scores(summary.path)
    if os.path.exists(matches):
        mem = ranking.memorized_ids(matches, args.window_tokens)
        labels = [rid in mem for rid in cols["request_id"]]
        evaluation = ranking.evaluate(cols, labels, keys=cols["request_id"])
        print(f"trawl: against {sum(labels)} memorized of {len(labels)} generations "
              f"(a verbatim span of >= {args.window_tokens} tokens):", file=sys.stderr)
        print(format_table(evaluation), file=sys.stderr)
    if args.json:
        out = {"scores": summary.path, "rows": summary.rows, "new": summary.new, "errors": summary.errors,
               "stopped": summary.stopped, "prompt_tokens": summary.prompt_tokens, "cost_usd": summary.cost_usd,
               "exact_vocab_stats": summary.exact_vocab_stats, "notes": summary.notes,
               "evaluation": {k: {kk: vv for kk, vv in v.items() if kk != "roc"} for k, v in (evaluation or {}).items()}}
        print(json.dumps(out, indent=2, default=_num))
    return 0


def _num(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def format_table(evaluation: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    lines = [f"  {'ranking':<16} {'P@10':>6} {'P@100':>6} {'P@1000':>6} {'AUC':>6}"]
    for name, e in evaluation.items():
        p = e["precision_at"]
        lines.append(f"  {name:<16} {f(p.get(10)):>6} {f(p.get(100)):>6} {f(p.get(1000)):>6} {f(e['auc']):>6}")
    return "\n".join(lines)
