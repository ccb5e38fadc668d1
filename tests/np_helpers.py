"""Shared by the exact (n,p) tests of the vLLM tier (in process and through vLLM's server): the passage
SmolLM2-135M-Instruct continues verbatim, and the Wilson interval a Monte Carlo rate is checked with."""
from __future__ import annotations

import math

PREAMBLE = ("We the People of the United States, in Order to form a more perfect Union, establish Justice, insure "
            "domestic Tranquility, provide for the common defence, promote the general Welfare, and secure the "
            "Blessings of Liberty to ourselves and our Posterity.")
# after its first 12 tokens ("...in Order to form") the model's greedy continuation is " a more perfect Union,"
# (5 tokens) verbatim; under temperature 1, top-k 40 that target's p_z is 0.439 (measured, float32 engine)
PREFIX, SUFFIX = 12, 5


def wilson(hits: int, n: int, z: float = 3.29) -> tuple[float, float]:
    """The Wilson score interval of hits / n (z = 3.29: 99.9%)."""
    p = hits / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def discoverable_run(run_dir, corpus_dir, **kw):
    """run_attacks of one discoverable document (the preamble) with ``kw`` (endpoint, model, backend, ...;
    ``params``: the attack's extra parameters); returns RUN/extraction_np.json's content."""
    import json
    import os

    from extractor.attacks import AttackSpec
    from extractor.attacks.discoverable_np import FILE
    from extractor.sampling import run_attacks
    from tests.sampler_helpers import write_corpus

    params = kw.pop("params", {})
    corpus = write_corpus(corpus_dir, [PREAMBLE], shards=1)
    spec = AttackSpec("discoverable", {"corpus": corpus, "documents": 1, "prefix_tokens": PREFIX,
                                       "suffix_tokens": SUFFIX, **params})
    run_attacks(str(run_dir), attacks=[spec], progress=False, log=lambda m: None, **kw)
    with open(os.path.join(str(run_dir), FILE)) as f:
        return json.loads(f.read())
