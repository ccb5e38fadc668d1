"""`trawl mia`: bad input is one line; corrupted text sets give one line or texts; a real run on the
embedded model produces finite AUCs whose intervals hold them, in HTML/MD/JSON."""
from __future__ import annotations

import json
import math
import random

import pytest

from extractor.cli.mia import load_texts
from extractor.errors import TrawlError
from tests.mia_texts import MEMBERS, NONMEMBERS, write_jsonl
from tests.repo import one_line_error, trawl


def test_bad_input_is_one_line(tmp_path):
    m = write_jsonl(tmp_path / "m.jsonl", MEMBERS[:2])
    one_line_error(trawl("mia", "--members", tmp_path / "missing.jsonl", "--nonmembers", m, "--embedded", "-o",
                         tmp_path / "o"), "no such corpus folder or file")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    one_line_error(trawl("mia", "--members", m, "--nonmembers", empty, "--embedded", "-o", tmp_path / "o"),
                   "no documents")
    one_line_error(trawl("mia", "--members", m, "--nonmembers", m, "-o", tmp_path / "o"), "needs a scorer")
    one_line_error(trawl("mia", "--members", m, "--nonmembers", m, "--embedded", "--gguf", m, "-o", tmp_path / "o"),
                   "give one of")
    one_line_error(trawl("mia", "--members", m, "--nonmembers", m, "--gguf", tmp_path / "none.gguf", "-o",
                         tmp_path / "o"), "model file not found")
    one_line_error(trawl("mia", "--members", m, "--nonmembers", m, "--embedded", "--k", "0", "-o", tmp_path / "o"),
                   "--k")


def test_corrupted_text_sets_give_texts_or_one_error(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", MEMBERS[:4])
    data = open(good, "rb").read()
    rng = random.Random(7)
    outcomes = set()
    for trial in range(150):
        b = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] = rng.choice([0x00, 0x22, 0x7B, 0x7D, 0x0A, 0xFF, 0xC3, rng.randrange(256)])
        p = tmp_path / f"c{trial}.jsonl"
        p.write_bytes(bytes(b))
        try:
            texts = load_texts(str(p), "text", 1000, 2000)
        except TrawlError as exc:
            msg = str(exc)
            assert "\n" not in msg and str(p) in msg, msg
            outcomes.add("error")
            continue
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)
        outcomes.add("texts")
    assert outcomes == {"error", "texts"}


@pytest.mark.slow
def test_real_model_run(tmp_path):
    """Four texts the embedded model has seen against their word-shuffled copies. Measured behaviour only:
    every method the scorer supports has a finite AUC inside its bootstrap interval."""
    m = write_jsonl(tmp_path / "m.jsonl", MEMBERS[:4])
    n = write_jsonl(tmp_path / "n.jsonl", NONMEMBERS[:4])
    out = tmp_path / "out"
    r = trawl("mia", "--members", m, "--nonmembers", n, "--embedded", "--bootstrap", "100", "-o", out)
    assert r.returncode == 0, r.stderr
    f = json.loads((out / "mia.json").read_text())
    assert f["members"] == 4 and f["nonmembers"] == 4
    for name in ("perplexity", "zlib", "lowercase", "window", "min_k", "min_k_pp"):
        meth = f["methods"][name]
        assert math.isfinite(meth["auc"]) and 0 <= meth["auc"] <= 1
        lo, hi = meth["auc_ci"]
        assert lo <= meth["auc"] <= hi
        assert meth["tpr_at_fpr"]["0.01"]["below_resolution"] is True     # 4 non-members: FPR steps of 1/4
    assert f["methods"]["reference_ratio"]["auc"] is None                # no reference model given
    html = (out / "report.html").read_text()
    assert "<svg" in html and "ROC, log-log axes" in html
    assert "| perplexity |" in (out / "report.md").read_text()
