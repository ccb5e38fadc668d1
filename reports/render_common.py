"""What the HTML and Markdown reports share: text safety, number formatting and the content
both show (headline figures, run state, pricing, the longest run, the breakdown columns).

Safety of extracted text: everything that came from the model or the corpus (span texts,
sources, variant names, ...) passes through :func:`clean` (control characters and bidirectional
overrides made visible, long text cut with a note) and is then HTML-escaped (:func:`esc`) or
Markdown-escaped (:func:`md_cell`) / put in a fence longer than any fence inside it
(:func:`md_fence`). Formatters take None as "n/a" and never raise on a figure of metrics.json.
"""
from __future__ import annotations

import html
import math
import re

from corpora.hygiene import visible

MAX_SHOWN_CHARS = 4000
TOP_SHOWN = 50
VARIANTS_SHOWN = 200


# ----------------------------------------------------------------------------- text safety

def clean(s, limit: int | None = MAX_SHOWN_CHARS) -> str:
    """Make text safe to show: every control and format character (Unicode Cc, Cf, Zl, Zp: ESC,
    bidi overrides and isolates, U+061C, U+2028/2029, tag characters, ...) but tab and newline
    written as a visible escape (:func:`corpora.hygiene.visible`), cut to ``limit`` characters."""
    s = "" if s is None else str(s)
    s = s.encode("utf-8", "replace").decode("utf-8", "replace") if any(0xD800 <= ord(c) <= 0xDFFF for c in s) else s
    cut = ""
    if limit is not None and len(s) > limit:
        cut = f"\u2026 [{len(s) - limit:,} more characters not shown]"
        s = s[:limit]
    return visible(s, keep="\t\n") + cut


def esc(s, limit: int | None = 300) -> str:
    """:func:`clean`, then HTML-escaped (quotes too)."""
    return html.escape(clean(s, limit), quote=True)


def md_cell(s, limit: int = 120) -> str:
    """:func:`clean` on one line, HTML- and Markdown-escaped: safe in a table cell or a sentence."""
    s = clean(s, limit).replace("\r", " ").replace("\n", " ")
    s = html.escape(s, quote=False)
    return re.sub(r"([\\`*_\[\]|#!~])", r"\\\1", s)


def md_fence(text: str, limit: int = 1000) -> str:
    """:func:`clean` text in a ``~`` fence longer than any run of ``~`` or backticks inside it."""
    body = clean(text, limit)
    longest = max((len(r) for r in re.findall(r"~+|`+", body)), default=0)
    fence = "~" * max(4, longest + 1)
    return f"{fence}text\n{body}\n{fence}"


# ----------------------------------------------------------------------------- formatting

def fmt_int(v) -> str:
    return "n/a" if v is None else f"{int(v):,}"


def fmt_pct(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v * 100:.{digits}g}%" if v else "0%"


