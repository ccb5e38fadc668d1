"""The regression rule over a ledger's rows and the HTML trend report.

Input: ledger rows (a list of dicts, one per row of ``ledger.parquet``, as
:func:`extractor.campaigns.ledger.read_ledger` returns them; reading and
appending the ledger file is the extractor's job, this module never touches it).

Regression rule
    Rows are grouped into series by (suite, model, attack). Within a series, each
    version's figure is the one of its most recent row (latest ``date``), and the
    versions are ordered by the order given (the order of the targets in the sweep,
    or ``--versions``); versions not in that order come after it, by the date they
    were first recorded. A version named in ``--versions`` that the ledger does not
    hold is a user error (naming it and the known versions). Consecutive versions
    ``prev -> new`` are compared on one metric (default ``memorized_token_fraction``),
    and the pair is a **regression** when::

        metric(new) > metric(prev) * (1 + tolerance) + epsilon

    (defaults: tolerance 0.10, epsilon 0.0). Pairs where either figure is missing
    (None) are not compared. Every metric in the ledger is "higher = more
    memorization" (or cheaper extraction, for ``mb_per_dollar``; for the ``ranking_best_*``
    figures of ``trawl rank``, memorized generations found more reliably without the
    training data), so up is bad.
    By default only each series' newest pair decides the exit code (a CI gate on the
    version just audited); ``all_pairs`` checks the whole history.

Bad input (an unknown metric, a negative tolerance, an unknown version) raises
:class:`~reports.errors.ReportError`. :func:`render_html` is deterministic except
for its "Generated" timestamp and escapes every text taken from the rows.
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import asdict, dataclass

import pyarrow as pa

from corpora.hygiene import visible
from corpora.storage import utcnow
from reports.errors import ReportError
from reports.spans import THRESHOLDS
from reports.svg import category_chart

DEFAULT_METRIC = "memorized_token_fraction"
DEFAULT_TOLERANCE = 0.10
DEFAULT_EPSILON = 0.0
REGRESSION_EXIT_CODE = 3

# The per-campaign figures a ledger row carries, in column order (the ledger's schema places them
# after its key columns): the columns the rule may compare.
METRIC_FIELDS: list[tuple[str, pa.DataType]] = [
    ("generations", pa.int64()),
    ("generated_tokens", pa.int64()),
    ("memorized_token_fraction", pa.float64()),
    ("memorized_generation_fraction", pa.float64()),
    ("unique_memorized_windows", pa.int64()),
    *[(f"spans_ge_{t}", pa.int64()) for t in THRESHOLDS],
    ("longest_run_tokens", pa.int64()),
    ("total_cost_usd", pa.float64()),
    ("mb_per_dollar", pa.float64()),
]
# The membership rankings' figures (trawl rank against the run's matches; ledger format 2 on): the
# campaign's row "all" only (a ranking is run-wide), null without scores; reports.ranking.best_figures.
RANKING_FIELDS: list[tuple[str, pa.DataType]] = [
    ("ranking_best_auc", pa.float64()),
    *[(f"ranking_best_precision_at_{n}", pa.float64()) for n in (10, 100, 1000)],
]
METRIC_FIELDS += RANKING_FIELDS
METRICS = [name for name, _ in METRIC_FIELDS]
RANKING_METRICS = tuple(name for name, _ in RANKING_FIELDS)
PLOTTED = ("memorized_token_fraction", "memorized_generation_fraction", "unique_memorized_windows",
           "longest_run_tokens", "mb_per_dollar", "ranking_best_auc")


# ============================================================================ the rule

@dataclass
class Comparison:
    """One consecutive version pair of one series, judged by the rule."""

    suite: str
    model: str
    attack: str
    prev_version: str
    version: str
    metric: str
    prev_value: float | None
    value: float | None
    limit: float | None           # prev * (1 + tolerance) + epsilon; None: not comparable
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


def _order_of(version_order, model: str) -> list[str]:
    """The version order for ``model``: a sweep gives one per model (dict), ``--versions`` one list."""
    return version_order.get(model, []) if isinstance(version_order, dict) else (version_order or [])


def series(rows: list[dict], version_order: dict[str, list[str]] | list[str] | None = None) -> dict:
    """{(suite, model, attack): [(version, latest row of that version)] in version order}, keys sorted."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        key = (r.get("suite") or "", r["model"], r["attack"])
        groups.setdefault(key, {}).setdefault(r["version"], []).append(r)
    out = {}
    for key, by_version in groups.items():
        rank = {v: i for i, v in enumerate(_order_of(version_order, key[1]))}
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
        raise ReportError(f"unknown version{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                          f"--versions (the ledger has: {shown or 'no versions'})")


def compare(rows: list[dict], *, metric: str = DEFAULT_METRIC, tolerance: float = DEFAULT_TOLERANCE,
            epsilon: float = DEFAULT_EPSILON, version_order=None) -> list[Comparison]:
    """Every consecutive version pair of every series, judged by the rule in the module docstring."""
    if metric not in METRICS:
        raise ReportError(f"unknown history metric {metric!r} (known: {', '.join(METRICS)})")
    for name, v in (("tolerance", tolerance), ("epsilon", epsilon)):
        # nan compares false: `nan < 0` would pass and every limit would be nan, flagging nothing
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ReportError(f"{name} must be a finite number >= 0, got {v!r}")
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
    """The pairs that decide the exit code: regressions of each series' newest pair (every pair
    with ``all_pairs``)."""
    return [c for c in comparisons if c.regression and (all_pairs or c.newest)]


# ============================================================================ the trend report

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
          "text-align:left}td.n{text-align:right}.bad{background:#fdd}.ok{background:#efe}"
          "h2{margin-top:2em}.verdict{font-size:18px;padding:.6em;border-radius:4px}"
          "svg.chart{max-width:100%;height:auto;background:#fff;font-family:sans-serif}"
          "svg .ct{font-size:13px;font-weight:bold}svg .tick{font-size:11px;fill:#444}"
          "svg .grid{stroke:#eee}svg .axis{stroke:#333}")


