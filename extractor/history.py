"""The ledger of finished campaigns, the trend report, and the regression check.

Ledger (Parquet, zstd; :data:`LEDGER_SCHEMA`): every finished campaign appends one
row with attack ``"all"`` (the campaign's totals) and one row per attack. The key
is (suite, model, version, attack, date); ``campaign_uid`` identifies the campaign
folder that wrote a row, so a campaign that crashed after recording and is resumed
does not record twice. Appending is atomic: under an exclusive ``fcntl.flock`` on
``LEDGER.lock`` the file is read, the rows added, the whole written to
``LEDGER.tmp-<pid>``, fsynced and renamed over the old one; a reader sees the old
ledger or the new one, never a torn file.

Regression rule
    Rows are grouped into series by (suite, model, attack). Within a series, each
    version's figure is the one of its most recent row (latest ``date``), and the
    versions are ordered by the order given (the order of the targets in the sweep,
    or ``--versions``); versions not in that order come after it, by the date they
    were first recorded. A version named in ``--versions`` that the ledger does not
    hold is a user error (naming it and the known versions). Consecutive versions ``prev -> new`` are compared on one
    metric (default ``memorized_token_fraction``), and the pair is a **regression**
    when::

        metric(new) > metric(prev) * (1 + tolerance) + epsilon

    (defaults: tolerance 0.10, epsilon 0.0). Pairs where either figure is missing
    (None) are not compared. Every metric in the ledger is "higher = more
    memorization" (or cheaper extraction, for ``mb_per_dollar``), so up is bad.
    By default only each series' newest pair decides the exit code (a CI gate on the
    version just audited); ``all_pairs`` checks the whole history.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from corpora.storage import FolderLock, utcnow, write_parquet_atomic, write_text_atomic
from extractor.errors import TrawlError
from reports.metrics import THRESHOLDS

LEDGER_FORMAT = "trawl-ledger"
LEDGER_FORMAT_VERSION = 1
DEFAULT_METRIC = "memorized_token_fraction"
DEFAULT_TOLERANCE = 0.10
DEFAULT_EPSILON = 0.0
REGRESSION_EXIT_CODE = 3

LEDGER_SCHEMA = pa.schema([
    ("campaign", pa.string()),
    ("campaign_uid", pa.string()),
    ("suite", pa.string()),
    ("model", pa.string()),
    ("version", pa.string()),
    ("attack", pa.string()),
    ("date", pa.string()),                     # UTC ISO 8601, e.g. 2026-11-26T10:00:00Z
    ("run_id", pa.string()),
    ("generations", pa.int64()),
    ("generated_tokens", pa.int64()),
    ("memorized_token_fraction", pa.float64()),
    ("memorized_generation_fraction", pa.float64()),
    ("unique_memorized_windows", pa.int64()),
    *[(f"spans_ge_{t}", pa.int64()) for t in THRESHOLDS],
    ("longest_run_tokens", pa.int64()),
    ("total_cost_usd", pa.float64()),
    ("mb_per_dollar", pa.float64()),
    ("window_tokens", pa.int64()),
    ("report_path", pa.string()),
])
NUMERIC = [f.name for f in LEDGER_SCHEMA if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
METRICS = [n for n in NUMERIC if n != "window_tokens"]   # what the regression rule may compare
PLOTTED = ("memorized_token_fraction", "memorized_generation_fraction", "unique_memorized_windows",
           "longest_run_tokens", "mb_per_dollar")


# ============================================================================ ledger

def ledger_rows(cfg: dict, metrics: dict, *, uid: str, report_path: str, date: str) -> list[dict]:
    """The ledger rows of a finished campaign: ``"all"`` plus one per attack."""
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

    rows = [row("all", metrics["metrics"])]
    for name, m in sorted(metrics.get("per_attack", {}).items()):
        lab = labels.get(name, [name])
        rows.append(row(lab[0] if len(lab) == 1 else name, m))
    return rows


def _locked(path: Path) -> FolderLock:
    """Writers of one ledger take turns (a blocking lock on ``LEDGER.lock``)."""
    return FolderLock(f"{path}.lock", blocking=True)


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
    p = Path(path)
    if not p.exists():
        raise TrawlError(f"{p}: no ledger here (a finished campaign writes one)")
    try:
        t = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise TrawlError(f"{p}: not a readable ledger Parquet file ({exc})") from None
    missing = [f.name for f in LEDGER_SCHEMA if f.name not in t.column_names]
    if missing:
        raise TrawlError(f"{p}: not a trawl ledger (no column {missing[0]!r})")
    return t.select([f.name for f in LEDGER_SCHEMA]).to_pylist()


def write_ledger(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` as the whole ledger, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(_table(rows), p, sync_dir=True)


def append_rows(path: str | os.PathLike, rows: list[dict]) -> int:
    """Append ``rows`` atomically; rows whose (campaign_uid, attack) is already there are skipped.

    Returns the number of rows added.
    """
    p = Path(path)
    with _locked(p):
        old = read_ledger(p) if p.exists() else []
        have = {(r["campaign_uid"], r["attack"]) for r in old}
        new = [r for r in rows if (r["campaign_uid"], r["attack"]) not in have]
        if new:
            write_ledger(p, old + new)
        return len(new)


# ============================================================================ regressions

@dataclass
class Comparison:
    suite: str
    model: str
    attack: str
    prev_version: str
    version: str
    metric: str
    prev_value: float | None
    value: float | None
    limit: float | None           # prev * (1 + tolerance) + epsilon
    regression: bool
    newest: bool                  # the series' newest pair
    prev_date: str = ""
    date: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        who = f"{self.model} [{self.attack}]" + (f" ({self.suite})" if self.suite else "")
        if self.limit is None:
            return f"{who} {self.prev_version} -> {self.version}: {self.metric} not comparable (missing)"
        verdict = "REGRESSION" if self.regression else "ok"
        return (f"{who} {self.prev_version} -> {self.version}: {self.metric} {_fmt(self.prev_value)} -> "
                f"{_fmt(self.value)} (limit {_fmt(self.limit)}): {verdict}")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def series(rows: list[dict], version_order: dict[str, list[str]] | list[str] | None = None) -> dict:
    """{(suite, model, attack): [(version, latest row of that version)] in version order}."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        key = (r.get("suite") or "", r["model"], r["attack"])
        groups.setdefault(key, {}).setdefault(r["version"], []).append(r)
    out = {}
    for key, by_version in groups.items():
        order = version_order.get(key[1], []) if isinstance(version_order, dict) else (version_order or [])
        rank = {v: i for i, v in enumerate(order)}
        first_seen = {v: min(x["date"] for x in rs) for v, rs in by_version.items()}
        versions = sorted(by_version, key=lambda v: (0, rank[v], "") if v in rank else (1, 0, first_seen[v]))
        out[key] = [(v, max(by_version[v], key=lambda x: x["date"])) for v in versions]
    return dict(sorted(out.items()))


