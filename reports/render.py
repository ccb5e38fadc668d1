"""Write a run's report: self-contained HTML (:mod:`reports.render_html`), a Markdown summary
(:mod:`reports.render_md`), the metrics JSON and every memorized text (JSONL).

Safety of extracted text: see :mod:`reports.render_common` (everything from the model or the
corpus is made visible, cut and escaped) and :mod:`reports.render_html` (no script, a strict
Content-Security-Policy). ``redact=True`` masks personal data and secrets (see
:mod:`reports.categories`) in all four files. Every file is written atomically.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

from corpora.storage import write_texts_atomic
from reports.categories import PERSONAL
from reports.categories import redact as _redact
from reports.errors import ReportError
from reports.metrics import compute_metrics, without_gc
from reports.render_html import render_html
from reports.render_md import render_markdown

@dataclass
class ReportPaths:
    """Where write_report wrote: ``html``, ``md``, ``json`` (metrics.json) and ``spans``
    (memorized_spans.jsonl: every distinct memorized text, one JSON object a line);
    ``metrics`` is the dict written to ``json``."""
    html: str
    md: str
    json: str
    metrics: dict
    spans: str | None = None


def redact_tree(obj):
    """Copy of a JSON-like tree with :func:`reports.categories.redact` applied to every string."""
    if isinstance(obj, str):
        return _redact(obj)
    if isinstance(obj, dict):
        return {(_redact(k) if isinstance(k, str) else k): redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v) for v in obj]
    return obj


def _mask_findings(metrics: dict, m: dict) -> None:
    """A personal-data finding kept as a category example is masked whole when :func:`redact` left
    it as it was (a detector's finding that redaction does not match again must not leak)."""
    for c in PERSONAL:
        before = ((metrics.get("categories") or {}).get(c) or {}).get("examples")
        after = ((m.get("categories") or {}).get(c) or {}).get("examples")
        if before and after and len(before) == len(after):
            m["categories"][c]["examples"] = [r if r != o else "[REDACTED]" for o, r in zip(before, after)]


@without_gc
def write_report(run_dir, out_dir=None, redact: bool = False, metrics: dict | None = None,
                 window_tokens: int = 50, index=None, recitation_min_occurrences: int = 6) -> ReportPaths:
    """Compute the metrics (unless given) and write ``report.html``, ``report.md`` and
    ``metrics.json`` to ``out_dir`` (default ``RUN/report``). Returns their paths."""
    run_dir = os.fspath(run_dir)
    if metrics is None:
        metrics = compute_metrics(run_dir, window_tokens=window_tokens, index=index,
                                  recitation_min_occurrences=recitation_min_occurrences)
    m = redact_tree(metrics) if redact else copy.deepcopy(dict(metrics))
    if redact:
        _mask_findings(metrics, m)
    m["redacted"] = bool(redact)
    texts = getattr(metrics, "memorized_texts", None)
    out_dir = os.fspath(out_dir) if out_dir is not None else os.path.join(run_dir, "report")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out_dir}: cannot create the report folder ({exc.strerror or exc})") from None
    paths = ReportPaths(os.path.join(out_dir, "report.html"), os.path.join(out_dir, "report.md"),
                        os.path.join(out_dir, "metrics.json"), m)
    files = [(paths.json, json.dumps(m, indent=1, ensure_ascii=False, allow_nan=False, default=str) + "\n")]
    if texts is not None:
        paths.spans = os.path.join(out_dir, "memorized_spans.jsonl")
        enc = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode     # json.dumps's output, one encoder
        files.append((paths.spans, "".join(enc(redact_tree(x) if redact else x) + "\n" for x in texts)))
    files += [(paths.md, render_markdown(m)), (paths.html, render_html(m))]
    # all or nothing: a full disk leaves the previous report whole (storage.WriteError, one line)
    write_texts_atomic(files)
    return paths
