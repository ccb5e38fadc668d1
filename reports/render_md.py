"""The Markdown summary of a run's report (:func:`render_markdown`), built from metrics.json.

Guarantees: every string from the run passes through :func:`reports.render_common.md_cell`
(escaped, one line) or :func:`reports.render_common.md_fence` (a fence no text can close).
"""
from __future__ import annotations

from reports import render_sections as rs
from reports.categories import CATEGORIES, CATEGORY_LABELS
from reports.render_common import (BREAKDOWN_COLS, BREAKDOWN_LEGEND, MAX_SHOWN_CHARS, NO_COST, cost_fig, fmt_int,
                                   fmt_num, fmt_pct, fmt_usd, headline, longest_run_facts, lr_class, md_cell,
                                   md_fence, pricing_line, run_state_line, variant_rows)
from reports.render_np import md_section
from reports.spans import THRESHOLDS

def render_markdown(m: dict) -> str:
    """The whole document (sections in page order)."""
    L = []
    for section in (_md_head, _md_headline, _md_longest_run, _md_run_lengths, _md_extrapolation_cost,
                    _md_exact_np, _md_breakdowns, _md_texts, _md_spans, _md_ranking):
        section(m, L.append)
    return "\n".join(L) + "\n"


def _md_ranking(m: dict, a) -> None:
    """Rankings by membership signals (trawl rank's scores.parquet), when the run has them."""
    from reports.render_ranking import md_ranking
    if m.get("ranking"):
        a(md_ranking(m["ranking"]))


def _md_head(m: dict, a) -> None:
    """Title, run, matcher threshold, run state, warnings."""
    p, W, run = m["parameters"], m["parameters"]["window_tokens"], m["run"]
    a("# trawl memorization report\n")
    a(f"Run **{md_cell(', '.join(run['run_ids']) or run['run_dir'])}**, model {md_cell(', '.join(run['models']) or 'unknown')}, "
      f"schema {m['schema_version']}, generated {m['generated_at']}"
      + (", **personal data redacted**" if m.get("redacted") else "") + ".\n")
    a(f"A token counts as memorized when it lies in a window of {W} consecutive generated tokens whose exact text "
      f"occurs in the reference corpus (Nasr et al. 2023). Matcher threshold: {p['matcher_min_tokens']} tokens "
      f"({md_cell(p['matcher_min_tokens_source'])}).\n")
    a(f"Run {md_cell(run_state_line(m), 1000)}; {md_cell(pricing_line(m), 1000)}.\n")
    for w in m.get("warnings", []):
        a(f"> **Warning:** {md_cell(w, 1000)}\n")


def _md_headline(m: dict, a) -> None:
    """Headline figures and the raw / non-trivial table."""
    a("## Headline figures\n")
    a("| Figure | Value | Definition |\n|---|---|---|")
    for key, label, value, expl in headline(m):
        a(f"| {md_cell(label)} | {md_cell(value)} | {md_cell(expl, 400)} |")
    a(rs.md_headline_table(m))


def _md_longest_run(m: dict, a) -> None:
    """The longest verbatim run; then the memorization classes."""
    a("\n## Longest verbatim run\n")
    lr = m.get("longest_run")
    if lr:
        a(f"The single longest verbatim span the matcher reported (most tokens, then most bytes), memorized or not: "
          f"{md_cell(longest_run_facts(lr), 1000)}"
          + (f"; class: {md_cell(lr_class(m))}" if lr_class(m) else "") + ".\n")
        a(md_fence(lr["text"], MAX_SHOWN_CHARS) + "\n")
    else:
        a("No verbatim span was reported by the matcher.\n")
    a(rs.md_taxonomy(m))


def _md_run_lengths(m: dict, a) -> None:
    """Spans and generations per threshold (per attack when several)."""
    t = m["metrics"]
    a("\n## Verbatim run lengths\n")
    a("| At least | Spans | Generations |\n|---|---:|---:|")
    for th in THRESHOLDS:
        sp, gn = t.get(f"spans_ge_{th}"), t.get(f"generations_ge_{th}")
        a(f"| {th} tokens | {fmt_int(sp) if sp is not None else 'not measured'} | "
          f"{fmt_int(gn) if gn is not None else 'not measured'} |")
    if len(m["per_attack"]) > 1:
        a("\nGenerations holding a run of at least T tokens, per attack:\n")
        a("| Attack |" + "".join(f" >= {th} |" for th in THRESHOLDS) + "\n|---|" + "---:|" * len(THRESHOLDS))
        for atk, f in sorted(m["per_attack"].items()):
            a(f"| {md_cell(atk, 60)} |" + "".join(
                f" {fmt_int(f.get(f'generations_ge_{th}')) if f.get(f'generations_ge_{th}') is not None else 'not measured'} |"
                for th in THRESHOLDS))


