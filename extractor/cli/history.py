"""``trawl history LEDGER``: the ledger's trend report; exit 3 on a memorization regression.

Registered by :mod:`extractor.cli` through :func:`register`. Configuration
reference: README.md, "Configuration reference".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corpora.hygiene import number_problem, visible
from extractor.errors import TrawlError

HISTORY_EPILOG = """\
Rule: for each series (suite, model, attack), versions in order, the newest
version regresses when metric(new) > metric(prev) * (1 + tolerance) + epsilon.
exit codes: 0 no regression; 3 regression; 2 error.
"""


def register(subparsers) -> None:
    h = subparsers.add_parser(
        "history", help="trend report of the ledger; exit 3 on a memorization regression",
        description="Render the ledger's trend report (HTML with inline SVG plots) and flag a regression: "
                    "memorization up beyond a tolerance against the previous version.",
        epilog=HISTORY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("source", metavar="LEDGER",
                   help="ledger.parquet, a folder holding one, a sweep .toml (its ledger, [history] settings "
                        "and version order) or a campaign .toml (its ledger)")
    h.add_argument("--out", metavar="HTML", help="trend report path (default: history.html next to the ledger)")
    h.add_argument("--metric", default=None, help="ledger column to compare (default memorized_token_fraction)")
    h.add_argument("--tolerance", type=float, default=None, metavar="T", help="relative tolerance (default 0.10)")
    h.add_argument("--epsilon", type=float, default=None, metavar="E", help="absolute tolerance (default 0)")
    h.add_argument("--versions", metavar="V1,V2,...", help="version order (default: sweep order, else first date)")
    h.add_argument("--all-pairs", action="store_true", help="any regressed version pair fails, not only the newest")
    h.add_argument("--json", action="store_true", help="print the comparisons as JSON on stdout")
    h.set_defaults(func=cmd_history)


def cmd_history(args) -> int:
    from extractor.campaigns.config import load_toml
    from extractor.campaigns.ledger import history_report
    from reports.trend import DEFAULT_EPSILON, DEFAULT_METRIC, DEFAULT_TOLERANCE

    from reports.trend import METRICS

    # the flags first, before any file is read: a nan tolerance would compare false and pass every version
    for flag, v in (("--tolerance", args.tolerance), ("--epsilon", args.epsilon)):
        problem = number_problem(flag, v, minimum=0)
        if problem:
            raise TrawlError(problem)
    if args.metric is not None and args.metric not in METRICS:
        raise TrawlError(f"unknown history metric {visible(repr(args.metric))} in --metric (known: {', '.join(METRICS)})")
    src = Path(args.source)
    order = None
    metric, tol, eps, all_pairs = DEFAULT_METRIC, DEFAULT_TOLERANCE, DEFAULT_EPSILON, args.all_pairs
    if src.suffix == ".toml" and "targets" not in load_toml(src):
        from extractor.campaigns.config import load_campaign

        ledger = Path(load_campaign(src).config["history"]["ledger"])   # a campaign file: its ledger
        default_out = ledger.with_name("history.html")
    elif src.suffix == ".toml":
        from extractor.campaigns.sweep import load_sweep

        sw = load_sweep(src)
        h = sw.history
        ledger, order = Path(h["ledger"]), sw.version_order
        metric, tol, eps, all_pairs = h["metric"], h["tolerance"], h["epsilon"], h["all_pairs"] or all_pairs
        default_out = Path(h["report"])
    else:
        ledger = src / "ledger.parquet" if src.is_dir() else src
        default_out = ledger.with_name("history.html")
    if args.versions:
        order = [v.strip() for v in args.versions.split(",") if v.strip()]
    metric = args.metric or metric
    tol = args.tolerance if args.tolerance is not None else tol
    eps = args.epsilon if args.epsilon is not None else eps
    if not ledger.exists():
        raise TrawlError(f"{ledger}: no ledger here (a finished campaign writes one)")
    res = history_report(ledger, out_html=Path(args.out) if args.out else default_out, metric=metric,
                         tolerance=tol, epsilon=eps, version_order=order, all_pairs=all_pairs)
    if args.json:
        from extractor.campaigns.ledger import comparisons_json

        print(comparisons_json(res))
    else:
        for c in res.comparisons:
            print(("REGRESSION " if c in res.flagged else "") + visible(c.line()))   # names from the ledger
        print(f"history: {res.html}")
    if res.flagged:
        print(f"trawl: {len(res.flagged)} regression(s) in {metric} (tolerance {tol:g}, epsilon {eps:g})",
              file=sys.stderr)
    return res.exit_code
