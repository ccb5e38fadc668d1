"""The report's "Exact (n,p)-extraction" section, from ``RUN/extraction_np.json`` (written by the
discoverable attack's scoring step; docs/CONTRACTS.md). :func:`load_extraction_np` reads and
checks the file (a damaged one is a warning and no section, never a wrong figure);
:func:`html_section` and :func:`md_section` render it (every string escaped)."""
from __future__ import annotations

import json
import math
import os

from reports import svg
from reports.render_common import esc, fmt_num, md_cell

FILE = "extraction_np.json"
DOCS_SHOWN = 50


def _num(v, lo=0.0, hi=1.0) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _curve(c, hi=1.0) -> bool:
    return isinstance(c, list) and all(isinstance(x, list) and len(x) == 2 and _int(x[0]) and x[0] >= 1
                                       and _num(x[1], 0.0, hi) for x in c)


def _sound(d) -> bool:
    """Every field the section reads has its type and range (docs/CONTRACTS.md, "Exact (n,p)")."""
    if not (isinstance(d, dict) and d.get("format") == "trawl.extraction_np" and d.get("format_version") == 1):
        return False
    if not (isinstance(d.get("scheme"), str) and isinstance(d.get("order_note"), str)
            and isinstance(d.get("full_distribution"), bool) and isinstance(d.get("documents"), list)
            and isinstance(d.get("summary"), dict)):
        return False
    s = d["summary"]
    counts = ("documents", "exact_documents", "bound_documents", "unavailable_documents")
    if not all(_int(s.get(k)) for k in counts) or s["documents"] != sum(s[k] for k in counts[1:]):
        return False
    if not (_curve(s.get("mean_curve")) and isinstance(s.get("extractable"), dict)
            and all(_curve(v) and len(v) == len(s["mean_curve"]) for v in s["extractable"].values())
            and isinstance(s.get("median_queries_needed"), dict)
            and all(v is None or _int(v) for v in s["median_queries_needed"].values())):
        return False
    for doc in d["documents"]:
        if not (isinstance(doc, dict) and doc.get("kind") in ("exact", "bounds", "unavailable") and _int(doc.get("tokens"))
                and isinstance(doc.get("doc_id"), (int, str)) and isinstance(doc.get("source"), (str, type(None)))):
            return False
        if not all(doc.get(k) is None or _num(doc.get(k)) for k in ("p_z", "p_z_lower", "p_z_upper")):
            return False
        if doc["kind"] == "exact" and doc.get("p_z") is None:
            return False
        if doc["kind"] == "bounds" and (doc.get("p_z_lower") is None or doc.get("p_z_upper") is None):
            return False
        mc = doc.get("monte_carlo")
        if not (isinstance(mc, dict) and _int(mc.get("samples")) and _int(mc.get("hits"))
                and mc["hits"] <= mc["samples"] and _num(mc.get("p_z"))):
            return False
        th = mc.get("token_hits")       # optional (CONTRACTS §8)
        if th is not None and not (_int(th) and th <= mc["hits"]):
            return False
    return True


def load_extraction_np(run_dir: str, warnings: list[str]) -> dict | None:
    """The file's content when present and sound; None otherwise (a warning says why when damaged)."""
    path = os.path.join(os.fspath(run_dir), FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read().decode("utf-8"))
        if not _sound(d):
            raise ValueError("unexpected content")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        warnings.append(f"{path}: not a sound exact (n,p) file ({type(exc).__name__}); the section is left out")
        return None
    return d


def _pz_text(doc: dict) -> str:
    if doc["kind"] == "exact":
        return f"{doc['p_z']:.4g}" + (" (observed greedy run)" if doc.get("basis") == "observed" else "")
    if doc["kind"] == "bounds":
        return f"[{doc['p_z_lower']:.3g}, {doc['p_z_upper']:.3g}]"
    return "unavailable"


def _mc_text(mc: dict) -> str:
    """hits / samples, and the token hits (the event p_z is the probability of) where they differ."""
    out = f"{mc.get('hits')} / {mc.get('samples')}"
    th = mc.get("token_hits")
    if th is not None and th != mc.get("hits"):
        out += f" ({th} as the target's tokens)"
    return out