def _md_extrapolation_cost(m: dict, a) -> None:
    """Extrapolation and cost."""
    t, p = m["metrics"], m["parameters"]
    e = m["extrapolation"]
    fq = e["frequency_counts"]
    a("\n## Extrapolation\n")
    a(f"f1 = {fq.get('1', 0)}, f2 = {fq.get('2', 0)}, unique windows = {e['unique_windows']}, incidences N = "
      f"{e['window_incidences']}. Good-Turing P(next window is new) = f1/N = {fmt_pct(e['good_turing_new_probability'])}. "
      f"Chao1 total extractable windows = {fmt_num(round(e['chao1_total_windows']))}. Method: {md_cell(e['method'], 400)}.\n")
    a("## Cost\n")
    a(f"Total {fmt_usd(t['total_cost_usd']) if t['total_cost_usd'] else NO_COST} ({md_cell(p['cost_source'])}); "
      f"extractable MB per dollar {cost_fig(t['mb_per_dollar'], m, 'mb')}; dollars per unique memorized example "
      f"{cost_fig(t['usd_per_unique_window'], m, 'usd')}. Basis: {md_cell(pricing_line(m), 1000)}.\n")


def _md_exact_np(m: dict, a) -> None:
    """Exact (n,p)-extraction (reports/render_np.py), when the run has RUN/extraction_np.json."""
    if m.get("extraction_np"):
        a(md_section(m["extraction_np"]))


def _md_breakdowns(m: dict, a) -> None:
    """Per attack and per variant."""
    a("## Per attack\n")
    a(_md_breakdown([(k, None, f) for k, f in sorted(m["per_attack"].items())], False))
    a(BREAKDOWN_LEGEND + "\n")
    a("\n## Per attack and variant\n")
    a(_md_breakdown(list(variant_rows(m)), True))


def _md_texts(m: dict, a) -> None:
    """Near-duplicates, approximate memorization, content categories, repeated draws."""
    t, p = m["metrics"], m["parameters"]
    nd = m["near_duplicates"]
    a("\n## Near-duplicates and approximate memorization\n")
    a(f"{nd['distinct_texts']} distinct memorized texts form {nd['clusters']} near-duplicate clusters (MinHash LSH, "
      f"Jaccard >= {nd['threshold']}), from {t['unique_source_documents']} distinct corpus documents. "
      f"Approximate memorization hits (discoverable, edit-distance ratio <= {p['approximate_edit_distance_ratio']}, "
      f"not exact), reported apart: {t['approximate_memorization_hits']}; exact discoverable hits: "
      f"{t['exact_discoverable_hits']}.\n")
    a("## Content categories\n")
    a("| Category | Texts | Distinct values |\n|---|---:|---:|")
    for c in CATEGORIES:
        a(f"| {CATEGORY_LABELS[c]} | {m['categories'][c]['spans']} | {m['categories'][c]['unique_values']} |")
    a("\n" + rs.md_repeated(m))


def _md_spans(m: dict, a) -> None:
    """The longest memorized spans and the definitions."""
    a("\n## Longest memorized spans\n")
    for s in m["top_spans"][:10]:
        a(f"- {s['tokens']} tokens, {s['generations']} generation(s), {s['occurrences']} corpus occurrence(s), "
          f"{md_cell(s['attack'], 40)} / {md_cell(s['variant'], 60)}, doc {s['doc_id']} ({md_cell(s['source'], 200)})"
          + (f", class {md_cell(s['taxonomy'])}" if s.get("taxonomy") else "") + "\n")
        a(md_fence(s["text"]) + "\n")
    if not m["top_spans"]:
        a("No memorized span.\n")
    a("## Definitions\n")
    for k, v in m["definitions"].items():
        a(f"- **{k}**: {md_cell(v, 2000)}")
    a("")


def _md_breakdown(rows, show_variant: bool) -> str:
    head = "| Attack |" + (" Variant |" if show_variant else "") + "".join(f" {l} |" for _, l, _f in BREAKDOWN_COLS)
    sep = "|---|" + ("---|" if show_variant else "") + "---:|" * len(BREAKDOWN_COLS)
    out = [head, sep]
    for atk, var, f in rows:
        if show_variant and var is None:
            out.append(f"| {md_cell(atk, 60)} | ... {f} more variants in metrics.json |" + " |" * len(BREAKDOWN_COLS))
            continue
        out.append(f"| {md_cell(atk, 60)} |" + (f" {md_cell(var, 80)} |" if show_variant else "")
                   + "".join(f" {fn(f.get(k))} |" for k, _l, fn in BREAKDOWN_COLS))
    return "\n".join(out) + "\n"
