"""trawl's reports: memorization metrics and the signed-off report of a run.

Public API::

    from reports import compute_metrics, write_report, ReportError
    metrics = compute_metrics(run_dir, window_tokens=50)   # JSON-serialisable dict, "schema_version"
    paths = write_report(run_dir, out_dir=None, redact=False)   # .html, .md, .json

``reports`` reads a run folder's Parquet files (docs/CONTRACTS.md sections 3-4)
and never imports ``extractor``.
"""
from __future__ import annotations

from reports.errors import ReportError
from reports.metrics import SCHEMA_VERSION, compute_metrics

__all__ = ["compute_metrics", "write_report", "ReportError", "ReportPaths", "SCHEMA_VERSION"]


def __getattr__(name):  # lazy: rendering is not needed to compute metrics
    if name in ("write_report", "ReportPaths"):
        from reports import render

        return getattr(render, name)
    raise AttributeError(name)
