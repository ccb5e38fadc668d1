"""Report sections on memorization classes (raw against non-trivial, figures per class) and on
repeated draws, in HTML and Markdown. Every string that came from a run passes through
:func:`reports.render_common.esc` / :func:`reports.render_common.md_cell`; the rest is built here."""
from __future__ import annotations

from reports.render_common import esc, fmt_bytes, fmt_int, fmt_num, fmt_pct, fmt_usd, md_cell

CLASS_LABELS = {"low_information": "Low-information", "reconstruction": "Reconstruction",
                "recitation": "Recitation", "recollection": "Recollection", "nontrivial": "Non-trivial"}
COLUMNS = ("nontrivial", "recitation", "recollection", "reconstruction", "low_information")


def _gens(f):
    return f"{fmt_int(f['memorized_generations'])} ({fmt_pct(f['memorized_generation_fraction'])})"


def _toks(f):
    return f"{fmt_int(f['memorized_tokens'])} ({fmt_pct(f['memorized_token_fraction'])})"


def _chao(f):
    return fmt_num(round(f["chao1_total_windows"])) if f["unique_memorized_windows"] else "0"


def _money(key, fmt):
    def show(f):
        return fmt(f[key]) if f[key] is not None else ("n/a \u2014 no cost recorded" if not f["total_cost_usd"]
                                                       else "n/a \u2014 nothing memorized")
    return show


# (label, value of a figure dict); the same rows for the raw run-wide figures and for each class
FIGURE_ROWS = [
    ("Memorized spans (\u2265 {W} tokens)", lambda f: fmt_int(f["memorized_spans"])),
    ("Memorized generations", _gens),
    ("Memorized tokens", _toks),
    ("Unique memorized {W}-token windows", lambda f: fmt_int(f["unique_memorized_windows"])),
    ("Unique memorized bytes", lambda f: fmt_bytes(f["unique_memorized_bytes"])),
    ("Estimated extractable windows (Chao1)", _chao),
    ("P(next memorized window is new)", lambda f: fmt_pct(f["good_turing_new_probability"])),
    ("Extractable MB per dollar", _money("mb_per_dollar", fmt_num)),
    ("Dollars per unique memorized window", _money("usd_per_unique_window", fmt_usd)),
]


def raw_vs_nontrivial(m: dict) -> list[tuple[str, str, str]]:
    """(figure, raw value, non-trivial value) for the headline."""
    W = m["parameters"]["window_tokens"]
    raw, nt = m["metrics"], m["by_category"]["nontrivial"]
    return [(label.format(W=W), fn(raw), fn(nt)) for label, fn in FIGURE_ROWS]


def nontrivial_sentence(m: dict) -> str:
    t = m["taxonomy"]
    return (f"Non-trivial memorization counts only recitation and recollection spans, leaving out what any model "
            f"writes: low-information spans (letters and digits under "
            f"{t['low_information_max_alnum_share']:.0%} of the characters) and reconstruction spans (repeating or "
            f"incrementing patterns covering at least {t['reconstruction_min_coverage']:.0%} of the text, e.g. "
            f"2016, 2017, 2018). Recitation = at least {t['recitation_min_occurrences']} corpus occurrences; "
            "recollection = the rest (Prashanth et al. 2024). Exact definitions: Benign memorization.")


def html_headline_table(m: dict) -> str:
    if "by_category" not in m:
        return ""
    rows = "".join(f"<tr><td class=\"t\">{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>"
                   for a, b, c in raw_vs_nontrivial(m))
    return ("<h3>Raw and non-trivial memorization</h3><table id=\"raw-vs-nontrivial\"><tr><th class=\"t\">Figure</th>"
            "<th>All memorized spans (raw)</th><th>Non-trivial (recitation + recollection)</th></tr>" + rows
            + f"</table><p class=\"small mut\">{esc(nontrivial_sentence(m), 3000)}</p>")