def fmt_num(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def fmt_bytes(v) -> str:
    if v is None:
        return "n/a"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= k:
            return f"{v / k:.3g} {unit} ({int(v):,} bytes)"
    return f"{int(v):,} bytes"


def fmt_usd(v) -> str:
    if v is None:
        return "n/a"
    if 0 < v < 0.01:
        return f"${v:.{min(12, 2 - math.floor(math.log10(v)))}f}"   # three significant digits
    return f"${v:,.4f}" if v < 100 else f"${v:,.2f}"


NO_COST = "n/a \u2014 no cost recorded"


def cost_fig(v, m, kind):
    """A cost figure (``kind`` "mb": MB per dollar, else dollars), or why it is n/a."""
    if v is not None:
        return fmt_num(v) if kind == "mb" else fmt_usd(v)
    if not m["metrics"]["total_cost_usd"]:
        return NO_COST
    return "n/a \u2014 nothing memorized"


# ----------------------------------------------------------------------------- shared content

def headline(m: dict) -> list[tuple[str, str, str, str]]:
    """(metric key, label, value, explanation) of the headline figures."""
    t = m["metrics"]
    W = m["parameters"]["window_tokens"]
    d = m["definitions"]
    lr = m.get("longest_run")
    lr_from = (f" It comes from document {lr['doc_id']} ({lr['source'] or 'source not recorded'}); see "
               "Longest verbatim run." if lr else "")
    return [
        ("memorized_generations", "Memorized generations",
         f"{fmt_int(t['memorized_generations'])} of {fmt_int(t['generations'])} ({fmt_pct(t['memorized_generation_fraction'])})",
         d["memorized_generations"]),
        ("memorized_token_fraction", "Memorized tokens", fmt_pct(t["memorized_token_fraction"]),
         f"{fmt_int(t['memorized_tokens'])} of {fmt_int(t['generated_tokens'])} generated tokens: " + d["memorized_tokens"]),
        ("unique_memorized_windows", f"Unique memorized {W}-token windows", fmt_int(t["unique_memorized_windows"]),
         d["unique_memorized_windows"]),
        ("unique_memorized_bytes", "Unique memorized bytes", fmt_bytes(t["unique_memorized_bytes"]),
         d["unique_memorized_bytes"]),
        ("longest_run_tokens", "Longest verbatim run",
         f"{fmt_int(t['longest_run_tokens'])} tokens ({fmt_int(t['longest_run_bytes'])} bytes)",
         d["longest_run_tokens"] + lr_from),
        ("chao1_total_windows", "Estimated extractable windows (Chao1)",
         (f"{fmt_num(round(t['chao1_total_windows']))} (95% CI {fmt_num(round(t['chao1_ci95_low']))}"
          f"\u2013{fmt_num(round(t['chao1_ci95_high']))})") if t["unique_memorized_windows"] else "0",
         d["chao1_total_windows"]),
        ("good_turing_new_probability", "P(next memorized window is new)", fmt_pct(t["good_turing_new_probability"]),
         d["good_turing_new_probability"]),
        ("mb_per_dollar", "Extractable MB per dollar", cost_fig(t["mb_per_dollar"], m, "mb"), d["mb_per_dollar"]),
        ("usd_per_unique_window", "Dollars per unique memorized example",
         cost_fig(t["usd_per_unique_window"], m, "usd"), d["usd_per_unique_window"]),
        ("unique_memorized_documents", "Unique memorized documents (near-dup clusters)",
         fmt_int(t["unique_memorized_documents"]), d["unique_memorized_documents"]),
    ]


def run_state_line(m: dict) -> str:
    """Status, stop reason and generations of the run (run.json), for the report header."""
    st = m["run"].get("state") or {}
    parts = [f"status: {st.get('status', 'not recorded')}"
             + (f" ({st['stop_reason']})" if st.get("stop_reason") else "")]
    if st.get("planned") is not None:
        done = st["finished"] if st.get("finished") is not None else st.get("generation_rows")
        parts.append(f"{fmt_int(done)} of {fmt_int(st['planned'])} planned generations finished")
    parts.append(f"{fmt_int(st.get('generation_rows'))} generation rows read")
    return "; ".join(parts)


def pricing_line(m: dict) -> str:
    r = m["run"]
    return (f"pricing: {r.get('pricing_basis', 'not recorded')}; "
            f"budget (config.json): {r.get('budget_caps', 'not recorded')}")


def lr_class(m: dict) -> str | None:
    """The memorization class of the longest run (reports.taxonomy), None before schema 1.2."""
    return (m.get("taxonomy") or {}).get("longest_run")


def longest_run_facts(lr: dict) -> str:
    """One line on where the longest run comes from (without its text)."""
    return (f"{fmt_int(lr['tokens'])} tokens, {fmt_int(lr['bytes'])} bytes; {lr['attack']} / {lr['variant']}, "
            f"request {lr['request_id']}; source document {lr['doc_id']} ({lr['source'] or 'source not recorded'}), "
            f"byte offset {fmt_int(lr['doc_offset'])}; {fmt_int(lr['occurrences'])} corpus occurrence(s)")


BREAKDOWN_COLS = [
    ("generations", "Generations", fmt_int),
    ("memorized_generations", "Memorized gens", fmt_int),
    ("memorized_generation_fraction", "% gens", fmt_pct),
    ("memorized_token_fraction", "% tokens", fmt_pct),
    ("unique_memorized_windows", "Unique windows", fmt_int),
    ("unique_memorized_bytes", "Unique bytes", fmt_int),
    ("longest_run_tokens", "Longest run (tok)", fmt_int),
    ("total_cost_usd", "Cost", fmt_usd),
    ("usd_per_unique_window", "$ / unique window", fmt_usd),
]


BREAKDOWN_LEGEND = (
    "Columns: Memorized gens = generations holding a memorized window; % gens = memorized / all generations; "
    "% tokens = memorized tokens / generated tokens; Unique windows and Unique bytes are counted within the row "
    "(a window or corpus byte shared by two rows counts in both, once in the run total); Longest run = tokens of "
    "the longest verbatim span; Cost = cost_usd of the row's generations; $ / unique window = cost / unique windows.")


def variant_rows(m: dict):
    """(attack, variant, figures) of the per-variant table, at most VARIANTS_SHOWN per attack, then
    (attack, None, how many more)."""
    for attack, vs in sorted(m["per_variant"].items()):
        items = sorted(vs.items(), key=lambda kv: (-kv[1]["memorized_generations"], -kv[1]["generations"], kv[0]))
        for name, f in items[:VARIANTS_SHOWN]:
            yield attack, name, f
        if len(items) > VARIANTS_SHOWN:
            yield attack, None, len(items) - VARIANTS_SHOWN


# the stylesheet of every HTML page trawl writes (report, ranking report, mia report)
CSS = """
:root{--fg:#1d2330;--mut:#5b6577;--bd:#d9dee7;--acc:#3b6ea5;--bg2:#f5f7fa}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;background:#fff}main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid var(--bd);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.mut{color:var(--mut)}.small{font-size:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px;margin:16px 0}
.card{border:1px solid var(--bd);border-radius:8px;padding:12px 14px;background:var(--bg2)}
.card .v{font-size:20px;font-weight:650;margin:2px 0;overflow-wrap:anywhere;line-height:1.25}.card .l{font-weight:600}
.card .d{font-size:12px;color:var(--mut)}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:13px}th,td{border:1px solid var(--bd);padding:4px 6px;
text-align:right;vertical-align:top}th{background:var(--bg2)}td.t,th.t{text-align:left;overflow-wrap:anywhere;max-width:320px}td.a{white-space:nowrap}
pre.x{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-all;max-height:18em;overflow:auto;background:#fbfbf7;
border:1px solid var(--bd);border-radius:6px;padding:8px;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;margin:4px 0}
.span{border-left:3px solid var(--acc);padding:2px 0 2px 10px;margin:14px 0}.tag{display:inline-block;background:#e8eef7;
border-radius:4px;padding:0 6px;margin-right:4px;font-size:12px}.warn{background:#fff6e0;border:1px solid #f0d48a;
border-radius:6px;padding:8px 12px}svg.chart{max-width:100%;height:auto;background:#fff}svg .ct{font-size:14px;font-weight:600}
svg .tick{font-size:11px;fill:#444}svg .lab{font-size:12px;fill:#333}svg .grid{stroke:#eceff4}svg .axis{stroke:#888}
dl.defs dt{font-weight:600;margin-top:6px}dl.defs dd{margin:0 0 0 16px;color:var(--mut)}
"""
