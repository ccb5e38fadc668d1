"""Sweeps: many campaigns (targets = models x versions, times attacks) run on a schedule.

``trawl sweep sweep.toml`` expands the file into campaigns (:func:`load_sweep`), takes
the sweep folder's lock, runs every campaign that has not finished (each resumable,
see :mod:`extractor.campaigns.pipeline`), then compares versions in the ledger
(:mod:`extractor.campaigns.ledger`, :mod:`reports.trend`) and writes the trend report.

Folder::

    OUT/
      sweep.lock            fcntl.flock'ed while a sweep runs (holder's pid and start time inside)
      sweep.json            the last sweep's outcome per campaign (atomic)
      ledger.parquet        history of every finished campaign (unless [history] ledger says otherwise)
      history.html          trend report
      campaigns/<model>-<version>-<attack label>/   one campaign folder each

Calling it again (from cron, a CI scheduler) re-runs nothing that finished; an
unfinished or failed campaign resumes where it stopped. ``rerun=True`` starts the
selected campaigns afresh (their old folders are moved aside).

Exit codes: 0 all campaigns finished and no regression or gate; 3 a regression (or
a campaign's release gate) was found; 4 a campaign failed (the others still ran,
unless ``continue_on_error = false``); 75 (EX_TEMPFAIL) another sweep holds the
lock, nothing was done; 2 a bad configuration.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from corpora.hygiene import visible
from corpora.storage import FolderLock, FolderLocked, holder_text, utcnow, write_text_atomic
from extractor.campaigns.config import (SCHEMA, Campaign, Key, check_attacks, check_index, check_table,
                                        finish_target, load_toml, validate_campaign)
from extractor.campaigns.ledger import history_report
from extractor.campaigns.pipeline import CampaignResult, run_campaign
from extractor.errors import TrawlError, is_user_error
from reports.trend import DEFAULT_EPSILON, DEFAULT_METRIC, DEFAULT_TOLERANCE, METRICS

LOCKED_EXIT_CODE = 75      # EX_TEMPFAIL: try again later
FAILED_EXIT_CODE = 4
REGRESSION_EXIT_CODE = 3

SWEEP_SCHEMA: dict[str, dict[str, Key]] = {
    "sweep": {
        "name": Key("str", None, "sweep name; default: the file's name without .toml"),
        "out": Key("path", None, "sweep folder; default: trawl-out/<name> next to the file"),
        "split_attacks": Key("bool", True, "one campaign per (target, attack); false: one campaign per target "
                                           "running every attack"),
        "continue_on_error": Key("bool", True, "run the other campaigns when one fails"),
    },
    "history": {
        "ledger": Key("path", None, "ledger Parquet file; default: OUT/ledger.parquet"),
        "report": Key("path", None, "trend report HTML; default: OUT/history.html"),
        "check": Key("bool", True, "compare versions after the sweep; a regression exits 3"),
        "metric": Key("str", DEFAULT_METRIC, "ledger column the regression rule compares", choices=tuple(METRICS)),
        "tolerance": Key("float", DEFAULT_TOLERANCE, "relative tolerance of the rule", minimum=0),
        "epsilon": Key("float", DEFAULT_EPSILON, "absolute tolerance of the rule", minimum=0),
        "all_pairs": Key("bool", False, "every version pair decides the exit code, not only the newest"),
    },
}
DEFAULTS_SECTIONS = {
    "campaign": {"seed": SCHEMA["campaign"]["seed"]},
    "target": {k: v for k, v in SCHEMA["target"].items() if k != "version"},
    "budget": SCHEMA["budget"],
    "pricing": SCHEMA["pricing"],
    "index": SCHEMA["index"],
    "report": SCHEMA["report"],
}


class SweepLocked(TrawlError, FolderLocked):
    exit_code = LOCKED_EXIT_CODE


@dataclass
class Sweep:
    name: str
    out: Path
    campaigns: list[Campaign]
    history: dict
    version_order: dict[str, list[str]]
    continue_on_error: bool = True
    source: str = ""


def _slug(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+=-]+", "_", s).strip("._")
    return s or "_"


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read a sweep file and expand it into campaigns (each validated like a campaign file; every
    index checked once); raises TrawlError naming the key and the file."""
    p = Path(path)
    file = str(path)
    base = p.resolve().parent
    data = load_toml(p)
    known = ["sweep", "history", "defaults", "attacks", "targets", "executor"]
    for k in data:
        if k not in known:
            raise TrawlError(f"unknown key '{k}' in {file} (known: {', '.join(known)})")
    sw = check_table(file, "sweep", data.get("sweep", {}), SWEEP_SCHEMA["sweep"], base)
    hist = check_table(file, "history", data.get("history", {}), SWEEP_SCHEMA["history"], base)
    name = sw["name"] or p.stem
    if not name or "/" in name:
        raise TrawlError(f"sweep.name {name!r} must be a non-empty name without '/' (in {file})")
    out = Path(sw["out"] or (base / "trawl-out" / name)).resolve()
    hist["ledger"] = hist["ledger"] or str(out / "ledger.parquet")
    hist["report"] = hist["report"] or str(out / "history.html")
    defaults = _defaults(file, data.get("defaults", {}), base)
    if "attacks" not in data:
        raise TrawlError(f"missing [[attacks]] in {file}: give at least one attack")
    attacks = check_attacks(file, "attacks", data["attacks"], base)
    targets, order = _targets(file, data, defaults, base)
    groups = [[a] for a in attacks] if sw["split_attacks"] else [attacks]
    if "executor" in data:   # where every campaign's match step runs (checked by each campaign's validation)
        defaults = {**defaults, "executor": data["executor"]}
    campaigns = _campaigns(file, base, name, out, hist, defaults, targets, groups, order, sw["split_attacks"])
    for ipath in dict.fromkeys(c.config["index"]["path"] for c in campaigns):
        check_index(file, ipath)
    return Sweep(name, out, campaigns, hist, order, sw["continue_on_error"], file)


