"""``trawl run CAMPAIGN.toml``: run one audit campaign (resumable).

Registered by :mod:`extractor.cli` through :func:`register`. Configuration
reference: README.md, "Configuration reference".
"""
from __future__ import annotations

import argparse
import json
import sys

from corpora.hygiene import visible

RUN_EPILOG = """\
A campaign folder holds campaign.toml (frozen copy), campaign.json (status), run/
(generations, matches.parquet) and report/. Running the same command again
resumes an unfinished campaign where it stopped and does nothing for a finished
one (--rerun starts it afresh). The report's path is printed last.
exit codes: 0 finished; 3 a report.fail_if gate holds; 2 error (resume by running again).
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


def cmd_run(args) -> int:
    from extractor.campaigns.config import load_campaign
    from extractor.campaigns.pipeline import run_campaign

    c = load_campaign(args.config, out=args.out)
    if args.check:
        print(f"{args.config}: OK (campaign {c.name}, folder {c.out})")
        return 0
    r = run_campaign(c, rerun=args.rerun, progress=not args.no_progress)
    print(f"trawl: {visible(r.line())}", file=sys.stderr)     # may quote a server's error text
    for g in r.gates_crossed:
        print(f"trawl: release gate crossed: {visible(g)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"name": r.name, "folder": r.out, "status": r.status, "skipped": r.skipped,
                          "steps_run": r.steps_run, "report": r.report_html, "gates_crossed": r.gates_crossed,
                          "metrics": r.metrics}, indent=1))
    else:
        print(f"report: {r.report_html}")
    return r.exit_code
