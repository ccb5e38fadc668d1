"""The ledger of finished campaigns: its schema, its rows, reading and appending it.

Ledger (Parquet, zstd; :data:`LEDGER_SCHEMA`): every finished campaign appends one
row with attack ``"all"`` (the campaign's totals) and one row per attack. The key
is (suite, model, version, attack, date); ``campaign_uid`` identifies the campaign
folder that wrote a row, so a campaign that crashed after recording and is resumed
does not record twice. Appending is atomic: under an exclusive ``fcntl.flock`` on
``LEDGER.lock`` the file is read, the rows added, the whole written to a temporary
file, fsynced and renamed over the old one; a reader sees the old ledger or the
new one, never a torn file.

Versions (the file's ``format_version`` metadata, :data:`LEDGER_FORMAT_VERSION`): 1 had no
ranking figures; 2 adds :data:`reports.trend.RANKING_FIELDS` (``ranking_best_auc``,
``ranking_best_precision_at_10/100/1000``). A version-1 ledger is read with those columns null
(migrated in memory) and written back as version 2 by the next append; a ledger of a later or
unknown version is refused with one line (a newer trawl wrote it: upgrade). A file without the
metadata is read as the columns it has (the version-2 columns missing: version 1).

The regression rule and the HTML trend report are :mod:`reports.trend`'s (they take
the rows, not the file); :func:`history_report` joins the two for ``trawl history``
and sweeps.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from corpora.hygiene import visible
from corpora.storage import FolderLock, first_line, write_parquet_atomic, write_text_atomic
from extractor.errors import TrawlError
from reports import ranking, trend
from reports.errors import ReportError
from reports.trend import (DEFAULT_EPSILON, DEFAULT_METRIC, DEFAULT_TOLERANCE, METRIC_FIELDS,
                           RANKING_METRICS, REGRESSION_EXIT_CODE, Comparison)

LEDGER_FORMAT = "trawl-ledger"
LEDGER_FORMAT_VERSION = 2
ADDED_IN = {2: RANKING_METRICS}     # the columns each version added (null in the rows of an older ledger)

LEDGER_SCHEMA = pa.schema([
    ("campaign", pa.string()),
    ("campaign_uid", pa.string()),
    ("suite", pa.string()),
    ("model", pa.string()),
    ("version", pa.string()),
    ("attack", pa.string()),
    ("date", pa.string()),                     # UTC ISO 8601, e.g. 2026-11-26T10:00:00Z
    ("run_id", pa.string()),
    *METRIC_FIELDS,                            # the figures the regression rule may compare
    ("window_tokens", pa.int64()),
    ("report_path", pa.string()),
])
LEDGER_KEYS = ("campaign_uid", "model", "version", "attack", "date")   # never null in a ledger trawl wrote
NUMERIC = [f.name for f in LEDGER_SCHEMA if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]


# ============================================================================ rows

def ledger_rows(cfg: dict, metrics: dict, *, uid: str, report_path: str, date: str) -> list[dict]:
    """The ledger rows of a finished campaign (its resolved configuration and its report's metrics
    dict): ``"all"`` plus one per attack, labelled with the attack's label when it has one."""
    labels: dict[str, list[str]] = {}
    for a in cfg["attacks"]:
        labels.setdefault(a["name"], []).append(a["label"])
    run_ids = metrics.get("run", {}).get("run_ids") or [""]
    base = {"campaign": cfg["campaign"]["name"], "campaign_uid": uid, "suite": cfg["campaign"]["suite"],
            "model": cfg["target"]["model"], "version": cfg["target"]["version"], "date": date,
            "run_id": run_ids[0], "window_tokens": int(metrics.get("parameters", {}).get("window_tokens", 50)),
            "report_path": report_path}

    def row(attack: str, m: dict) -> dict:
        r = dict(base, attack=attack)
        for name in NUMERIC:
            if name != "window_tokens":
                r[name] = m.get(name)
        return r

    rows = [row("all", {**metrics["metrics"], **ranking.best_figures(metrics.get("ranking"))})]
    for name, m in sorted(metrics.get("per_attack", {}).items()):
        lab = labels.get(name, [name])
        rows.append(row(lab[0] if len(lab) == 1 else name, m))
    return rows


# ============================================================================ the file

def _table(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in LEDGER_SCHEMA}
    for f in LEDGER_SCHEMA:
        if pa.types.is_floating(f.type):
            cols[f.name] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                            for v in cols[f.name]]
        elif pa.types.is_integer(f.type):
            cols[f.name] = [None if v is None else int(v) for v in cols[f.name]]
    t = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in LEDGER_SCHEMA}, schema=LEDGER_SCHEMA)
    return t.replace_schema_metadata({"format": LEDGER_FORMAT, "format_version": str(LEDGER_FORMAT_VERSION)})