def _defaults(file: str, defaults_raw, base: Path) -> dict:
    """The checked ``[defaults.*]`` tables (only the keys given); ``defaults.index.path`` is required."""
    if not isinstance(defaults_raw, dict):
        raise TrawlError(f"defaults must be a table, got {type(defaults_raw).__name__} (in {file})")
    defaults: dict = {}
    for k, v in defaults_raw.items():
        if k not in DEFAULTS_SECTIONS:
            raise TrawlError(f"unknown key 'defaults.{k}' in {file} (known: {', '.join(DEFAULTS_SECTIONS)})")
        defaults[k] = check_table(file, f"defaults.{k}", v, DEFAULTS_SECTIONS[k], base, fill=False, require=False)
    if "index" not in defaults or "path" not in defaults["index"]:
        raise TrawlError(f"missing key 'defaults.index.path' in {file} ({SCHEMA['index']['path'].help})")
    return defaults


def _targets(file: str, data: dict, defaults: dict, base: Path) -> tuple[list, dict[str, list[str]]]:
    """``[(given, filled)]`` per ``[[targets]]`` entry (over ``[defaults.target]``), and each model's
    version order; a (model, version) listed twice is an error."""
    if "targets" not in data:
        raise TrawlError(f"missing [[targets]] in {file}: give at least one model version to audit")
    traw = data["targets"]
    if not isinstance(traw, list) or not traw or not all(isinstance(t, dict) for t in traw):
        raise TrawlError(f"targets must be a non-empty array of tables ([[targets]]) (in {file})")
    targets = []
    seen = set()
    order: dict[str, list[str]] = {}
    for i, t in enumerate(traw):
        where = f"targets[{i}]"
        given = check_table(file, where, t, SCHEMA["target"], base, fill=False, require=False)
        merged = {**defaults.get("target", {}), **given}
        filled = check_table(file, where, merged, SCHEMA["target"], base, require=False)
        filled = finish_target(file, where, filled, base)
        key = (filled["model"], filled["version"])
        if key in seen:
            raise TrawlError(f"{where}: model {key[0]!r} version {key[1]!r} is listed twice (in {file})")
        seen.add(key)
        order.setdefault(filled["model"], []).append(filled["version"])
        targets.append((given, filled))
    return targets, order


def _campaigns(file: str, base: Path, name: str, out: Path, hist: dict, defaults: dict, targets: list,
               groups: list, order: dict, split: bool) -> list[Campaign]:
    """One campaign per (target, attack group), named ``<model>-<version>[-<label>]`` under ``OUT/campaigns``."""
    campaigns = []
    names = set()
    for given, t in targets:
        for group in groups:
            label = group[0]["label"] if split else ""
            cname = "-".join(_slug(x) for x in (t["model"], t["version"], label) if x)
            if cname in names:
                raise TrawlError(f"two campaigns of {file} would share the folder name {cname!r}; "
                                 f"make the models, versions or attack labels differ")
            names.add(cname)
            cdata = {k: dict(v) for k, v in defaults.items() if k != "target"}
            cdata.setdefault("campaign", {})
            cdata["campaign"].update({"name": cname, "out": str(out / "campaigns" / cname),
                                      "suite": f"{name}/{label}" if label else name})
            cdata["target"] = {k: v for k, v in t.items() if v is not None}
            cdata["attacks"] = [{"name": a["name"], "label": a["label"], **a["params"]} for a in group]
            cdata["history"] = {"ledger": hist["ledger"]}
            cfg = validate_campaign(cdata, file=file, base_dir=base, default_name=cname,
                                    check_index_files=False)
            campaigns.append(Campaign(cfg, source=file, version_order=order[t["model"]]))
    return campaigns