def check_version_order(rows: list[dict], version_order) -> None:
    """An explicit order (a list, as ``--versions`` gives) must name only versions in the ledger;
    otherwise a typo would silently compare other versions. The sweep's per-model order (a dict)
    may name versions not recorded yet and is not checked."""
    if not isinstance(version_order, (list, tuple)):
        return
    known = sorted({r["version"] for r in rows if r.get("version") is not None})
    unknown = list(dict.fromkeys(v for v in version_order if v not in known))
    if unknown:
        shown = ", ".join(known[:30]) + (f", ... ({len(known) - 30} more)" if len(known) > 30 else "")
        raise TrawlError(f"unknown version{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                         f"--versions (the ledger has: {shown or 'no versions'})")


def compare(rows: list[dict], *, metric: str = DEFAULT_METRIC, tolerance: float = DEFAULT_TOLERANCE,
            epsilon: float = DEFAULT_EPSILON, version_order=None) -> list[Comparison]:
    """Every consecutive version pair of every series, judged by the rule in the module docstring."""
    if metric not in METRICS:
        raise TrawlError(f"unknown history metric {metric!r} (known: {', '.join(METRICS)})")
    if tolerance < 0 or epsilon < 0:
        raise TrawlError("tolerance and epsilon must be >= 0")
    check_version_order(rows, version_order)
    out = []
    for (suite, model, attack), items in series(rows, version_order).items():
        for i in range(1, len(items)):
            (pv, pr), (nv, nr) = items[i - 1], items[i]
            a, b = pr.get(metric), nr.get(metric)
            limit = None if a is None or b is None else a * (1.0 + tolerance) + epsilon
            out.append(Comparison(suite, model, attack, pv, nv, metric, a, b, limit,
                                  bool(limit is not None and b > limit), i == len(items) - 1,
                                  pr["date"], nr["date"]))
    return out


def regressions(comparisons: list[Comparison], all_pairs: bool = False) -> list[Comparison]:
    return [c for c in comparisons if c.regression and (all_pairs or c.newest)]


# ============================================================================ the trend report

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _nice_top(v: float) -> float:
    """The smallest 1, 2, 2.5, 5 x 10^k at or above ``v`` (1 for 0)."""
    if not v or v <= 0 or not math.isfinite(v):
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v * 1.0000001:
            return m * e
    return 10 * e


def trend_svg(title: str, labels: list[str], lines: list[dict], width: int = 720, height: int = 300) -> str:
    """One metric over versions: x = version (categorical), one line per series; every label escaped.

    ``lines``: [{"name", "values": [float | None per label], "flags": [bool per label]}].
    """
    ml, mr, mt, mb = 72, 16, 30, 64
    pw, ph = width - ml - mr, height - mt - mb
    vals = [v for ln in lines for v in ln["values"] if v is not None]
    hi = _nice_top(max(vals) if vals else 0.0)
    n = max(1, len(labels))

    def X(i):
        return ml + (pw * (i + 0.5) / n)

    def Y(v):
        return mt + ph - v / hi * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{_e(title)}</text>',
             f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>',
             f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>']
    for k in range(5):
        v = hi * k / 4
        y = Y(v)
        parts.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_num(v))}</text>')
    for i, lab in enumerate(labels):
        parts.append(f'<text x="{X(i):.1f}" y="{mt + ph + 16}" text-anchor="middle">{_e(lab[:24])}</text>')
    if not vals:
        parts.append(f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle" fill="#888">'
                     f'no data (not measured)</text>')
    for j, ln in enumerate(lines):
        col = _COLORS[j % len(_COLORS)]
        pts = [(X(i), Y(v)) for i, v in enumerate(ln["values"]) if v is not None]
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="2"/>')
        for i, v in enumerate(ln["values"]):
            if v is None:
                continue
            flag = ln.get("flags", [False] * n)[i]
            r = 6 if flag else 3.5
            stroke = ' stroke="#000" stroke-width="2"' if flag else ""
            parts.append(f'<circle cx="{X(i):.1f}" cy="{Y(v):.1f}" r="{r}" fill="{col}"{stroke}>'
                         f'<title>{_e(ln["name"])} {_e(labels[i])}: {_e(_num(v))}'
                         f'{" (regression)" if flag else ""}</title></circle>')
        ly = mt + ph + 32 + 14 * (j // 3)
        lx = ml + (j % 3) * (pw / 3)
        parts.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{lx + 14:.1f}" y="{ly}">{_e(ln["name"][:40])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(rows: list[dict], comparisons: list[Comparison], *, metric: str, tolerance: float, epsilon: float,
                version_order=None, source: str = "", all_pairs: bool = False) -> str:
    ser = series(rows, version_order)
    flagged = regressions(comparisons, all_pairs)
    flag_keys = {(c.suite, c.model, c.attack, c.version) for c in comparisons if c.regression}
    out = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>trawl memorization history</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
           "text-align:left}td.n{text-align:right}.bad{background:#fdd}.ok{background:#efe}"
           "h2{margin-top:2em}.verdict{font-size:18px;padding:.6em;border-radius:4px}</style></head><body>",
           "<h1>trawl memorization history</h1>",
           f"<p>Ledger: <code>{_e(source)}</code>; {len(rows)} rows, {len(ser)} series "
           f"(suite, model, attack). Generated {_e(utcnow())}.</p>",
           f"<p>Regression rule: for each series, versions in order, flag <code>{_e(metric)}(new) &gt; "
           f"{_e(metric)}(prev) &times; (1 + {tolerance:g}) + {epsilon:g}</code>; "
           f"{'every pair' if all_pairs else 'the newest pair of each series'} decides the exit code.</p>"]
    if flagged:
        out.append(f'<div class="verdict bad">{len(flagged)} regression(s):<ul>'
                   + "".join(f"<li>{_e(c.line())}</li>" for c in flagged) + "</ul></div>")
    else:
        out.append('<p class="verdict ok">No regression.</p>')
    out.append("<h2>Version to version</h2><table><tr><th>suite</th><th>model</th><th>attack</th><th>previous</th>"
               f"<th>new</th><th>{_e(metric)} before</th><th>after</th><th>limit</th><th>verdict</th></tr>")
    for c in comparisons:
        cls = "bad" if c.regression else ""
        verdict = "REGRESSION" if c.regression else ("not comparable" if c.limit is None else "ok")
        out.append(f'<tr class="{cls}"><td>{_e(c.suite)}</td><td>{_e(c.model)}</td><td>{_e(c.attack)}</td>'
                   f"<td>{_e(c.prev_version)}</td><td>{_e(c.version)}</td><td class=n>{_e(_num(c.prev_value))}</td>"
                   f"<td class=n>{_e(_num(c.value))}</td><td class=n>{_e(_num(c.limit))}</td><td>{verdict}</td></tr>")
    out.append("</table>")
    # plots: one per (suite, model) and metric, a line per attack
    by_sm: dict[tuple, dict] = {}
    for (suite, model, attack), items in ser.items():
        by_sm.setdefault((suite, model), {})[attack] = items
    for (suite, model), attacks in by_sm.items():
        out.append(f"<h2>{_e(model)}" + (f" &mdash; {_e(suite)}" if suite else "") + "</h2>")
        labels: list[str] = []
        for items in attacks.values():
            for v, _ in items:
                if v not in labels:
                    labels.append(v)
        order = version_order.get(model, []) if isinstance(version_order, dict) else (version_order or [])
        first = {v: i for i, v in enumerate(labels)}
        labels = sorted(labels, key=lambda v: order.index(v) if v in order else len(order) + first[v])
        for m in dict.fromkeys((metric, *PLOTTED)):
            lines = []
            for attack, items in attacks.items():
                d = {v: r.get(m) for v, r in items}
                lines.append({"name": attack, "values": [d.get(v) for v in labels],
                              "flags": [m == metric and (suite, model, attack, v) in flag_keys for v in labels]})
            out.append(trend_svg(f"{m} by version", labels, lines))
    out.append("<h2>Ledger (latest row per version)</h2><table><tr><th>date</th><th>suite</th><th>model</th>"
               "<th>version</th><th>attack</th><th>generations</th><th>tokens</th><th>memorized tokens</th>"
               "<th>memorized gens</th><th>unique windows</th><th>longest run</th><th>cost $</th><th>report</th></tr>")
    for (suite, model, attack), items in ser.items():
        for v, r in items:
            rp = r.get("report_path") or ""
            out.append(f"<tr><td>{_e(r['date'])}</td><td>{_e(suite)}</td><td>{_e(model)}</td><td>{_e(v)}</td>"
                       f"<td>{_e(attack)}</td><td class=n>{_e(_num(r.get('generations')))}</td>"
                       f"<td class=n>{_e(_num(r.get('generated_tokens')))}</td>"
                       f"<td class=n>{_e(_num(r.get('memorized_token_fraction')))}</td>"
                       f"<td class=n>{_e(_num(r.get('memorized_generation_fraction')))}</td>"
                       f"<td class=n>{_e(_num(r.get('unique_memorized_windows')))}</td>"
                       f"<td class=n>{_e(_num(r.get('longest_run_tokens')))}</td>"
                       f"<td class=n>{_e(_num(r.get('total_cost_usd')))}</td>"
                       f"<td><a href=\"{_e(rp)}\">{_e(os.path.basename(os.path.dirname(rp)) or rp)}</a></td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)


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
    """Read the ledger, compare versions, write the HTML trend report (atomically)."""
    rows = read_ledger(ledger)
    comps = compare(rows, metric=metric, tolerance=tolerance, epsilon=epsilon, version_order=version_order)
    flagged = regressions(comps, all_pairs)
    path = None
    if out_html is not None:

        path = Path(out_html)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, render_html(rows, comps, metric=metric, tolerance=tolerance, epsilon=epsilon,
                                            version_order=version_order, source=str(ledger), all_pairs=all_pairs))
    return HistoryResult(comps, flagged, str(path) if path else None, len(rows))


def comparisons_json(res: HistoryResult) -> str:
    return json.dumps({"rows": res.rows, "comparisons": [c.to_dict() for c in res.comparisons],
                       "regressions": [c.to_dict() for c in res.flagged], "html": res.html}, indent=1)