def html_taxonomy(m: dict) -> str:
    if "by_category" not in m:
        return ""
    t, bc, W = m["taxonomy"], m["by_category"], m["parameters"]["window_tokens"]
    out = ["<section id=\"benign\"><h2>Benign memorization (recitation, reconstruction, recollection)</h2>",
           f"<p>Every memorized span (\u2265 {W} tokens) gets one class (Prashanth et al. 2024, arXiv 2406.17746), "
           f"checked in the order {esc(', '.join(t['order']))}. Recitation threshold used: <b id=\"recitation-min\">"
           f"{esc(t['recitation_min_occurrences'])} corpus occurrences</b>. Each column gives the run's figures "
           "counted over that class's spans only (fractions over all generations and tokens, costs over the whole "
           "run); a window shared by two classes counts in both.</p><table id=\"by-category\"><tr><th class=\"t\">"
           "Figure</th>" + "".join(f"<th data-class=\"{c}\">{esc(CLASS_LABELS[c])}</th>" for c in COLUMNS) + "</tr>"]
    for label, fn in FIGURE_ROWS:
        out.append(f"<tr><td class=\"t\">{esc(label.format(W=W))}</td>"
                   + "".join(f"<td>{esc(fn(bc[c]))}</td>" for c in COLUMNS) + "</tr>")
    out.append("</table><dl class=\"defs\">" + "".join(f"<dt>{esc(CLASS_LABELS.get(k, k))}</dt><dd>{esc(v, 2000)}</dd>"
                                                       for k, v in t["definitions"].items()) + "</dl>")
    po = t["spans_in_paper_order"]
    out.append(f"<p class=\"small mut\">In the paper's order (recitation first, no low-information class): "
               f"{fmt_int(po['recitation'])} recitation, {fmt_int(po['reconstruction'])} reconstruction, "
               f"{fmt_int(po['recollection'])} recollection spans.</p></section>")
    return "".join(out)


def md_taxonomy(m: dict) -> str:
    if "by_category" not in m:
        return ""
    t, bc, W = m["taxonomy"], m["by_category"], m["parameters"]["window_tokens"]
    lines = ["## Benign memorization\n",
             f"Classes after Prashanth et al. 2024 (arXiv 2406.17746), one per memorized span, in the order "
             f"{', '.join(t['order'])}; recitation threshold used: {t['recitation_min_occurrences']} corpus "
             "occurrences. Figures over each class's spans only (fractions over all generations and tokens).\n",
             "| Figure |" + "".join(f" {CLASS_LABELS[c]} |" for c in COLUMNS), "|---|" + "---:|" * len(COLUMNS)]
    for label, fn in FIGURE_ROWS:
        lines.append(f"| {md_cell(label.format(W=W))} |" + "".join(f" {md_cell(fn(bc[c]))} |" for c in COLUMNS))
    lines.append("")
    lines += [f"- **{CLASS_LABELS.get(k, k)}**: {md_cell(v, 2000)}" for k, v in t["definitions"].items()]
    return "\n".join(lines) + "\n"


def md_headline_table(m: dict) -> str:
    if "by_category" not in m:
        return ""
    rows = "\n".join(f"| {md_cell(a)} | {md_cell(b)} | {md_cell(c)} |" for a, b, c in raw_vs_nontrivial(m))
    return ("\n| Figure | All memorized spans (raw) | Non-trivial (recitation + recollection) |\n|---|---|---|\n"
            + rows + "\n\n" + md_cell(nontrivial_sentence(m), 3000) + "\n")


def repeated_summary(rd: dict) -> str:
    return (f"{fmt_int(rd['rows_checked'])} sampled rows in {fmt_int(rd['groups_checked'])} groups checked "
            f"({fmt_int(rd['greedy_rows_exempt'])} greedy rows exempt); {fmt_int(rd['duplicate_rows'])} rows repeat an "
            f"earlier completion of their group; same draw (prompt, params and seed + n_choice): "
            f"{fmt_int(rd['same_draw_rows'])} rows; implausible duplicates: {fmt_int(rd['flagged_rows'])} rows.")


def html_repeated(m: dict) -> str:
    rd = m.get("repeated_draws")
    if rd is None:
        return ""
    out = [f"<section id=\"repeated-draws\"><h2>Repeated draws</h2><p>{esc(repeated_summary(rd), 1000)}</p>"
           f"<p class=\"small mut\">Rule: {esc(rd['rule'], 2000)}.</p>"]
    for ex in rd["examples"]:
        facts = ", ".join(f"{k} {fmt_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                          for k, v in ex.items() if k not in ("request_ids", "kind", "flagged"))
        out.append(f"<div class=\"span\"><span class=\"tag\">{esc(ex['kind'])}</span> {esc(facts, 600)}; requests "
                   f"{esc(', '.join(ex['request_ids']), 600)}</div>")
    out.append("</section>")
    return "".join(out)


def md_repeated(m: dict) -> str:
    rd = m.get("repeated_draws")
    if rd is None:
        return ""
    lines = ["## Repeated draws\n", md_cell(repeated_summary(rd), 1000) + "\n", f"Rule: {md_cell(rd['rule'], 2000)}.\n"]
    for ex in rd["examples"]:
        ids = md_cell(", ".join(ex["request_ids"]), 600)
        lines.append(f"- {md_cell(ex['kind'])}: {ex['copies']} copies; requests {ids}")
    return "\n".join(lines) + "\n"