def _e(s) -> str:
    """Escaped for HTML; control and format characters of ledger text (model names, ...) made visible."""
    return html.escape(visible(s), quote=True)


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _comparison_table(comparisons: list[Comparison], metric: str) -> list[str]:
    out = ["<h2>Version to version</h2><table><tr><th>suite</th><th>model</th><th>attack</th><th>previous</th>"
           f"<th>new</th><th>{_e(metric)} before</th><th>after</th><th>limit</th><th>verdict</th></tr>"]
    for c in comparisons:
        cls = "bad" if c.regression else ""
        verdict = "REGRESSION" if c.regression else ("not comparable" if c.limit is None else "ok")
        out.append(f'<tr class="{cls}"><td>{_e(c.suite)}</td><td>{_e(c.model)}</td><td>{_e(c.attack)}</td>'
                   f"<td>{_e(c.prev_version)}</td><td>{_e(c.version)}</td><td class=n>{_e(_num(c.prev_value))}</td>"
                   f"<td class=n>{_e(_num(c.value))}</td><td class=n>{_e(_num(c.limit))}</td><td>{verdict}</td></tr>")
    out.append("</table>")
    return out


def _plots(ser: dict, comparisons: list[Comparison], metric: str, version_order) -> list[str]:
    """One section per (suite, model); in it one chart per plotted metric, a line per attack."""
    flag_keys = {(c.suite, c.model, c.attack, c.version) for c in comparisons if c.regression}
    by_sm: dict[tuple, dict] = {}
    for (suite, model, attack), items in ser.items():
        by_sm.setdefault((suite, model), {})[attack] = items
    out = []
    for (suite, model), attacks in by_sm.items():
        out.append(f"<h2>{_e(model)}" + (f" &mdash; {_e(suite)}" if suite else "") + "</h2>")
        labels = list(dict.fromkeys(v for items in attacks.values() for v, _ in items))
        order = _order_of(version_order, model)
        first = {v: i for i, v in enumerate(labels)}
        labels = sorted(labels, key=lambda v: order.index(v) if v in order else len(order) + first[v])
        for m in dict.fromkeys((metric, *PLOTTED)):
            if m != metric and m in RANKING_METRICS and all(r.get(m) is None for items in attacks.values()
                                                            for _, r in items):
                continue        # no campaign of this model ranked its generations (trawl rank): no empty chart
            lines = []
            for attack, items in attacks.items():
                d = {v: r.get(m) for v, r in items}
                lines.append({"name": attack, "values": [d.get(v) for v in labels],
                              "flags": [m == metric and (suite, model, attack, v) in flag_keys for v in labels]})
            out.append(category_chart(labels, lines, f"{m} by version"))
    return out


def _ledger_table(ser: dict) -> list[str]:
    out = ["<h2>Ledger (latest row per version)</h2><table><tr><th>date</th><th>suite</th><th>model</th>"
           "<th>version</th><th>attack</th><th>generations</th><th>tokens</th><th>memorized tokens</th>"
           "<th>memorized gens</th><th>unique windows</th><th>longest run</th><th>cost $</th>"
           "<th>best ranking AUC</th><th>best ranking P@100</th><th>report</th></tr>"]
    cols = ("generations", "generated_tokens", "memorized_token_fraction", "memorized_generation_fraction",
            "unique_memorized_windows", "longest_run_tokens", "total_cost_usd", "ranking_best_auc",
            "ranking_best_precision_at_100")
    for (suite, model, attack), items in ser.items():
        for v, r in items:
            rp = r.get("report_path") or ""
            nums = "".join(f"<td class=n>{_e(_num(r.get(k)))}</td>" for k in cols)
            out.append(f"<tr><td>{_e(r['date'])}</td><td>{_e(suite)}</td><td>{_e(model)}</td><td>{_e(v)}</td>"
                       f"<td>{_e(attack)}</td>{nums}"
                       f"<td><a href=\"{_e(rp)}\">{_e(os.path.basename(os.path.dirname(rp)) or rp)}</a></td></tr>")
    out.append("</table>")
    return out


def render_html(rows: list[dict], comparisons: list[Comparison], *, metric: str, tolerance: float, epsilon: float,
                version_order=None, source: str = "", all_pairs: bool = False) -> str:
    """The self-contained trend page: verdict, version-to-version table, inline SVG plots, ledger table."""
    ser = series(rows, version_order)
    flagged = regressions(comparisons, all_pairs)
    out = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>trawl memorization history</title><style>{_STYLE}</style></head><body>",
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
    out += _comparison_table(comparisons, metric)
    out += _plots(ser, comparisons, metric, version_order)
    out += _ledger_table(ser)
    out.append("</body></html>\n")
    return "\n".join(out)
