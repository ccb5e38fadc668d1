"""``trawl sweep SWEEP.toml``: run many campaigns (models x versions x attacks); cron-safe.

Registered by :mod:`extractor.cli` through :func:`register`. Configuration
reference: README.md, "Configuration reference".
"""
from __future__ import annotations

import argparse
import sys

SWEEP_EPILOG = """\
Safe to call from cron or a CI scheduler: a lock in the sweep folder makes an
overlapping call exit 75 at once, and a finished campaign is never re-run
(unless --rerun). Example crontab line (no flock(1) needed):
  17 2 * * *  cd /srv/audits && trawl sweep nightly.toml --no-progress >> sweep.log 2>&1
exit codes: 0 ok; 3 regression (or gate); 4 a campaign failed; 75 another sweep
is running (nothing done); 2 bad configuration.
"""


def register(subparsers) -> None:
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


def cmd_sweep(args) -> int:
    from extractor.campaigns.pipeline import is_running, read_status
    from extractor.campaigns.sweep import load_sweep, run_sweep

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
