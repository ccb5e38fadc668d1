"""CLI: ``trawl run CAMPAIGN.toml``, ``trawl sweep SWEEP.toml``, ``trawl history LEDGER``.

Registered by :mod:`extractor.cli` through :func:`register`. Configuration
reference: README.md, "Configuration reference".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from extractor.errors import TrawlError

RUN_EPILOG = """\
A campaign folder holds campaign.toml (frozen copy), campaign.json (status), run/
(generations, matches.parquet) and report/. Running the same command again
resumes an unfinished campaign where it stopped and does nothing for a finished
one (--rerun starts it afresh). The report's path is printed last.
exit codes: 0 finished; 3 a report.fail_if gate holds; 2 error (resume by running again).
"""

SWEEP_EPILOG = """\
Safe to call from cron or a CI scheduler: a lock in the sweep folder makes an
overlapping call exit 75 at once, and a finished campaign is never re-run
(unless --rerun). Example crontab line (no flock(1) needed):
  17 2 * * *  cd /srv/audits && trawl sweep nightly.toml --no-progress >> sweep.log 2>&1
exit codes: 0 ok; 3 regression (or gate); 4 a campaign failed; 75 another sweep
is running (nothing done); 2 bad configuration.
"""

HISTORY_EPILOG = """\
Rule: for each series (suite, model, attack), versions in order, the newest
version regresses when metric(new) > metric(prev) * (1 + tolerance) + epsilon.
exit codes: 0 no regression; 3 regression; 2 error.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run one audit campaign described by a TOML file (resumable)",
        description="Run a campaign: sample the target with the attacks, match against the index, write the "
                    "report, record the metrics in the ledger. See the README's configuration reference for every key.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CAMPAIGN.toml")
    p.add_argument("--out", metavar="DIR", help="campaign folder (overrides campaign.out)")
    p.add_argument("--rerun", action="store_true", help="start afresh even if the campaign finished "
                                                        "(the old folder is moved aside)")
    p.add_argument("--check", action="store_true", help="validate the file and exit")
    # campaigns always resume; accepted because `trawl`'s Ctrl-C message suggests it for every command
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    p.set_defaults(func=cmd_run)

    s = subparsers.add_parser(
        "sweep", help="run many campaigns (models x versions x attacks); cron-safe",
        description="Expand SWEEP.toml into campaigns, run the ones not finished yet under the sweep folder's "
                    "lock, then compare versions in the ledger and write the trend report.",
        epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", metavar="SWEEP.toml")
    s.add_argument("--rerun", action="store_true", help="re-run the selected campaigns even if they finished")
    s.add_argument("--only", action="append", metavar="GLOB", default=[],
                   help="run only campaigns whose name matches (repeatable), e.g. 'gemma-v3-*'")
    s.add_argument("--list", action="store_true", help="list the campaigns and their status, run nothing")
    s.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # sweeps always resume
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_sweep)

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


def cmd_run(args) -> int:
    from extractor.campaign import load_campaign, run_campaign

    c = load_campaign(args.config, out=args.out)
    if args.check:
        print(f"{args.config}: OK (campaign {c.name}, folder {c.out})")
        return 0
    r = run_campaign(c, rerun=args.rerun, progress=not args.no_progress)
    print(f"trawl: {r.line()}", file=sys.stderr)
    for g in r.gates_crossed:
        print(f"trawl: release gate crossed: {g}", file=sys.stderr)
    if args.json:
        print(json.dumps({"name": r.name, "folder": r.out, "status": r.status, "skipped": r.skipped,
                          "steps_run": r.steps_run, "report": r.report_html, "gates_crossed": r.gates_crossed,
                          "metrics": r.metrics}, indent=1))
    else:
        print(f"report: {r.report_html}")
    return r.exit_code


def cmd_sweep(args) -> int:
    from extractor.campaign import is_running, read_status
    from extractor.sweep import load_sweep, run_sweep

    sw = load_sweep(args.config)
    if args.list:
        for c in sw.campaigns:
            st = read_status(c.out) if (c.out / "campaign.json").exists() else None
            state = st["status"] if st else "new"
            if state == "running" and not is_running(c.out):
                state = "interrupted"      # its process died; the next sweep resumes it
            print(f"{c.name}\t{state}\t{c.out}")
        return 0
    res = run_sweep(sw, rerun=args.rerun, only=args.only, progress=not args.no_progress)
    done = sum(1 for r in res.results if r.status == "finished" and not r.skipped)
    skipped = sum(1 for r in res.results if r.skipped)
    print(f"trawl: sweep {sw.name}: {done} campaign(s) run, {skipped} already finished, {len(res.failed)} failed, "
          f"{len(res.regressions)} regression(s)", file=sys.stderr)
    if res.history_html:
        print(f"history: {res.history_html}")
    return res.exit_code


def cmd_history(args) -> int:
    from extractor.campaign import load_toml
    from extractor.history import DEFAULT_EPSILON, DEFAULT_METRIC, DEFAULT_TOLERANCE, history_report

    src = Path(args.source)
    order = None
    metric, tol, eps, all_pairs = DEFAULT_METRIC, DEFAULT_TOLERANCE, DEFAULT_EPSILON, args.all_pairs
    if src.suffix == ".toml" and "targets" not in load_toml(src):
        from extractor.campaign import load_campaign

        ledger = Path(load_campaign(src).config["history"]["ledger"])   # a campaign file: its ledger
        default_out = ledger.with_name("history.html")
    elif src.suffix == ".toml":
        from extractor.sweep import load_sweep

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
        from extractor.history import comparisons_json

        print(comparisons_json(res))
    else:
        for c in res.comparisons:
            print(("REGRESSION " if c in res.flagged else "") + c.line())
        print(f"history: {res.html}")
    if res.flagged:
        print(f"trawl: {len(res.flagged)} regression(s) in {metric} (tolerance {tol:g}, epsilon {eps:g})",
              file=sys.stderr)
    return res.exit_code
