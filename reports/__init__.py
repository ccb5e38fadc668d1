"""trawl's reports: memorization metrics and the signed-off report of a run.

Public API::

    from reports import compute_metrics, write_report, ReportError
    metrics = compute_metrics(run_dir, window_tokens=50, index=None)   # dict, JSON-serialisable, "schema_version"
    paths = write_report(run_dir, out_dir=None, redact=False)          # .html .md .json .spans (+ .metrics)

``trawl report RUN [--redact] [--fail-if EXPR]`` is registered by :mod:`reports.cli`.

Modules: :mod:`reports.metrics` (the figures' definitions and ``compute_metrics``, a driver
over passes streamed over the Parquet files): :mod:`reports.inputs` (reading the run folder),
:mod:`reports.spans` (the matches pass), :mod:`reports.passes` (the generations pass and the
passes over its typed accumulator), :mod:`reports.windows` (a batch's windows and their hashes), :mod:`reports.figures` (accumulators to figure dicts),
:mod:`reports.texts` (the memorized-text passes), :mod:`reports.run_info` (run.json and
config.json in words); :mod:`reports.extrapolate` (Good-Turing, Chao1 and its confidence
interval, accumulation curve), :mod:`reports.neardup` (MinHash LSH clusters),
:mod:`reports.categories` (content detectors, redaction), :mod:`reports.taxonomy` and
:mod:`reports.taxonomy_figures` (memorization classes after Prashanth et al. 2024 and their
figures), :mod:`reports.repeats` (repeated-draw check), :mod:`reports.gate` (``--fail-if``
parser); :mod:`reports.render` (``write_report``), :mod:`reports.render_common` (text safety,
formatting, shared content), :mod:`reports.render_html`, :mod:`reports.render_md`,
:mod:`reports.render_sections` and :mod:`reports.svg` (HTML, Markdown, inline charts).
Synthetic runs with known answers (a test helper) live in ``tests/synthetic_runs.py``.

``reports`` reads a run folder's Parquet files (docs/CONTRACTS.md sections 3-5) and
never imports ``extractor``.
"""
from __future__ import annotations

from corpora.lazy import install as _install

__all__ = ["compute_metrics", "write_report", "ReportError", "ReportPaths", "SCHEMA_VERSION"]
_install(__name__, {"ReportError": "reports.errors", "SCHEMA_VERSION": "reports.metrics",
                    "compute_metrics": "reports.metrics", "write_report": "reports.render",
                    "ReportPaths": "reports.render"})   # imported on first use (trawl --help needs none of them)