def _intro(d: dict) -> str:
    s = d["summary"]
    return (f"p_z is the probability that one sample reproduces a document's target suffix (Hayes et al. 2024), "
            f"computed from one scoring pass of prefix + target under the attack's sampling scheme ({d['scheme']}; "
            f"{d['order_note']}); p = 1 - (1 - p_z)^n for n queries. Scorer: {d['scorer']} "
            f"({'full distributions: exact' if d['full_distribution'] else 'top-k logprobs: exact where stated, else bounds'}). "
            f"Documents: {s['documents']} ({s['exact_documents']} exact, {s['bound_documents']} bounded, "
            f"{s['unavailable_documents']} unavailable: the Monte Carlo rate stands for those). Curves use exact "
            f"values and the lower bound of bounded documents (floors). Monte Carlo: samples whose text starts with "
            f"the target, and of those, the ones whose first tokens are the target's tokens (what p_z is the "
            f"probability of; another split or a last token running past the target is a text hit only)."
            + _rows_text(d))


def _rows_text(d: dict) -> str:
    """What the rows check said (optional key ``rows``; docs/CONTRACTS.md), when the scorer's rows are not the
    sampler's."""
    rows = d.get("rows")
    if isinstance(rows, dict) and rows.get("sampler_rows") is False and isinstance(rows.get("note"), str):
        return f" Not the sampler's rows: {rows['note'][:600]}"
    return ""


def html_section(d: dict | None) -> str:
    if not d:
        return ""
    s = d["summary"]
    out = ["<section id=\"exact-np\"><h2>Exact (n,p)-extraction</h2>", f"<p>{esc(_intro(d), 2000)}</p>"]
    series = []
    if s.get("mean_curve"):
        series.append({"name": "mean p over documents", "color": svg.PALETTE[0],
                       "points": [(math.log10(n), p) for n, p in s["mean_curve"]]})
    for i, (p, pts) in enumerate((s.get("extractable") or {}).items()):
        series.append({"name": f"share (n, {p})-extractable", "color": svg.PALETTE[(i + 1) % len(svg.PALETTE)],
                       "dash": True, "points": [(math.log10(n), v) for n, v in pts]})
    if series:
        out.append(svg.line_chart(series, "(n,p)-extraction against queries", "log10 n (queries)", "probability / share"))
    need = s.get("median_queries_needed") or {}
    if need:
        out.append("<p>Median queries for probability p: " + "; ".join(
            f"p = {esc(p)}: {esc(fmt_num(v) if v is not None else 'never (p_z = 0)')}" for p, v in need.items()) + ".</p>")
    out.append("<table><tr><th class=\"t\">document</th><th>tokens</th><th>p_z (exact)</th>"
               "<th>Monte Carlo (hits / samples)</th></tr>")
    for doc in d["documents"][:DOCS_SHOWN]:
        mc = doc["monte_carlo"]
        out.append(f"<tr><td class=\"t\">{esc(doc.get('doc_id'))} {esc(doc.get('source') or '', 80)}</td>"
                   f"<td>{esc(doc.get('tokens'))}</td><td>{esc(_pz_text(doc))}</td>"
                   f"<td>{esc(_mc_text(mc))}</td></tr>")
    out.append("</table>")
    if len(d["documents"]) > DOCS_SHOWN:
        out.append(f"<p class=\"small mut\">{len(d['documents']) - DOCS_SHOWN} more documents in {FILE}.</p>")
    out.append("</section>")
    return "".join(out)


def md_section(d: dict | None) -> str:
    if not d:
        return ""
    s = d["summary"]
    L = ["\n## Exact (n,p)-extraction\n", md_cell(_intro(d), 2000) + "\n"]
    if s.get("mean_curve"):
        L.append("| n | mean p | " + " | ".join(f"share ({p})-extractable" for p in (s.get("extractable") or {})) + " |")
        L.append("|---|---|" + "---|" * len(s.get("extractable") or {}))
        ext = s.get("extractable") or {}
        for i, (n, p) in enumerate(s["mean_curve"]):
            if n in (1, 10, 100, 1000, 10_000, 100_000, 1_000_000):
                L.append(f"| {n:,} | {p:.4g} | " + " | ".join(f"{v[i][1]:.3g}" for v in ext.values()) + " |")
        L.append("")
    L.append("| document | tokens | p_z (exact) | Monte Carlo (hits / samples) |")
    L.append("|---|---|---|---|")
    for doc in d["documents"][:DOCS_SHOWN]:
        mc = doc["monte_carlo"]
        L.append(f"| {md_cell(doc.get('doc_id'))} | {md_cell(doc.get('tokens'))} | {md_cell(_pz_text(doc))} | "
                 f"{md_cell(_mc_text(mc))} |")
    return "\n".join(L) + "\n"


__all__ = ["html_section", "load_extraction_np", "md_section"]
