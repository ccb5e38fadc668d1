"""``trawl demo``: register the subcommand and print the headline figures."""
from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="run the whole audit end to end on the embedded model (offline, a few minutes)",
        description=(
            "Build a reference corpus from text already on this machine (Python standard library, "
            "license texts), index it with a suffix array, start the embedded Gemma-3-270m model on "
            "the local llama.cpp server, run a discoverable-memorization pass and the divergence "
            "attack for a few minutes, match every verbatim span, and write an HTML/Markdown/JSON "
            "report whose path is printed. Needs no network. Costs are priced at $0.10 per hour of "
            "wall time (about what a small 2-core cloud machine costs), so the per-dollar figures "
            "are concrete; audit a real deployment with `trawl sample` or `trawl run` and its own prices."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="trawl-out/demo",
                   help="output folder (corpus/, index/, run/, run/report/); a folder the demo did not "
                        "make is never overwritten")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="wall-time budget of the attacks (requests in flight at the deadline are still "
                        "finished, which can add up to a minute on a loaded machine)")
    p.add_argument("--corpus-mb", type=float, default=32.0, help="size of the reference corpus in MiB")
    p.add_argument("--min-tokens", type=int, default=10,
                   help="shortest verbatim run to match, in model tokens (the report's 50-token figures "
                        "come from the same matches)")
    p.add_argument("--resume", action="store_true", help="continue the previous demo run instead of starting afresh")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    from extractor.campaigns.demo import run_demo

    res = run_demo(
        args.out,
        minutes=args.minutes,
        corpus_mb=args.corpus_mb,
        min_tokens=args.min_tokens,
        resume=args.resume,
        quiet=args.quiet,
    )
    print(summary_text(res.metrics))
    print(f"report: {res.report_html}")
    print(f"        {res.report_md}")
    print(f"        {res.report_json}")
    return 0


def summary_text(m: dict) -> str:
    t = m["metrics"]
    W = m["parameters"]["window_tokens"]
    lines = [
        f"generations: {t['generations']:,}   generated tokens: {t['generated_tokens']:,}",
        f"memorized ({W}-token windows, Nasr et al. 2023): {t['memorized_generations']:,} generations, "
        f"{t['memorized_token_fraction']:.4%} of tokens, {t['unique_memorized_windows']:,} unique windows",
    ]
    if "nontrivial_memorized_generations" in t:   # recitation + recollection (Prashanth et al. 2024)
        lines.append(f"non-trivial (reconstruction and low-information spans left out): "
                     f"{t['nontrivial_memorized_generations']:,} generations, "
                     f"{t['nontrivial_memorized_token_fraction']:.4%} of tokens, "
                     f"{t['nontrivial_unique_memorized_windows']:,} unique windows")
    counts = []
    for T in (10, 20, 30, 40, 50):
        v = t.get(f"spans_ge_{T}")
        counts.append(f">={T}: {'n/a' if v is None else f'{v:,}'}")
    lines.append("verbatim runs (tokens): " + "  ".join(counts))
    longest = m.get("longest_run") or None
    if longest:
        src = longest.get("source") or f"document {longest.get('doc_id')}"
        kind = (m.get("taxonomy") or {}).get("longest_run")
        lines.append(f"longest verbatim run: {longest['tokens']} tokens ({longest['bytes']} bytes), "
                     f"document {longest.get('doc_id')} ({src}): {_preview(longest.get('text') or '')}"
                     + (f" [{kind}]" if kind else ""))
    return "\n".join(lines)


def _preview(text: str, limit: int = 80) -> str:
    """One line of untrusted model output, safe for a terminal (no control characters)."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    flat = " ".join(flat.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "\u2026")
