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

Scoring goes through the driver of ``trawl rank`` (:func:`extractor.scoring.score_texts`): batched
requests, a journal and ``OUT/scores.parquet`` (one row per distinct text, keyed by its set and the
SHA-256 of the text scored), so a killed or budget-stopped ``trawl mia`` rerun with the same arguments
(or ``--resume``) scores only what is missing and ends with the figures of an uninterrupted run; the
budget and price flags are rank's (:func:`extractor.cli.rank.add_budget_args`). A run that stops
early writes the figures of the texts scored so far and says so in ``mia.json`` (``scoring``) and
the report.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys

from corpora.hygiene import visible
from extractor.cli.rank import add_batch_args, add_budget_args, score_settings
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
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="output folder (also holds scores.parquet: a rerun continues from it)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-request timeout (HTTP scorers)")
    g = p.add_argument_group("scoring calls (as trawl rank)")
    add_batch_args(g)
    add_budget_args(p)
    o = p.add_argument_group("resuming")
    o.add_argument("--resume", action="store_true",
                   help="continue the scoring in OUT (a rerun with the same arguments does this anyway); an error "
                        "when OUT holds none")
    o.add_argument("--restart", action="store_true", help="discard OUT/scores.parquet and score every text again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal)")
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
                what="scorer", max_retries=6):
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
        be = make_backend("openai", endpoint=endpoint, model=model, api_key_env=api_key_env, timeout=timeout,
                          max_retries=max_retries)
        caps = be.probe()
        if not caps.score:
            raise TrawlError(f"{endpoint}: the server cannot score text (no echoed prompt logprobs)")
        return be
    return None


SETS = ("members", "nonmembers")


def text_key(which: str, text: str) -> str:
    """A text's row key in OUT/scores.parquet: its set and the SHA-256 of the text scored."""
    return f"{which}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def read_signals(path: str, keys: dict[str, list[str]]) -> tuple[dict, dict]:
    """Each set's signals by key from a scores file (None: not scored yet; the columns of
    reports.ranking), and the file's metadata."""
    from reports.errors import ReportError
    from reports.ranking import SIGNAL_COLUMNS, read_scores

    try:
        cols, meta = read_scores(path)
    except ReportError as exc:
        raise TrawlError(f"{exc}; rerun with --restart to score again") from None
    at = {k: i for i, k in enumerate(cols["request_id"])}
    return {w: [None if k not in at else {c: cols[c][at[k]] for c in SIGNAL_COLUMNS} for k in ks]
            for w, ks in keys.items()}, meta


def _meta_number(meta: dict, key: str, kind):
    try:
        v = kind(meta.get(key))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run(args) -> int:
    from extractor.scoring import JOURNAL_NAME, ScoringStopped, score_texts
    from reports.mia_report import mia_figures, write_mia_report
    from reports.ranking import SCORES_NAME

    if args.max_texts < 1 or args.max_chars < 1 or args.bootstrap < 0 or not 0 < args.k <= 1:
        raise TrawlError("--max-texts and --max-chars must be >= 1, --bootstrap >= 0, 0 < --k <= 1")
    if args.resume and args.restart:
        raise TrawlError("give --resume or --restart, not both")
    out = os.path.abspath(args.out)
    if args.resume and not any(os.path.exists(os.path.join(out, n)) for n in (SCORES_NAME, JOURNAL_NAME)):
        raise TrawlError(f"{out}: nothing to resume (no scores.parquet or scoring journal); drop --resume")
    st = score_settings(args, k=args.k, top_k=TOP_K)
    texts = {"members": load_texts(args.members, args.text_field, args.max_texts, args.max_chars),
             "nonmembers": load_texts(args.nonmembers, args.text_field, args.max_texts, args.max_chars)}
    keys = {w: [text_key(w, t) for t in texts[w]] for w in SETS}
    scorer = open_scorer(args.gguf, args.embedded, args.endpoint, args.model, args.api_key_env, args.timeout,
                         max_retries=args.max_retries)
    if scorer is None:
        raise TrawlError("trawl mia needs a scorer: --gguf FILE, --embedded or --endpoint URL --model NAME")
    ref = None
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    items = [{"request_id": k, "completion": t, "attack": w} for w in SETS for k, t in zip(keys[w], texts[w])]
    failed = None
    try:
        ref = open_scorer(args.reference_gguf, False, args.reference_endpoint, args.reference_model,
                          args.api_key_env, args.timeout, what="reference", max_retries=args.max_retries)
        if args.quiet:
            st.progress = False
        say(f"trawl mia: scoring {len(texts['members'])} members and {len(texts['nonmembers'])} non-members")
        try:
            summary = score_texts(out, items, scorer, reference=ref, settings=st, noun="texts")
            stopped, notes = summary.stopped, list(summary.notes)
        except ScoringStopped as exc:
            failed = str(exc)
            stopped, notes = f"failed: {failed}", exc.notes
    finally:
        for s in (scorer, ref):
            if s is not None and hasattr(s, "close"):
                s.close()
    sig, meta = read_signals(os.path.join(out, SCORES_NAME), keys)
    scored = {w: [s for s in sig[w] if s is not None] for w in SETS}
    complete = all(len(scored[w]) == len(texts[w]) for w in SETS)
    describe = lambda s: str(s.describe()) if s is not None and hasattr(s, "describe") else None  # noqa: E731
    info = {"members_path": os.path.abspath(args.members), "nonmembers_path": os.path.abspath(args.nonmembers),
            "scorer": describe(scorer), "reference": describe(ref), "k": args.k, "max_chars": args.max_chars,
            "notes": notes}
    scoring = {"complete": complete, "stopped": None if complete else (stopped or "incomplete"),
               "texts": {w: len(texts[w]) for w in SETS}, "scored": {w: len(scored[w]) for w in SETS},
               "scores_file": SCORES_NAME, "prompt_tokens": _meta_number(meta, "prompt_tokens", int),
               "cost_usd": _meta_number(meta, "cost_usd", float)}
    fig = mia_figures(scored["members"], scored["nonmembers"], rounds=args.bootstrap, seed=args.seed, info=info,
                      scoring=scoring)
    paths = write_mia_report(fig, out, redact=args.redact)
    if failed:
        raise TrawlError(f"{failed}; {out}: the report covers the {sum(map(len, scored.values()))} texts scored "
                         f"so far")
    if not complete:
        print(f"trawl: mia stopped early ({scoring['stopped']}): scored {len(scored['members'])} of "
              f"{len(texts['members'])} members and {len(scored['nonmembers'])} of {len(texts['nonmembers'])} "
              f"non-members; rerun with the same arguments to continue", file=sys.stderr)
    if not args.quiet:
        for name, m in fig["methods"].items():
            a = m.get("auc")
            ci = m.get("auc_ci")
            shown = "n/a" if a is None or not math.isfinite(a) else (
                f"{a:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            print(f"  {name:16s} AUC {shown}")
        print(f"  html: {visible(paths['html'])}\n  md:   {visible(paths['md'])}\n  json: {visible(paths['json'])}")
    return 0