def read_ledger(path: str | os.PathLike) -> list[dict]:
    """The ledger's rows (dicts with exactly the :data:`LEDGER_SCHEMA` columns, in file order).

    A missing or unreadable file, or one without a ledger column, is a :class:`TrawlError`."""
    p = Path(path)
    if not p.exists():
        raise TrawlError(f"{p}: no ledger here (a finished campaign writes one)")
    try:
        t = pq.read_table(p, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise TrawlError(f"{p}: not a readable ledger Parquet file ({exc})") from None
    version = _format_version(p, t.schema.metadata or {})
    optional = {c for v, cols in ADDED_IN.items() if v > version for c in cols}
    missing = [f.name for f in LEDGER_SCHEMA if f.name not in t.column_names and f.name not in optional]
    if missing:
        raise TrawlError(f"{p}: not a trawl ledger (no column {missing[0]!r})")
    for name in optional:       # an older ledger: the columns its version lacks are null (not measured)
        if name not in t.column_names:
            t = t.append_column(pa.field(name, LEDGER_SCHEMA.field(name).type), pa.nulls(t.num_rows,
                                                                                        LEDGER_SCHEMA.field(name).type))
    # a ledger written by something else (or edited): every column of its type, every key present,
    # every figure a finite number or null, so the rule and the page never meet other values
    cols = []
    for f in LEDGER_SCHEMA:
        col = t.column(f.name)
        try:
            cols.append(col if col.type == f.type else col.cast(f.type))
        except (pa.ArrowException, ValueError) as exc:
            raise TrawlError(f"{p}: damaged ledger: column {f.name!r} is {col.type}, not {f.type} "
                             f"({first_line(exc)[:80]})") from None
    rows = pa.table(cols, schema=LEDGER_SCHEMA).to_pylist()
    for i, r in enumerate(rows):
        for key in LEDGER_KEYS:
            if not r[key]:
                raise TrawlError(f"{p}: damaged ledger: row {i} has no {key!r}")
        for name in NUMERIC:
            v = r[name]
            if isinstance(v, float) and not math.isfinite(v):
                if math.isnan(v):
                    r[name] = None   # as write_ledger stores a NaN: not measured
                else:
                    raise TrawlError(f"{p}: damaged ledger: row {i} has {name} = {v}")
    return rows


def _format_version(p: Path, meta: dict) -> int:
    """The ledger's format version from its metadata (module docstring); a later or unknown one is a
    one-line TrawlError. No metadata: the version its columns fit is decided by the caller (1 here)."""
    fmt = meta.get(b"format")
    raw = meta.get(b"format_version")
    if fmt is None and raw is None:
        return 1
    if fmt != LEDGER_FORMAT.encode():
        raise TrawlError(f"{p}: not a trawl ledger (format {visible(fmt.decode('utf-8', 'replace'))[:40]!r})"
                         if fmt is not None else f"{p}: not a trawl ledger (a format version but no format)")
    text = (raw or b"").decode("utf-8", "replace")
    if not re.fullmatch(r"[1-9][0-9]{0,5}", text):     # as trawl writes it: a plain positive integer
        raise TrawlError(f"{p}: unknown ledger format version {visible(text)[:20]!r} (this trawl reads 1 to "
                         f"{LEDGER_FORMAT_VERSION})")
    if int(text) > LEDGER_FORMAT_VERSION:
        raise TrawlError(f"{p}: ledger format version {int(text)} was written by a newer trawl (this one reads 1 "
                         f"to {LEDGER_FORMAT_VERSION}); upgrade trawl to read it")
    return int(text)


def write_ledger(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` as the whole ledger, atomically (NaN stored as null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(_table(rows), p, sync_dir=True)


def append_rows(path: str | os.PathLike, rows: list[dict]) -> int:
    """Append ``rows`` atomically; rows whose (campaign_uid, attack) is already there are skipped.

    Writers take turns (a blocking lock on ``LEDGER.lock``). Returns the number of rows added.
    """
    p = Path(path)
    with FolderLock(f"{p}.lock", blocking=True):
        old = read_ledger(p) if p.exists() else []
        have = {(r["campaign_uid"], r["attack"]) for r in old}
        new = [r for r in rows if (r["campaign_uid"], r["attack"]) not in have]
        if new:
            write_ledger(p, old + new)
        return len(new)


# ============================================================================ the trend report of a ledger file

def compare(rows: list[dict], **kw) -> list[Comparison]:
    """:func:`reports.trend.compare` on ledger rows; its bad-input errors (unknown metric or
    version, negative tolerance) are raised as the extractor's :class:`TrawlError`."""
    try:
        return trend.compare(rows, **kw)
    except ReportError as exc:
        raise TrawlError(str(exc)) from None


@dataclass
class HistoryResult:
    comparisons: list[Comparison]
    flagged: list[Comparison]
    html: str | None
    rows: int

    @property
    def exit_code(self) -> int:
        return REGRESSION_EXIT_CODE if self.flagged else 0


def history_report(ledger: str | os.PathLike, *, out_html: str | os.PathLike | None = None,
                   metric: str = DEFAULT_METRIC, tolerance: float = DEFAULT_TOLERANCE, epsilon: float = DEFAULT_EPSILON,
                   version_order=None, all_pairs: bool = False) -> HistoryResult:
    """Read the ledger, compare versions (:mod:`reports.trend`'s rule), write the HTML trend report
    to ``out_html`` atomically (none when None)."""
    rows = read_ledger(ledger)
    comps = compare(rows, metric=metric, tolerance=tolerance, epsilon=epsilon, version_order=version_order)
    flagged = trend.regressions(comps, all_pairs)
    path = None
    if out_html is not None:
        path = Path(out_html)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, trend.render_html(rows, comps, metric=metric, tolerance=tolerance, epsilon=epsilon,
                                                  version_order=version_order, source=str(ledger),
                                                  all_pairs=all_pairs))
    return HistoryResult(comps, flagged, str(path) if path else None, len(rows))


def comparisons_json(res: HistoryResult) -> str:
    """``trawl history --json``: the rows count, every comparison, the flagged ones, the HTML path."""
    return json.dumps({"rows": res.rows, "comparisons": [c.to_dict() for c in res.comparisons],
                       "regressions": [c.to_dict() for c in res.flagged], "html": res.html}, indent=1)
