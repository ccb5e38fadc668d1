"""``trawl mia``: membership inference on a member and a non-member text set.

Each text is scored by the model (``Backend.score``: per-token log-probabilities, with the
vocabulary statistics of min-k%++ where the scorer has them), its lowercased copy too (the
lowercase ratio), and by a reference model when one is given (the reference ratio); the signals
are :func:`reports.ranking.signals`, the figures :mod:`reports.mia` and the report
:mod:`reports.mia_report`.

Scorers: ``--gguf FILE`` (llama.cpp in process: exact distributions), ``--embedded`` (the same with
the embedded model), or ``--endpoint URL --model M`` (an OpenAI-compatible server that echoes
prompt logprobs; min-k%++ is then approximated from the top-k, and the report says so). The
reference model takes the same three forms (``--reference-gguf``, ``--reference-endpoint`` with
``--reference-model``).
"""
from __future__ import annotations

import math
import os
import sys

from corpora.hygiene import visible
from extractor.errors import TrawlError

TOP_K = 20


def register(subparsers):
    p = subparsers.add_parser(
        "mia", help="membership inference: how well each scoring signal separates members from non-members",
        description=(
            "Score every text of a member set and a non-member set with the model and report, for each "
            "membership signal (perplexity, zlib ratio, lowercase ratio, sliding-window perplexity, min-k%, "
            "min-k%++, reference-model ratio), its ROC AUC and its TPR at 1% and 0.1% FPR with bootstrap "
            "95% intervals, and ROC curves on log-log axes (Carlini et al. 2022). Writes OUT/mia.json, "
            "OUT/report.md and OUT/report.html."))
    p.add_argument("--members", required=True, metavar="PATH",
                   help="member texts: a corpus folder, a .jsonl file (field --text-field) or a UTF-8 text file "
                        "(one text per paragraph)")
    p.add_argument("--nonmembers", required=True, metavar="PATH", help="non-member texts, in the same forms")
    p.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field holding the text (default text)")
    src = p.add_argument_group("scorer (one of)")
    src.add_argument("--gguf", metavar="FILE", help="score with llama.cpp in this process from a GGUF model file")
    src.add_argument("--embedded", action="store_true", help="score with the embedded model in process")
    src.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server that echoes prompt logprobs")
    src.add_argument("--model", metavar="NAME", help="the model name at --endpoint")
    src.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the endpoint's API key")
    ref = p.add_argument_group("reference model (optional: the reference-ratio signal)")
    ref.add_argument("--reference-gguf", metavar="FILE")
    ref.add_argument("--reference-endpoint", metavar="URL")
    ref.add_argument("--reference-model", metavar="NAME")
    p.add_argument("--max-texts", type=int, default=1000, metavar="N", help="at most N texts of each set (default 1000)")
    p.add_argument("--max-chars", type=int, default=2000, metavar="N",
                   help="score each text's first N characters (default 2000; keeps texts inside the context window)")
    p.add_argument("--k", type=float, default=0.2, metavar="F", help="min-k%% and min-k%%++ fraction (default 0.2)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap rounds (default 1000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--redact", action="store_true", help="mask personal data in the paths and notes shown")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-request timeout (HTTP scorers)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def load_texts(path: str, text_field: str, limit: int, max_chars: int) -> list[str]:
    from extractor.attacks.corpus_source import DocSource

    src = DocSource(path, text_field)
    out = []
    for i in range(len(src)):
        if len(out) >= limit:
            break
        t = src.get(i).text[:max_chars]
        if t.strip():
            out.append(t)
    if not out:
        raise TrawlError(f"{path}: no non-empty text")
    return out


def open_scorer(gguf=None, embedded=False, endpoint=None, model=None, api_key_env=None, timeout=120.0,
                what="scorer"):
    """A scorer from the CLI's forms (see the module docstring), or None when none is named."""
    named = [x for x in (gguf, embedded or None, endpoint) if x]
    if len(named) > 1:
        raise TrawlError(f"{what}: give one of a GGUF file, the embedded model or an endpoint")
    if gguf or embedded:
        from extractor.backends.llama_inprocess import LlamaScorer
        if embedded:
            from extractor.serving.embedded import default_model_path
            gguf = default_model_path()
        return LlamaScorer(gguf)
    if endpoint:
        if not model:
            raise TrawlError(f"{what}: --endpoint needs the model's name")
        from extractor.backends import make_backend
        be = make_backend("openai", endpoint=endpoint, model=model, api_key_env=api_key_env, timeout=timeout)
        caps = be.probe()
        if not caps.score:
            raise TrawlError(f"{endpoint}: the server cannot score text (no echoed prompt logprobs)")
        return be
    return None


