"""The gate's list of metric names (reports.gate.metric_names, from DEFINITIONS) is exactly the set of
names metrics.json's "metrics" object can hold: a gate is checked by name before any work, so a name
the list lacks would be refused wrongly and one it has extra would pass the check and fail later."""
from __future__ import annotations

import random
import re

from reports import compute_metrics
from reports.gate import Gate, metric_names
from synthetic_runs import Corpus, Gen, write_run


def _tok(text):
    return re.findall(r"\s*\S+|\s+", text)


def test_metric_names_are_the_computed_ones(tmp_path):
    rng = random.Random(1)
    words = lambda n: "".join(f" w{rng.randrange(300)}" for _ in range(n))  # noqa: E731
    docs = [words(80), words(200)]
    filler = lambda n: [f" z{rng.randrange(500)}" for _ in range(n)]  # noqa: E731
    gens = [Gen(filler(10) + _tok(docs[0]) + filler(10), "divergence", "poem", extra={"diverged": True}),
            Gen(filler(60), "discoverable", "d1", extra={"doc_id": 1, "exact": False, "edit_distance_ratio": 0.02,
                                                         "target": "x"}),
            Gen(filler(5) + _tok(docs[1])[:80], "special_chars", "{")]
    write_run(str(tmp_path / "run"), Corpus(docs, sources=["a", "b"]), gens, min_tokens=10)
    m = compute_metrics(str(tmp_path / "run"))
    assert set(m["metrics"]) == metric_names()
    for attack, figs in m["per_attack"].items():
        assert set(figs) <= metric_names(), attack
    for name in m["metrics"]:
        Gate(f"{name} >= 0")        # every computed name is accepted by the parser
