"""The discoverable scoring step on a synthetic run with a scorer of known rows, the report's
"Exact (n,p)-extraction" section, and a damaged extraction_np.json (a warning, never a traceback)."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from extractor.attacks.discoverable_np import FILE, score_discoverable
from extractor.backends.base import Capabilities, TextScore
from tests.repo import trawl

from synthetic_runs import Corpus, Gen, write_run  # noqa: E402  (tests/ on sys.path, as the other report tests)

# three-token "vocabulary": each target token is id 0, predicted by a row with p = (0.5, 0.3, 0.2)
ROW = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))


class KnownScorer:
    """Full rows for every target: each of its tokens has probability 0.5 at temperature 1."""
    capabilities = Capabilities(score="in_process", full_distribution=True)

    def describe(self):
        return {"backend": "known-rows"}

    def score(self, texts, *, contexts=None, top_k=0, vocab_stats=False, full=False, timeout=None):
        out = []
        for t in texts:
            n = len(t.split())
            offsets = [0] + [i for i, ch in enumerate(t) if ch == " "]     # "a b c" as "a", " b", " c"
            out.append(TextScore(token_ids=[0] * n, token_offsets=offsets, logprobs=[float(ROW[0])] * n,
                                 top_logprobs=None, vocab_mean=None, vocab_var=None, exact_vocab_stats=True,
                                 full_logprobs=np.stack([ROW] * n)))
        return out


def _run(tmp_path, temperature=1.0, top_k=0):
    gens = []
    # doc 1's samples: the target's own tokens (a token hit), a last token running past the target, the
    # target split otherwise (text hits both, not token hits), and a miss
    hit_tokens = [["a", " b"], ["a", " b,"], ["a ", "b"]]
    for doc, target, samples, hits in ((1, "a b", 4, 3), (2, "a b c", 4, 0)):
        for s in range(samples):
            gens.append(Gen(tokens=hit_tokens[s] if s < hits else ["x", " y"], attack="discoverable", variant=f"doc:{doc}",
                            extra={"doc_id": doc, "source": "s", "target": target, "exact": s < hits},
                            meta={"prompt": f"prefix {doc}",
                                  "params": json.dumps({"temperature": temperature, "top_k": top_k})}))
    run = tmp_path / "run"
    write_run(str(run), Corpus(["unrelated corpus text"]), gens, min_tokens=10)
    return run


def test_scoring_step_and_report_section(tmp_path):
    run = _run(tmp_path)
    out = score_discoverable(str(run), KnownScorer(), server="llama_cpp_inprocess")
    d = json.loads((run / FILE).read_text())
    assert d == json.loads(json.dumps(out))
    by = {doc["doc_id"]: doc for doc in d["documents"]}
    assert by[1]["p_z"] == pytest.approx(0.25) and by[2]["p_z"] == pytest.approx(0.125)   # 0.5^2, 0.5^3
    assert by[1]["monte_carlo"] == {"samples": 4, "hits": 3, "p_z": 0.75, "token_hits": 1, "p_z_tokens": 0.25}
    assert by[2]["monte_carlo"] == {"samples": 4, "hits": 0, "p_z": 0.0, "token_hits": 0, "p_z_tokens": 0.0}
    curve = dict(map(tuple, d["summary"]["mean_curve"]))
    assert curve[1] == pytest.approx((0.25 + 0.125) / 2)
    assert curve[10] == pytest.approx((1 - 0.75 ** 10 + 1 - 0.875 ** 10) / 2)
    assert d["order"] == "llama.cpp"
    # top-k 2 renormalises to (0.625, 0.375): p_z = 0.625^2 and 0.625^3
    run2 = _run(tmp_path / "k", top_k=2)
    by2 = {doc["doc_id"]: doc for doc in score_discoverable(str(run2), KnownScorer())["documents"]}
    assert by2[1]["p_z"] == pytest.approx(0.625 ** 2) and by2[2]["p_z"] == pytest.approx(0.625 ** 3)

    r = trawl("report", run, "-q")
    assert r.returncode == 0, r.stderr
    html = (run / "report" / "report.html").read_text()
    md = (run / "report" / "report.md").read_text()
    m = json.loads((run / "report" / "metrics.json").read_text())
    assert "Exact (n,p)-extraction" in html and "<svg" in html.split("exact-np")[1]
    assert "## Exact (n,p)-extraction" in md and "| 1 | 0.1875 |" in md
    assert "| 3 / 4 (1 as the target's tokens) |" in md and "3 / 4 (1 as the target&#x27;s tokens)" in html
    assert m["extraction_np"]["summary"]["documents"] == 2


def test_llama_cpp_server_runs_are_not_called_exact(tmp_path):
    """A sampled scheme on a run a llama.cpp HTTP server sampled: its logits depend on the batch split
    its prompt cache chose, so each document is "unavailable" (Monte Carlo stands), the fresh-prompt
    value kept as p_z_as_generated; the report still renders."""
    run = _run(tmp_path)
    d = score_discoverable(str(run), KnownScorer(), server="llama_cpp")
    by = {doc["doc_id"]: doc for doc in d["documents"]}
    assert by[1]["kind"] == by[2]["kind"] == "unavailable" and by[1]["p_z"] is None
    assert by[1]["p_z_as_generated"] == pytest.approx(0.25) and "prompt-cache" in by[1]["note"]
    assert d["summary"]["unavailable_documents"] == 2 and d["summary"]["mean_curve"] == []
    r = trawl("report", run, "-q")
    assert r.returncode == 0, r.stderr
    assert "2 unavailable" in (run / "report" / "report.md").read_text()


def test_damaged_file_is_a_warning(tmp_path):
    from reports.render_np import html_section, load_extraction_np, md_section

    run = _run(tmp_path)
    score_discoverable(str(run), KnownScorer())
    good = (run / FILE).read_bytes()
    rng = random.Random(3)
    seen = set()
    for trial in range(300):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([rng.randrange(256), ord("0"), ord("9"), ord("-"), ord("]")])
        (run / FILE).write_bytes(bytes(b))
        warnings = []
        d = load_extraction_np(str(run), warnings)
        if d is None:
            assert len(warnings) == 1 and FILE in warnings[0] and "\n" not in warnings[0]
            seen.add("warned")
            continue
        assert html_section(d).startswith("<section") and md_section(d).startswith("\n## Exact")
        for doc in d["documents"]:
            assert doc["p_z"] is None or (0 <= doc["p_z"] <= 1 and math.isfinite(doc["p_z"]))
        seen.add("read")
    assert seen == {"warned", "read"}
    # through the CLI: the report is written, with the warning and without the section
    (run / FILE).write_bytes(good[:-40])
    r = trawl("report", run, "-q")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    m = json.loads((run / "report" / "metrics.json").read_text())
    assert m["extraction_np"] is None and any(FILE in w for w in m["warnings"])