def score_texts(scorer, texts: list[str], *, stats: bool, top_k: int, timeout: float | None = None):
    """One TextScore per text (one at a time: a failure names the text)."""
    out = []
    for i, t in enumerate(texts):
        try:
            out.extend(scorer.score([t], top_k=top_k, vocab_stats=stats, timeout=timeout))
        except TrawlError as exc:
            raise TrawlError(f"text {i}: {exc}") from None
    return out


def text_signals(scorer, ref, texts: list[str], k: float, timeout=None) -> tuple[list[dict], list[str]]:
    from reports.ranking import signals

    full = bool(getattr(scorer.capabilities, "full_distribution", False))
    main = score_texts(scorer, texts, stats=True, top_k=0 if full else TOP_K, timeout=timeout)
    lower = score_texts(scorer, [t.lower() for t in texts], stats=False, top_k=0, timeout=timeout)
    refs = score_texts(ref, texts, stats=False, top_k=0, timeout=timeout) if ref is not None else None
    notes = sorted({s.note for s in main if s.note})
    out = []
    for i, (t, s, lo) in enumerate(zip(texts, main, lower)):
        out.append(signals(t, s.logprobs, mean=s.vocab_mean, var=s.vocab_var, lower_lps=lo.logprobs,
                           ref_lps=refs[i].logprobs if refs else None, k=k))
    return out, notes


def run(args) -> int:
    from reports.mia_report import mia_figures, write_mia_report

    if args.max_texts < 1 or args.max_chars < 1 or args.bootstrap < 0 or not 0 < args.k <= 1:
        raise TrawlError("--max-texts and --max-chars must be >= 1, --bootstrap >= 0, 0 < --k <= 1")
    members = load_texts(args.members, args.text_field, args.max_texts, args.max_chars)
    nonmembers = load_texts(args.nonmembers, args.text_field, args.max_texts, args.max_chars)
    scorer = open_scorer(args.gguf, args.embedded, args.endpoint, args.model, args.api_key_env, args.timeout)
    if scorer is None:
        raise TrawlError("trawl mia needs a scorer: --gguf FILE, --embedded or --endpoint URL --model NAME")
    ref = open_scorer(args.reference_gguf, False, args.reference_endpoint, args.reference_model, args.api_key_env,
                      args.timeout, what="reference")
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    try:
        say(f"trawl mia: scoring {len(members)} members and {len(nonmembers)} non-members")
        ms, n1 = text_signals(scorer, ref, members, args.k, args.timeout)
        ns, n2 = text_signals(scorer, ref, nonmembers, args.k, args.timeout)
    finally:
        for s in (scorer, ref):
            if s is not None and hasattr(s, "close"):
                s.close()
    describe = lambda s: str(s.describe()) if s is not None and hasattr(s, "describe") else None  # noqa: E731
    notes = sorted(set(n1) | set(n2))
    if not getattr(scorer.capabilities, "full_distribution", False):
        notes.append("min-k%++ uses the vocabulary mean and variance estimated from the top-"
                     f"{TOP_K} log-probabilities (an approximation)")
    info = {"members_path": os.path.abspath(args.members), "nonmembers_path": os.path.abspath(args.nonmembers),
            "scorer": describe(scorer), "reference": describe(ref), "k": args.k, "max_chars": args.max_chars,
            "notes": notes}
    fig = mia_figures(ms, ns, rounds=args.bootstrap, seed=args.seed, info=info)
    paths = write_mia_report(fig, args.out, redact=args.redact)
    if not args.quiet:
        for name, m in fig["methods"].items():
            a = m.get("auc")
            ci = m.get("auc_ci")
            shown = "n/a" if a is None or not math.isfinite(a) else (
                f"{a:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            print(f"  {name:16s} AUC {shown}")
        print(f"  html: {visible(paths['html'])}\n  md:   {visible(paths['md'])}\n  json: {visible(paths['json'])}")
    return 0
