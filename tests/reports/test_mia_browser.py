"""The mia report and the report's exact (n,p) section opened in headless Chromium: the figures
are rendered, hostile names stay text, the log-log ROC chart and the (n,p) chart are drawn."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from reports.mia_report import mia_figures, write_mia_report
from reports.ranking import signals
from tests.reports.test_report_browser import CHROMIUM, _chromium

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def _dom(path, tmp_path) -> str:
    r = _chromium(["--dump-dom", "--virtual-time-budget=2000", "file://" + os.path.abspath(path)], tmp_path)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return r.stdout.decode("utf-8")


def test_mia_report_renders(tmp_path):
    rng = np.random.default_rng(0)
    mem = [signals("a b", rng.normal(-1, 1, 30), mean=np.full(30, -3.0), var=np.ones(30)) for _ in range(40)]
    non = [signals("a c", rng.normal(-2, 1, 30), mean=np.full(30, -3.0), var=np.ones(30)) for _ in range(120)]
    f = mia_figures(mem, non, rounds=50, info={"members_path": "<script>alert(1)</script>.jsonl",
                                               "nonmembers_path": "n.jsonl", "scorer": "s", "notes": []})
    paths = write_mia_report(f, str(tmp_path / "out"))
    text = _dom(paths["html"], tmp_path)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script" not in text.lower()
    row = re.search(r"<td[^>]*>perplexity</td><td>(.*?)</td>", text)
    assert row and row.group(1).startswith(f"{f['methods']['perplexity']['auc']:.3f} [")
    assert text.count("<polyline") == 5                       # the five methods with values
    assert "ROC, log-log axes" in text


def test_exact_np_section_renders(tmp_path):
    from tests.reports.test_exact_np_report import KnownScorer, _run
    from extractor.attacks.discoverable_np import score_discoverable
    from reports import write_report

    run = _run(tmp_path)
    score_discoverable(str(run), KnownScorer())
    paths = write_report(str(run))
    text = _dom(paths.html, tmp_path)
    sec = text.split('id="exact-np"')[1].split("</section>")[0]
    assert "(n,p)-extraction against queries" in sec and "<polyline" in sec
    assert "<td>0.25</td>" in sec and "<td>0.125</td>" in sec       # p_z of the two documents, by hand
    assert json.loads(open(paths.json).read())["extraction_np"]["summary"]["documents"] == 2
