"""The ranking part of a report: built from ``RUN/scores.parquet`` (``trawl rank``) and, where the
run has been matched, the memorized generations as ground truth (:mod:`reports.ranking`).

:func:`ranking_section` makes metrics.json's ``ranking`` section; :func:`html_ranking` and
:func:`md_ranking` render it: "Top candidates by each ranking" (what to inspect first when there is
no index to match against), the precision@N / ROC AUC table and the ROC curves (inline SVG).
:func:`write_ranking_report` writes ``RUN/report/ranking.html`` and ``ranking.md`` on their own,
for runs without matches (``trawl rank`` calls it). Every text from the run is shown through
:func:`reports.render_common.esc` / ``md_cell`` (control characters visible, escaped).
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reports import ranking
from reports import svg
from reports.inputs import iter_batches, open_parquet
from reports.render_common import esc, fmt_num, md_cell

TOP_CANDIDATES = 10
ROC_POINTS = 200         # points kept per ROC curve in metrics.json (evenly over the curve)
_COLORS = ["#3b6ea5", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#2c4d75"]


def _texts(parts: list[str], ids: set[str], limit: int = 600) -> dict[str, str]:
    """Completions (cut to ``limit`` characters) of ``ids``, in one pass over the parts."""
    out: dict[str, str] = {}
    if not ids:
        return out
    want = pa.array(sorted(ids), type=pa.string())
    for p in parts:
        pf = open_parquet(p, ("request_id", "completion"))
        for b in iter_batches(pf, p, ["request_id", "completion"], 65536):
            mask = pc.is_in(b.column(0), value_set=want)
            if not pc.any(mask).as_py():
                continue
            sub = b.filter(mask)
            for rid, comp in zip(sub.column(0).to_pylist(), sub.column(1).cast(pa.binary()).to_pylist()):
                out[rid] = (comp or b"")[: limit * 4].decode("utf-8", "replace")[:limit]
    return out


def _thin(points: list, n: int = ROC_POINTS) -> list:
    if len(points) <= n:
        return [[round(x, 6), round(y, 6)] for x, y in points]
    idx = np.unique(np.linspace(0, len(points) - 1, n).round().astype(int))
    return [[round(points[i][0], 6), round(points[i][1], 6)] for i in idx]


def ranking_section(run_dir: str, parts: list[str], memorized: set[str] | None, window_tokens: int = 50) -> dict | None:
    """metrics.json's ``ranking`` section, or None when the run has no scores.parquet.
    ``memorized``: request ids holding a memorized window (None: the run was not matched)."""
    path = os.path.join(run_dir, ranking.SCORES_NAME)
    if not os.path.exists(path):
        return None
    cols, meta = ranking.read_scores(path)
    ids = cols["request_id"]
    labels = [rid in memorized for rid in ids] if memorized is not None else None
    rows = len(ids)
    top: dict[str, list] = {}
    need: set[str] = set()
    for name, (col, tf, _desc) in ranking.RANKINGS.items():
        v = np.asarray(cols[col], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            sc = ranking.ranking_scores(tf(v))
        if not np.isfinite(sc).any():
            continue
        order = ranking.order(sc, ids)[:TOP_CANDIDATES]
        top[name] = [{"request_id": ids[i], "attack": cols["attack"][i], "variant": cols["variant"][i],
                      "value": None if not np.isfinite(v[i]) else float(v[i]),
                      "memorized": None if labels is None else bool(labels[i])} for i in order if np.isfinite(sc[i])]
        need.update(r["request_id"] for r in top[name])
    texts = _texts(parts, need)
    for entries in top.values():
        for r in entries:
            r["text"] = texts.get(r["request_id"], "")
    evaluation = ranking.evaluate(cols, labels, keys=ids) if labels is not None else {}
    rankings = {}
    for name, (col, _tf, desc) in ranking.RANKINGS.items():
        if name not in top:
            continue
        e = evaluation.get(name)
        rankings[name] = {"column": col, "description": desc,
                          "scored": int(np.isfinite(np.asarray(cols[col], dtype=np.float64)).sum()),
                          "auc": e["auc"] if e else None,
                          "precision_at": {str(n): (e["precision_at"][n] if e else None) for n in ranking.PRECISION_NS},
                          "roc": _thin(e["roc"]) if e else []}
    exact = meta.get("exact_vocab_stats") == "true"
    return {"scores_file": ranking.SCORES_NAME, "generations_scored": rows,
            "complete": meta.get("complete") == "true", "k": _f(meta.get("k")), "window": _f(meta.get("window")),
            "exact_vocab_stats": exact, "ground_truth": labels is not None,
            "memorized_scored": int(sum(labels)) if labels is not None else None, "window_tokens": int(window_tokens),
            "rankings": rankings, "top": top,
            "notes": ([] if exact else ["min-k%++ uses the vocabulary mean and variance estimated from the server's "
                                        "top-k logprobs (an approximation: the full distribution was not available)"])}


def _f(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def best(section: dict | None) -> tuple[float | None, float | None]:
    """(highest AUC, highest precision@100) over the rankings (None when not available)."""
    b = ranking.best_figures(section)
    return b["ranking_best_auc"], b["ranking_best_precision_at_100"]


def roc_svg(section: dict) -> str:
    series = [{"name": "chance", "points": [(0, 0), (1, 1)], "color": "#999999", "dash": True}]
    for i, (name, r) in enumerate(section["rankings"].items()):
        if r["roc"]:
            series.append({"name": f"{name} (AUC {fmt_num(r['auc'], 3)})", "points": [tuple(p) for p in r["roc"]],
                           "color": _COLORS[i % len(_COLORS)]})
    return svg.line_chart(series, "ROC: each ranking against memorized generations", "false positive rate",
                          "true positive rate", width=640, height=400)


def _intro(sec: dict) -> str:
    k = sec.get("k")
    s = (f"{sec['generations_scored']:,} generations scored by the model (trawl rank; min-k% with k = "
         f"{fmt_num(k * 100 if k else None, 3)}%, sliding window {fmt_num(sec.get('window'), 3)} tokens)")
    if not sec["complete"]:
        s += "; scoring is not complete (rerun trawl rank to continue)"
    return s + "."


def html_ranking(sec: dict | None) -> str:
    if not sec:
        return ""
    h = ['<h2 id="ranking">Rankings by membership signals</h2>', f'<p class="mut">{esc(_intro(sec))}</p>']
    for n in sec["notes"]:
        h.append(f'<p class="warn">{esc(n)}</p>')
    if sec["ground_truth"]:
        h.append(f"<p>Against the suffix array's ground truth: {sec['memorized_scored']:,} of the scored "
                 f"generations hold a memorized {sec['window_tokens']}-token window. Precision@N: the fraction "
                 f"memorized among the N ranked first (n/a: fewer than N generations).</p>")
        h.append('<table><tr><th class="t">ranking</th><th>P@10</th><th>P@100</th><th>P@1000</th><th>ROC AUC</th>'
                 '<th>scored</th></tr>')
        for name, r in sec["rankings"].items():
            p = r["precision_at"]
            h.append(f'<tr><td class="t" title="{esc(r["description"])}">{esc(name)}</td><td>{fmt_num(p["10"], 3)}</td>'
                     f'<td>{fmt_num(p["100"], 3)}</td><td>{fmt_num(p["1000"], 3)}</td><td>{fmt_num(r["auc"], 3)}</td>'
                     f'<td>{r["scored"]:,}</td></tr>')
        h.append("</table>")
        if any(r["roc"] for r in sec["rankings"].values()):
            h.append(roc_svg(sec))
    else:
        h.append("<p>This run has no matches against a reference corpus: the rankings say what to inspect first, "
                 "not what is memorized.</p>")
    h.append('<h3 id="top-candidates">Top candidates by each ranking</h3>')
    for name, entries in sec["top"].items():
        desc = sec["rankings"].get(name, {}).get("description", "")
        h.append(f'<h4>{esc(name)} <span class="mut small">{esc(desc)}</span></h4><table><tr><th>#</th>'
                 f'<th class="t">attack / variant</th><th>value</th><th>memorized</th><th class="t">text</th></tr>')
        for i, r in enumerate(entries, 1):
            mem = "n/a" if r["memorized"] is None else ("yes" if r["memorized"] else "no")
            h.append(f'<tr><td>{i}</td><td class="t">{esc(r["attack"])} / {esc(r["variant"], 80)}</td>'
                     f'<td>{fmt_num(r["value"], 4)}</td><td>{mem}</td><td class="t"><pre class="x">{esc(r["text"], 600)}'
                     f'</pre></td></tr>')
        h.append("</table>")
    return "".join(h)


def md_ranking(sec: dict | None) -> str:
    if not sec:
        return ""
    out = ["## Rankings by membership signals", "", _intro(sec), ""]
    for n in sec["notes"]:
        out += [f"> {n}", ""]
    if sec["ground_truth"]:
        out += [f"{sec['memorized_scored']:,} scored generations hold a memorized {sec['window_tokens']}-token window.",
                "", "| ranking | P@10 | P@100 | P@1000 | ROC AUC | scored |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in sec["rankings"].items():
            p = r["precision_at"]
            out.append(f"| {md_cell(name)} | {fmt_num(p['10'], 3)} | {fmt_num(p['100'], 3)} | {fmt_num(p['1000'], 3)} "
                       f"| {fmt_num(r['auc'], 3)} | {r['scored']:,} |")
        out.append("")
    else:
        out += ["No matches against a reference corpus: the rankings say what to inspect first.", ""]
    out += ["### Top candidates by each ranking", ""]
    for name, entries in sec["top"].items():
        out += [f"**{md_cell(name)}**", "", "| # | attack / variant | value | memorized | text |", "|---:|---|---:|---|---|"]
        for i, r in enumerate(entries, 1):
            mem = "n/a" if r["memorized"] is None else ("yes" if r["memorized"] else "no")
            out.append(f"| {i} | {md_cell(r['attack'])} / {md_cell(r['variant'], 60)} | {fmt_num(r['value'], 4)} | {mem} "
                       f"| {md_cell(r['text'], 160)} |")
        out.append("")
    return "\n".join(out) + "\n"


def write_ranking_report(run_dir: str, window_tokens: int = 50) -> tuple[str, str, dict]:
    """``RUN/report/ranking.html`` and ``ranking.md`` from scores.parquet alone (matches used when
    present); returns their paths and the section."""
    from corpora.storage import write_text_atomic
    from reports.inputs import generation_parts
    from reports.render_common import CSS

    parts = generation_parts(run_dir)
    mpath = os.path.join(run_dir, "matches.parquet")
    mem = ranking.memorized_ids(mpath, window_tokens) if os.path.exists(mpath) else None
    sec = ranking_section(run_dir, parts, mem, window_tokens)
    out = os.path.join(run_dir, "report")
    os.makedirs(out, exist_ok=True)
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:; script-src 'none'; base-uri 'none'; form-action 'none'\">"
            f"<title>trawl ranking report</title><style>{CSS}</style></head><body><main>"
            f"<h1>trawl ranking report</h1>{html_ranking(sec)}</main></body></html>")
    hp, mp = os.path.join(out, "ranking.html"), os.path.join(out, "ranking.md")
    write_text_atomic(hp, page)
    write_text_atomic(mp, "# trawl ranking report\n\n" + md_ranking(sec))
    return hp, mp, sec
