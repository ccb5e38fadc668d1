"""The self-contained HTML report of a run (:func:`render_html`), built from metrics.json.

Guarantees: every string from the run passes through :func:`reports.render_common.esc`; the
page has no script at all and a Content-Security-Policy that forbids scripts and remote loads,
so it works offline and a missed escape still could not run code; charts are inline SVG
(:mod:`reports.svg`).
"""
from __future__ import annotations

import html
import os

from reports import render_sections as rs
from reports import svg
from reports.categories import CATEGORIES, CATEGORY_LABELS
from reports.render_common import (CSS, BREAKDOWN_COLS, BREAKDOWN_LEGEND, MAX_SHOWN_CHARS, NO_COST, TOP_SHOWN,
                                   VARIANTS_SHOWN, clean, cost_fig, esc, fmt_int, fmt_num, fmt_pct, fmt_usd,
                                   headline, lr_class, pricing_line, run_state_line, variant_rows)
from reports.render_np import html_section
from reports.spans import THRESHOLDS


def render_html(m: dict) -> str:
    """The whole document (sections in page order)."""
    h = []
    for section in (_html_head, _html_headline, _html_longest_run, _html_run_lengths, _html_extrapolation,
                    _html_exact_np, _html_cost, _html_breakdowns, _html_near_duplicates, _html_categories,
                    _html_spans, _html_ranking, _html_definitions):
        section(m, h.append)
    return "".join(h)


def _html_ranking(m: dict, a) -> None:
    """Rankings by membership signals (trawl rank's scores.parquet), when the run has them."""
    from reports.render_ranking import html_ranking
    a(html_ranking(m.get("ranking")))


