"""The ``trawl mia`` report: figures (:func:`mia_figures`) and the HTML / Markdown / JSON files
(:func:`write_mia_report`) from per-text signals of a member and a non-member text set.

Inputs are the ``signals`` dicts of :func:`reports.ranking.signals` (one per text). A method whose
column is missing (NaN) for some texts is evaluated on the texts that have it, and says how many
it left out; a method with no value at all (e.g. ``reference_ratio`` without a reference model)
is listed as not computed. Every string shown is escaped (HTML) or made one safe cell (Markdown);
``redact`` masks personal data in the set names and notes as ``trawl report --redact`` does.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from corpora import storage
from reports import mia
from reports.categories import redact as redact_text
from reports.ranking import RANKINGS
from reports.render_common import esc, md_cell
from reports.render_common import CSS
from reports.svg import PALETTE, loglog_roc_chart

SCHEMA = "trawl-mia"
SCHEMA_VERSION = 2      # 2: the "scoring" object (how much was scored; a run that stopped early says so)


def mia_figures(member_signals: list[dict], nonmember_signals: list[dict], *, rounds: int = 1000,
                seed: int = 0, info: dict | None = None, scoring: dict | None = None) -> dict:
    """The figures of the texts scored (``scoring``: what the driver did, docs/CONTRACTS.md §9; a run
    that stopped early has ``complete`` false and its ``stopped`` reason, shown first in the reports)."""
    methods = {}
    for name, (col, _f, desc) in RANKINGS.items():
        pos = mia.oriented(name, [s.get(col, float("nan")) for s in member_signals])
        neg = mia.oriented(name, [s.get(col, float("nan")) for s in nonmember_signals])
        pos_ok, neg_ok = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
        entry = {"column": col, "description": desc,
                 "left_out": {"members": int(pos.size - pos_ok.size), "nonmembers": int(neg.size - neg_ok.size)}}
        if pos_ok.size and neg_ok.size:
            entry.update(mia.evaluate(pos_ok, neg_ok, rounds=rounds, seed=seed))
        else:
            entry["auc"] = None
            entry["not_computed"] = "no value for this signal (e.g. no reference model, or no scored token)"
        methods[name] = entry
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "generated_at": storage.utcnow(),
            "members": len(member_signals), "nonmembers": len(nonmember_signals),
            "bootstrap": {"rounds": rounds, "seed": seed, "interval": "95% percentile, stratified"},
            "info": info or {}, "scoring": scoring, "methods": methods,
            "definitions": {
                "auc": "P(member score > non-member score), ties 1/2 (Mann-Whitney U / (P N))",
                "tpr_at_fpr": "largest TPR of a threshold whose FPR <= the level; below_resolution when "
                              "the level < 1/non-members (only FPR 0 qualifies)",
                "orientation": "each method's scores are oriented higher = member, as reports/ranking.py ranks"}}


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _rows(f: dict):
    for name, m in f["methods"].items():
        if m.get("auc") is None:
            yield name, m, "n/a", "n/a", "n/a"
            continue
        t1, t01 = m["tpr_at_fpr"]["0.01"], m["tpr_at_fpr"]["0.001"]
        mark = lambda t: " (below resolution)" if t["below_resolution"] else ""   # noqa: E731
        yield (name, m, _fmt(m["auc"]) + _ci(m["auc_ci"]), _fmt(t1["value"]) + _ci(t1["ci"]) + mark(t1),
               _fmt(t01["value"]) + _ci(t01["ci"]) + mark(t01))


def _stopped_line(f: dict) -> str | None:
    sc = f.get("scoring") or {}
    if sc.get("complete", True):
        return None
    t, d = sc.get("texts", {}), sc.get("scored", {})
    return (f"Stopped early ({sc.get('stopped') or 'incomplete'}): {d.get('members', '?')} of {t.get('members', '?')} "
            f"members and {d.get('nonmembers', '?')} of {t.get('nonmembers', '?')} non-members scored; the figures "
            f"are of those texts only. Rerun trawl mia with the same arguments to score the rest.")


def _info_lines(f: dict) -> list[str]:
    i = f["info"]
    out = [f"Members: {f['members']} texts ({i.get('members_path', '?')}); non-members: {f['nonmembers']} texts "
           f"({i.get('nonmembers_path', '?')})."]
    if i.get("scorer"):
        out.append(f"Scorer: {i['scorer']}" + (f"; reference: {i['reference']}" if i.get("reference") else "") + ".")
    for n in i.get("notes", []):
        out.append(n)
    b = f["bootstrap"]
    out.append(f"Intervals: {b['interval']} bootstrap, {b['rounds']} rounds, seed {b['seed']}.")
    return out


def render_mia_markdown(f: dict) -> str:
    L = ["# trawl membership-inference report\n"]
    stop = _stopped_line(f)
    if stop:
        L.append(f"**{md_cell(stop, 2000)}**\n")
    L += [md_cell(x, 2000) + "\n" for x in _info_lines(f)]
    L.append("| method | ROC AUC [95% CI] | TPR @ 1% FPR | TPR @ 0.1% FPR | left out (members / non-members) |")
    L.append("|---|---|---|---|---|")
    for name, m, a, t1, t01 in _rows(f):
        lo = m["left_out"]
        L.append(f"| {md_cell(name)} | {a} | {t1} | {t01} | {lo['members']} / {lo['nonmembers']} |")
    L.append("")
    for k, v in f["definitions"].items():
        L.append(f"- **{md_cell(k)}**: {md_cell(v, 1000)}")
    return "\n".join(L) + "\n"


def render_mia_html(f: dict) -> str:
    h = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
         "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
         "img-src data:; script-src 'none'; base-uri 'none'; form-action 'none'\">",
         "<title>trawl membership-inference report</title>", f"<style>{CSS}</style></head><body>",
         "<h1>trawl membership-inference report</h1>"]
    stop = _stopped_line(f)
    if stop:
        h.append(f"<p class=\"warn\"><b>{esc(stop, 2000)}</b></p>")
    h += [f"<p>{esc(x, 2000)}</p>" for x in _info_lines(f)]
    h.append("<table><tr><th>method</th><th>ROC AUC [95% CI]</th><th>TPR @ 1% FPR</th><th>TPR @ 0.1% FPR</th>"
             "<th>left out (members / non-members)</th></tr>")
    for name, m, a, t1, t01 in _rows(f):
        lo = m["left_out"]
        h.append(f"<tr><td title=\"{esc(m['description'])}\">{esc(name)}</td><td>{esc(a)}</td><td>{esc(t1)}</td>"
                 f"<td>{esc(t01)}</td><td>{lo['members']} / {lo['nonmembers']}</td></tr>")
    h.append("</table>")
    curves = [{"name": name, "color": PALETTE[i % len(PALETTE)],
               "points": list(zip(m["roc"]["fpr"], m["roc"]["tpr"]))}
              for i, (name, m) in enumerate(f["methods"].items()) if m.get("auc") is not None]
    floor = 1.0 / max(f["nonmembers"], 1)
    h.append(f"<h2>ROC curves (log-log)</h2>{loglog_roc_chart(curves, 'ROC, log-log axes (Carlini et al. 2022)', floor=min(floor, 1e-3))}")
    h.append("<h2>Definitions</h2><ul>")
    h += [f"<li><b>{esc(k)}</b>: {esc(v, 1000)}</li>" for k, v in f["definitions"].items()]
    h.append("</ul></body></html>")
    return "".join(h)


def _redact_info(f: dict) -> dict:
    f = json.loads(json.dumps(f))
    info = f.get("info", {})
    for k, v in list(info.items()):
        if isinstance(v, str):
            info[k] = redact_text(v)
        elif isinstance(v, list):
            info[k] = [redact_text(x) if isinstance(x, str) else x for x in v]
    sc = f.get("scoring")
    if isinstance(sc, dict) and isinstance(sc.get("stopped"), str):
        sc["stopped"] = redact_text(sc["stopped"])         # a failure's text may quote a server's answer
    f["redacted"] = True
    return f


def write_mia_report(figures: dict, out_dir: str, redact: bool = False) -> dict:
    """Write ``mia.json``, ``report.md``, ``report.html`` into ``out_dir`` (atomically each); their paths."""
    if redact:
        figures = _redact_info(figures)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "mia.json"), "md": os.path.join(out_dir, "report.md"),
             "html": os.path.join(out_dir, "report.html")}
    storage.write_json_atomic(paths["json"], figures)
    storage.write_text_atomic(paths["md"], render_mia_markdown(figures))
    storage.write_text_atomic(paths["html"], render_mia_html(figures))
    return paths


__all__ = ["mia_figures", "render_mia_html", "render_mia_markdown", "write_mia_report"]
