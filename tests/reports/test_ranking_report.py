"""The report's ranking section from a hand-made scores.parquet: figures equal reports/ranking.py
on the same columns, the top candidates are the right rows with their texts escaped, a damaged
scores file is a warning, and the section renders in headless Chromium."""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reports import ranking, write_report
from reports.render_ranking import write_ranking_report
from tests.synthetic_runs import Corpus, Gen, write_run

HOSTILE = "<script>alert(1)</script>\x1b[31m\u202e"


def _run(tmp_path, n=12):
    rng = random.Random(2)
    doc = "".join(f" d{i}" for i in range(200))
    gens = []
    for i in range(n):
        if i % 3 == 0:     # memorized: 60 corpus tokens
            toks = [f" d{j}" for j in range(i, i + 60)]
        else:
            toks = [f" q{rng.randrange(10**6)}" for _ in range(60)]
        if i == 1:
            toks = [" " + HOSTILE] + toks
        gens.append(Gen(toks, request_id=f"r{i:02d}"))
    run = tmp_path / "run"
    write_run(str(run), Corpus([doc]), gens, min_tokens=10)
    # hand-made scores: perplexity low for i % 3 == 0 except r09; min_k missing for r05
    rows = []
    for i in range(n):
        ppl = 2.0 + i if i % 3 == 0 and i != 9 else 50.0 + i
        rows.append({"run_id": "run-test", "request_id": f"r{i:02d}", "attack": "divergence", "variant": "poem",
                     "scored_tokens": 60, "perplexity": ppl, "zlib_entropy": 100, "zlib_ratio": 100 / math.log(ppl),
                     "lower_ratio": None, "ref_ratio": None, "window_ppl": ppl / 2,
                     "min_k": None if i == 5 else -math.log(ppl), "min_k_pp": -float(i), "min_k_pp_exact": False,
                     "token_logprobs": [-1.0], "error": None})
    t = pa.Table.from_pylist(rows, schema=ranking.scores_schema()).replace_schema_metadata(
        {"trawl_scores_format": "1", "k": "0.2", "window": "50", "exact_vocab_stats": "false", "complete": "true"})
    pq.write_table(t, run / "scores.parquet")
    return run, rows


def test_section_equals_ranking_math_and_escapes_text(tmp_path):
    run, rows = _run(tmp_path)
    paths = write_report(run)
    sec = paths.metrics["ranking"]
    labels = [int(r["request_id"][1:]) % 3 == 0 for r in rows]
    cols = {c: [r[c] if r[c] is not None else float("nan") for r in rows] for c in ranking.SIGNAL_COLUMNS}
    want = ranking.evaluate(cols, labels, keys=[r["request_id"] for r in rows])
    assert sec["ground_truth"] and sec["memorized_scored"] == 4 and not sec["exact_vocab_stats"]
    assert set(sec["rankings"]) == {"perplexity", "zlib", "window", "min_k", "min_k_pp"}
    for name, r in sec["rankings"].items():
        assert r["auc"] == pytest.approx(want[name]["auc"]) and r["precision_at"]["10"] == want[name]["precision_at"][10]
    # by hand: perplexity ranks r00, r03, r06 first (2, 5, 8), then 51..61: the 10th is r09 (59), memorized
    assert [e["request_id"] for e in sec["top"]["perplexity"][:3]] == ["r00", "r03", "r06"]
    assert sec["rankings"]["perplexity"]["precision_at"]["10"] == pytest.approx(4 / 10)
    assert sec["rankings"]["min_k"]["scored"] == 11
    assert sec["top"]["min_k_pp"][0]["request_id"] == "r00"
    assert paths.metrics["metrics"]["ranking_best_auc"] == max(r["auc"] for r in sec["rankings"].values())
    html_text = open(paths.html, encoding="utf-8").read()
    md_text = open(paths.md, encoding="utf-8").read()
    for text in (html_text, md_text):
        assert "Top candidates by each ranking" in text and "<script>alert" not in text
        assert "\x1b" not in text and "\u202e" not in text
    assert "approximation" in html_text and "ROC: each ranking" in html_text
    # a standalone ranking report (runs without matches): no ground truth, candidates only
    os.unlink(run / "matches.parquet")
    hp, mp, sec2 = write_ranking_report(str(run))
    assert not sec2["ground_truth"] and sec2["top"]["perplexity"][0]["memorized"] is None
    assert "inspect first" in open(hp, encoding="utf-8").read()


def test_damaged_scores_is_a_warning_not_a_failed_report(tmp_path):
    run, _ = _run(tmp_path)
    data = (run / "scores.parquet").read_bytes()
    (run / "scores.parquet").write_bytes(data[: len(data) // 2])
    paths = write_report(run)
    assert paths.metrics["ranking"] is None and paths.metrics["metrics"]["ranking_best_auc"] is None
    assert any("rankings are left out" in w and "scores.parquet" in w for w in paths.metrics["warnings"])
    json.dumps(paths.metrics)


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_ranking_section_renders_in_chromium(tmp_path):
    run, _ = _run(tmp_path)
    paths = write_report(run)
    profile = tmp_path / "profile"
    profile.mkdir()
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-extensions", f"--user-data-dir={profile}",
                          "--dump-dom", "--virtual-time-budget=2000", "file://" + os.path.abspath(paths.html)],
                         capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    dom = res.stdout.decode("utf-8")
    sec = dom[dom.index('id="ranking"'):]
    assert "Top candidates by each ranking" in sec and "<svg" in sec and "ROC: each ranking" in sec
    # the table row of each ranking, with its AUC as the metrics say
    for name, r in paths.metrics["ranking"]["rankings"].items():
        m = re.search(r'<td class="t" title="[^"]*">%s</td>(?:<td>[^<]*</td>){3}<td>([^<]*)</td>' % name, sec)
        assert m and m.group(1) == f"{r['auc']:.3g}", name
    assert "&lt;script&gt;alert(1)" in sec and "<script" not in dom.lower()