def _html_head(m: dict, a) -> None:
    """Page head, title, run state, matcher threshold, warnings."""
    p, W, run = m["parameters"], m["parameters"]["window_tokens"], m["run"]
    title = "trawl memorization report"
    a("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
    a("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
      "img-src data:; script-src 'none'; base-uri 'none'; form-action 'none'\">")
    a("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">")
    a(f"<title>{esc(title)} \u2014 {esc(', '.join(run['run_ids']) or os.path.basename(run['run_dir']))}</title>")
    a(f"<style>{CSS}</style></head><body><main>")
    a(f"<h1>{esc(title)}</h1>")
    a("<p class=\"mut\">Run <b>" + esc(", ".join(run["run_ids"]) or run["run_dir"]) + "</b> \u00b7 model "
      + esc(", ".join(run["models"]) or "unknown") + " \u00b7 report schema " + esc(m["schema_version"])
      + " \u00b7 generated " + esc(m["generated_at"]) + (" \u00b7 <b>personal data redacted</b>" if m.get("redacted") else "")
      + "</p>")
    a(f"<p id=\"run-state\" data-status=\"{esc((run.get('state') or {}).get('status', ''), 40)}\">Run "
      f"<b>{esc(run_state_line(m), 1000)}</b>; <span id=\"pricing\">{esc(pricing_line(m), 1000)}</span>.</p>")
    a(f"<p>A token counts as <b>memorized</b> when it lies in a window of {W} consecutive generated tokens whose exact "
      f"text occurs in the reference corpus (Nasr et al. 2023). The matcher ran with a threshold of "
      f"<b id=\"matcher-threshold\">{esc(p['matcher_min_tokens'])} tokens</b> ({esc(p['matcher_min_tokens_source'])}); "
      f"index manifest sha256 <code>{esc(str(p['index_manifest_sha256'] or 'not recorded')[:16])}</code>.</p>")
    if m.get("warnings"):
        a("<div class=\"warn\"><b>Warnings</b><ul>" + "".join(f"<li>{esc(w, 1000)}</li>" for w in m["warnings"])
          + "</ul></div>")


def _html_headline(m: dict, a) -> None:
    """Headline cards and the raw / non-trivial table."""
    a("<section id=\"headline\"><h2>Headline figures</h2><div class=\"cards\">")
    for key, label, value, expl in headline(m):
        a(f"<div class=\"card\" data-metric=\"{esc(key)}\"><div class=\"l\">{esc(label)}</div>"
          f"<div class=\"v\">{esc(value)}</div><div class=\"d\">{esc(expl, 1000)}</div></div>")
    a("</div>" + rs.html_headline_table(m) + "</section>")


def _html_longest_run(m: dict, a) -> None:
    """The longest verbatim run, whatever its length; then the memorization classes."""
    W = m["parameters"]["window_tokens"]
    lr = m.get("longest_run")
    a("<section id=\"longest-run\"><h2>Longest verbatim run</h2>")
    if lr:
        a(f"<p class=\"small mut\">The single longest verbatim span the matcher reported (most tokens, then most "
          f"bytes), memorized (\u2265 {W} tokens) or not.</p><div class=\"span\">"
          f"<span class=\"tag\">{fmt_int(lr['tokens'])} tokens</span><span class=\"tag\">{fmt_int(lr['bytes'])} bytes</span>"
          f"<span class=\"tag\">{esc(lr['attack'], 40)} / {esc(lr['variant'], 60)}</span>"
          + (f"<span class=\"tag\" id=\"longest-run-class\">class: {esc(lr_class(m))}</span>" if lr_class(m) else "")
          + f"<div class=\"small mut\">source document <b>{esc(lr['doc_id'])}</b> "
          f"(<span class=\"src\">{esc(lr['source'] or 'source not recorded', 500)}</span>), byte offset "
          f"{fmt_int(lr['doc_offset'])}; {fmt_int(lr['occurrences'])} corpus occurrence(s); request "
          f"{esc(lr['request_id'], 80)}</div><pre class=\"x\">{esc(lr['text'], MAX_SHOWN_CHARS)}</pre></div>")
    else:
        a("<p>No verbatim span was reported by the matcher.</p>")
    a("</section>")
    a(rs.html_taxonomy(m))


def _html_run_lengths(m: dict, a) -> None:
    """Spans and generations per threshold, per attack, and the run-length chart."""
    t, p, W = m["metrics"], m["parameters"], m["parameters"]["window_tokens"]
    a("<section id=\"run-lengths\"><h2>Verbatim run lengths</h2>")
    a(f"<p class=\"small mut\">A run is a maximal verbatim span; its length is the number of generation tokens fully inside "
      f"it. Counts below the matcher threshold ({esc(p['matcher_min_tokens'])} tokens) are not measured and shown as "
      f"\u201cnot measured\u201d.</p>")
    a("<table><tr><th class=\"t\">At least</th><th>Spans</th><th>Generations</th></tr>")
    for th in THRESHOLDS:
        sp, gn = t.get(f"spans_ge_{th}"), t.get(f"generations_ge_{th}")
        a(f"<tr data-threshold=\"{th}\"><td class=\"t\">{th} tokens</td><td>{fmt_int(sp) if sp is not None else 'not measured'}</td>"
          f"<td>{fmt_int(gn) if gn is not None else 'not measured'}</td></tr>")
    a("</table>")
    if len(m["per_attack"]) > 1:
        a("<h3>Per attack: generations holding a run of at least T tokens</h3><table><tr><th class=\"t\">Attack</th>"
          + "".join(f"<th>\u2265 {th}</th>" for th in THRESHOLDS) + "</tr>")
        for atk, f in sorted(m["per_attack"].items()):
            a(f"<tr><td class=\"t a\">{esc(atk, 60)}</td>" + "".join(
                f"<td>{fmt_int(f.get(f'generations_ge_{th}')) if f.get(f'generations_ge_{th}') is not None else 'not measured'}</td>"
                for th in THRESHOLDS) + "</tr>")
        a("</table>")
    rl = {int(k): v for k, v in m["run_lengths"]["counts_by_tokens"].items()}
    if rl:
        a(svg.bar_chart(_log_bins(rl, p["matcher_min_tokens"]), "Distribution of verbatim run lengths",
                        "run length (tokens, bins)", "spans", marks=_bin_marks(rl, p["matcher_min_tokens"], W)))
    a("</section>")


def _html_extrapolation(m: dict, a) -> None:
    """Good-Turing, Chao1, the accumulation curve and f_k."""
    e = m["extrapolation"]
    a("<section id=\"extrapolation\"><h2>How much more is there? (extrapolation)</h2>")
    fq = e["frequency_counts"]
    a(f"<p>Each unique memorized window is counted once per generation; f<sub>k</sub> is the number of unique windows seen "
      f"in exactly k generations. Observed: <b>{fmt_int(e['unique_windows'])}</b> unique windows in "
      f"{fmt_int(e['window_incidences'])} (window, generation) incidences; f<sub>1</sub> = {fmt_int(fq.get('1', 0))}, "
      f"f<sub>2</sub> = {fmt_int(fq.get('2', 0))}. <b>Good-Turing</b>: the chance that the next memorized window is new "
      f"is f<sub>1</sub>/N = {fmt_pct(e['good_turing_new_probability'])}. <b>Chao1</b> estimate of all extractable "
      f"unique windows: {fmt_num(round(e['chao1_total_windows']))} (n<sub>obs</sub> + f<sub>1</sub>\u00b2/(2 f<sub>2</sub>), "
      f"or n<sub>obs</sub> + f<sub>1</sub>(f<sub>1</sub>\u22121)/2 when f<sub>2</sub> = 0). "
      f"Curve: {esc(e['method'])}.</p>")
    if fq and not fq.get("2"):
        a("<p class=\"warn\">No memorized window was seen in two generations (f<sub>2</sub> = 0): Chao1 falls back to its "
          "bias-corrected form and the extrapolation is unreliable; collect more generations before relying on "
          "the estimate of the total.</p>")
    if e["observed_curve"]:
        obs = [(x, y) for x, y in e["observed_curve"]]
        ext = [(x, y) for x, y in e["extrapolated_curve"]]
        top = max([y for _, y in obs + ext] + [1])
        chao = e["chao1_total_windows"]
        hl = (chao, f"Chao1 = {fmt_num(round(chao))}") if chao <= top * 1.6 else None
        a(svg.line_chart(
            [{"name": "observed", "points": obs, "color": "#3b6ea5"},
             {"name": "extrapolated (Chao et al. 2014)", "points": ext, "color": "#c0392b", "dash": True}],
            "Unique memorized windows against generations", "generations", "unique memorized windows",
            hline=hl, vline=(obs[-1][0], "observed | extrapolated")))
        if hl is None:
            a(f"<p class=\"small mut\">The Chao1 asymptote ({fmt_num(round(chao))}) lies above the chart.</p>")
    if fq:
        a("<table style=\"width:auto\"><tr><th class=\"t\">k (generations)</th>" +
          "".join(f"<th>{esc(k)}</th>" for k in list(fq)[:12]) + "</tr><tr><td class=\"t\">f<sub>k</sub></td>" +
          "".join(f"<td>{fmt_int(v)}</td>" for v in list(fq.values())[:12]) + "</tr></table>")
    a("</section>")


def _html_exact_np(m: dict, a) -> None:
    """Exact (n,p)-extraction (reports/render_np.py), when the run has RUN/extraction_np.json."""
    a(html_section(m.get("extraction_np")))


def _html_cost(m: dict, a) -> None:
    """Total cost and cost per figure."""
    t, p, W = m["metrics"], m["parameters"], m["parameters"]["window_tokens"]
    a("<section id=\"cost\"><h2>Cost</h2>")
    a(f"<p>Total cost <b>{fmt_usd(t['total_cost_usd']) if t['total_cost_usd'] else NO_COST}</b> "
      f"({esc(p['cost_source'])}). Extractable MB per dollar: <b>{esc(cost_fig(t['mb_per_dollar'], m, 'mb'))}</b> "
      f"(unique memorized bytes / 10<sup>6</sup> / total cost). Dollars per unique memorized example: "
      f"<b>{esc(cost_fig(t['usd_per_unique_window'], m, 'usd'))}</b> (total cost / unique memorized {W}-token windows).</p>")
    a(f"<p class=\"small\">Basis of these prices \u2014 {esc(pricing_line(m), 1000)}.</p>")
    a("</section>")


def _html_breakdowns(m: dict, a) -> None:
    """Per attack, per variant, and the per-variant bar charts."""
    a("<section id=\"per-attack\"><h2>Per attack</h2>")
    a(_html_breakdown([(atk, None, f) for atk, f in sorted(m["per_attack"].items())], show_variant=False))
    a("<p class=\"small mut\">" + esc(BREAKDOWN_LEGEND, 2000) + "</p>")
    a("</section><section id=\"per-variant\"><h2>Per attack and variant</h2>")
    a("<p class=\"small mut\">Variant = the repeated word for the divergence attack, the prefix source for prefix attacks. "
      f"Sorted by memorized generations; at most {VARIANTS_SHOWN} per attack shown (all are in metrics.json).</p>")
    rows = list(variant_rows(m))
    a(_html_breakdown(rows, show_variant=True))
    for attack, vs in sorted(m["per_variant"].items()):
        if len(vs) < 2 or attack == "discoverable":
            continue
        bars = sorted(((v or "(none)", f["memorized_generation_fraction"] or 0) for v, f in vs.items()),
                      key=lambda b: (-b[1], b[0]))[:40]
        what = "repeated word" if attack in ("divergence", "special_chars") else "variant"
        a(svg.bar_chart(bars, f"{attack}: share of generations memorized, by {what}"
                        + (" (top 40)" if len(vs) > 40 else ""), what, "memorized generations",
                        value_fmt=lambda v: f"{v * 100:.3g}%"))
    a("</section>")


def _html_near_duplicates(m: dict, a) -> None:
    """Near-duplicate clusters and approximate memorization."""
    t, p, W = m["metrics"], m["parameters"], m["parameters"]["window_tokens"]
    nd = m["near_duplicates"]
    a("<section id=\"near-duplicates\"><h2>Unique memorized documents (near-duplicates)</h2>")
    a(f"<p>{fmt_int(nd['distinct_texts'])} distinct memorized texts (spans of \u2265 {W} tokens) form "
      f"<b>{fmt_int(nd['clusters'])}</b> near-duplicate clusters (MinHash LSH as datasketch computes it, {nd['num_perm']} permutations, "
      f"Jaccard \u2265 {nd['threshold']} on {esc(nd['shingle'])}); largest cluster {fmt_int(nd['largest_cluster'])} texts. "
      f"They come from {fmt_int(t['unique_source_documents'])} distinct corpus documents (canonical occurrence)."
      + (f" Only the first {fmt_int(nd['clustered_texts'])} texts were clustered." if nd.get("capped") else "") + "</p>")
    a("</section><section id=\"approximate\"><h2>Approximate memorization (reported apart)</h2>")
    a(f"<p>Discoverable-attack rows whose greedy continuation is within an edit-distance ratio of "
      f"{p['approximate_edit_distance_ratio']} of the corpus continuation but not identical: "
      f"<b>{fmt_int(t['approximate_memorization_hits'])}</b>; exact discoverable hits: "
      f"<b>{fmt_int(t['exact_discoverable_hits'])}</b>. These are not part of the verbatim figures above.</p>")
    for ex_ in m["approximate"]["examples"][:10]:
        a(f"<div class=\"span\"><span class=\"tag\">ratio {esc(ex_['edit_distance_ratio'])}</span>"
          f"<span class=\"tag\">doc {esc(ex_['doc_id'])}</span><span class=\"tag\">{esc(ex_['variant'], 80)}</span>"
          f"<div class=\"small mut\">model output</div><pre class=\"x\">{esc(ex_['completion'], 1500)}</pre>"
          f"<div class=\"small mut\">corpus continuation</div><pre class=\"x\">{esc(ex_['target'], 1500)}</pre></div>")
    a("</section>")


def _html_categories(m: dict, a) -> None:
    """Content categories; then repeated draws."""
    W = m["parameters"]["window_tokens"]
    a("<section id=\"categories\"><h2>What was extracted (content categories)</h2>")
    a("<p class=\"small mut\">Distinct memorized texts (spans of \u2265 " + str(W) + " tokens) in which each detector fired, "
      "and the number of distinct values found. Detectors are documented regular expressions (reports/categories.py)."
      + (" Values are redacted." if m.get("redacted") else "") + "</p>")
    a("<table><tr><th class=\"t\">Category</th><th>Texts</th><th>Distinct values</th><th class=\"t\">Examples</th></tr>")
    for c in CATEGORIES:
        cat = m["categories"][c]
        exs = ", ".join(clean(x, 80) for x in cat["examples"][:5]) if c not in ("code",) else ""
        a(f"<tr data-category=\"{c}\"><td class=\"t\">{esc(CATEGORY_LABELS[c])}</td><td>{fmt_int(cat['spans'])}</td>"
          f"<td>{fmt_int(cat['unique_values'])}</td><td class=\"t\">{html.escape(exs, quote=True)}</td></tr>")
    a("</table></section>")
    a(rs.html_repeated(m))


def _html_spans(m: dict, a) -> None:
    """The memorized spans, longest first."""
    a(f"<section id=\"spans\"><h2>Memorized spans (longest first)</h2><p class=\"small mut\">Each distinct memorized "
      f"text once; \u201cgenerations\u201d = how many generations emitted it; \u201coccurrences\u201d = how often the "
      f"corpus holds it; the document shown is the canonical (first) occurrence unless an index was given. Text is "
      f"shown escaped, control characters as visible symbols, cut at {MAX_SHOWN_CHARS:,} characters.</p>")
    for i, s in enumerate(m["top_spans"][:TOP_SHOWN]):
        docs = "; ".join(f"doc {d['doc_id']} ({clean(d.get('source'), 200)})" for d in s.get("documents", [])[:5])
        held = s.get("documents_holding")
        held = held if held is not None else f"1 to {fmt_int(s['occurrences'])} (no index: occurrences, not documents)"
        a(f"<div class=\"span\" id=\"span-{i}\"><span class=\"tag\">{fmt_int(s['tokens'])} tokens</span>"
          f"<span class=\"tag\">{fmt_int(s['bytes'])} bytes</span><span class=\"tag\">{fmt_int(s['generations'])} generation(s)</span>"
          f"<span class=\"tag\">{fmt_int(s['occurrences'])} corpus occurrence(s)</span>"
          f"<span class=\"tag\">{esc(s['attack'], 40)} / {esc(s['variant'], 60)}</span>"
          + (f"<span class=\"tag\">class: {esc(s['taxonomy'])}</span>" if s.get("taxonomy") else "")
          + "".join(f"<span class=\"tag\">{esc(CATEGORY_LABELS[c])}</span>" for c in s.get("categories", []))
          + f"<div class=\"small mut\">documents holding it: {esc(held)}; "
          f"where: {html.escape(docs, quote=True)}; shard {esc(s['shard'])}, offset {fmt_int(s['doc_offset'])}</div>"
          f"<pre class=\"x\">{esc(s['text'], MAX_SHOWN_CHARS)}</pre></div>")
    if not m["top_spans"]:
        a("<p>No memorized span.</p>")
    a("</section>")


def _html_definitions(m: dict, a) -> None:
    """Definitions, and the end of the page."""
    a("<section id=\"definitions\"><h2>Definitions</h2><dl class=\"defs\">")
    for k, v in m["definitions"].items():
        a(f"<dt>{esc(k)}</dt><dd>{esc(v, 2000)}</dd>")
    a("</dl><p class=\"small mut\">Windows are compared as 64-bit BLAKE2b digests (expected colliding pairs n\u00b2/2\u2076\u2075). "
      "Unique memorized bytes use each span's canonical corpus occurrence. Full figures: metrics.json (schema "
      + esc(m["schema_version"]) + ").</p></section>")
    a("</main></body></html>\n")


def _html_breakdown(rows, show_variant: bool) -> str:
    out = ["<table><tr><th class=\"t\">Attack</th>" + ("<th class=\"t\">Variant</th>" if show_variant else "")
           + "".join(f"<th>{esc(label)}</th>" for _, label, _f in BREAKDOWN_COLS) + "</tr>"]
    for atk, var, f in rows:
        if show_variant and var is None:
            out.append(f"<tr><td class=\"t\">{esc(atk, 60)}</td><td class=\"t\" colspan=\"{len(BREAKDOWN_COLS) + 1}\">"
                       f"\u2026 {fmt_int(f)} more variants in metrics.json</td></tr>")
            continue
        out.append(f"<tr><td class=\"t a\">{esc(atk, 60)}</td>" + (f"<td class=\"t\">{esc(var, 80)}</td>" if show_variant else "")
                   + "".join(f"<td>{esc(fn(f.get(k)))}</td>" for k, _l, fn in BREAKDOWN_COLS) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _bins(min_tokens: int) -> list[tuple[int, int]]:
    edges = [min_tokens] + [e for e in (20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000) if e > min_tokens]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)] + [(edges[-1], 10 ** 12)]


def _log_bins(rl: dict[int, int], min_tokens: int) -> list[tuple[str, float]]:
    out = []
    bins = _bins(min_tokens)
    top = max(rl)
    for lo, hi in bins:
        if lo > top:
            break
        label = f"{lo}-{hi - 1}" if hi < 10 ** 12 else f"{lo}+"
        out.append((label, float(sum(v for k, v in rl.items() if lo <= k < hi))))
    return out


def _bin_marks(rl, min_tokens, W):
    for i, (lo, _hi) in enumerate(_bins(min_tokens)):
        if lo == W and lo <= max(rl):
            return [(i, f"\u2265 {W}: memorized")]
    return []