# ============================================================================ the lock

class SweepLock(FolderLock):
    """The sweep's :class:`corpora.storage.FolderLock` on ``OUT/sweep.lock``, held for the whole
    sweep; a second sweep on the same folder gets :class:`SweepLocked` (exit 75)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "sweep.lock"
        super().__init__(self.path, busy=lambda holder: SweepLocked(
            f"another trawl sweep is running in {self.path.parent}{holder_text(holder)}; nothing done, "
            f"exiting with {LOCKED_EXIT_CODE} (try again later)"))


# ============================================================================ running

@dataclass
class SweepResult:
    results: list[CampaignResult] = field(default_factory=list)
    regressions: list = field(default_factory=list)
    history_html: str | None = None

    @property
    def failed(self) -> list[CampaignResult]:
        return [r for r in self.results if r.status != "finished"]

    @property
    def exit_code(self) -> int:
        if self.failed:
            return FAILED_EXIT_CODE
        if self.regressions or any(r.gates_crossed for r in self.results):
            return REGRESSION_EXIT_CODE
        return 0


def run_sweep(sw: Sweep, *, rerun: bool = False, only: list[str] | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, echo: Callable[[str], None] | None = None) -> SweepResult:
    """Run every selected campaign of ``sw`` under the sweep lock; see the module docstring."""
    # messages carry servers' and files' text: control characters shown as escapes, never raw
    log = log or (lambda msg: print(f"trawl: {visible(msg)}", file=sys.stderr))
    echo = echo or (lambda line: print(visible(line), flush=True))
    selected = [c for c in sw.campaigns if not only or any(fnmatch.fnmatchcase(c.name, pat) for pat in only)]
    if only and not selected:
        raise TrawlError(f"--only {' '.join(only)} selects none of the campaigns: "
                         f"{', '.join(c.name for c in sw.campaigns)}")
    res = SweepResult()
    with SweepLock(sw.out):
        started = utcnow()
        for c in selected:
            r = _run_one(c, rerun=rerun, progress=progress, log=log)
            res.results.append(r)
            echo(r.line())
            if r.status == "failed" and not sw.continue_on_error:   # run_campaign raised
                break
        _check_history(sw, res, echo)
        _write_sweep_json(sw, res, started)
    return res


def _run_one(c: Campaign, *, rerun: bool, progress: bool, log) -> CampaignResult:
    """One campaign of the sweep; its failure becomes a "failed" result (a bug's traceback is printed)."""
    try:
        return run_campaign(c, rerun=rerun, progress=progress, log=log)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one campaign's failure must not stop the others
        if not is_user_error(exc) and not isinstance(exc, OSError):
            traceback.print_exc()   # a bug: show where, then go on with the other campaigns
        log(f"campaign {c.name} failed: {exc}")
        return CampaignResult(c.name, str(c.out), "failed", error=f"{exc}" if is_user_error(exc)
                              else f"{type(exc).__name__}: {exc}")


def _check_history(sw: Sweep, res: SweepResult, echo) -> None:
    """Write the trend report of the sweep's ledger; with ``check``, the regressions of this sweep's
    models and suites go into ``res``."""
    h = sw.history
    if not os.path.exists(h["ledger"]):
        return
    hr = history_report(h["ledger"], out_html=h["report"], metric=h["metric"], tolerance=h["tolerance"],
                        epsilon=h["epsilon"], version_order=sw.version_order, all_pairs=h["all_pairs"])
    res.history_html = hr.html
    if h["check"]:
        models = {c.config["target"]["model"] for c in sw.campaigns}
        suites = {c.config["campaign"]["suite"] for c in sw.campaigns}
        res.regressions = [c for c in hr.flagged if c.model in models and c.suite in suites]
        for c in res.regressions:
            echo(f"REGRESSION {c.line()}")


def _write_sweep_json(sw: Sweep, res: SweepResult, started: str) -> None:
    write_text_atomic(sw.out / "sweep.json", json.dumps({
        "format": "trawl-sweep", "name": sw.name, "source": str(Path(sw.source).resolve()),
        "started_at": started, "ended_at": utcnow(), "exit_code": res.exit_code,
        "campaigns": [{"name": r.name, "status": r.status, "skipped": r.skipped, "steps_run": r.steps_run,
                       "report": r.report_html, "gates_crossed": r.gates_crossed, "error": r.error,
                       "folder": r.out} for r in res.results],
        "regressions": [c.to_dict() for c in res.regressions], "history": res.history_html,
    }, indent=1, ensure_ascii=False) + "\n")
