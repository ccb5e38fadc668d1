"""End-to-end: the sampler against the real embedded model server (llama.cpp, Gemma-3-270m)."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from extractor.attacks import AttackSpec
from extractor.sampling.budget import Budget, Pricing
from extractor.errors import TrawlError
from corpora.storage import GENERATIONS_SCHEMA
from extractor.sampling.run_folder import RunDir
from extractor.sampling import run_attacks
from sampler_helpers import write_corpus

pytestmark = pytest.mark.slow


def _attacks(corpus):
    return [
        AttackSpec("divergence", {"words": ["poem", "company"], "repetitions": 20, "samples": 2, "max_tokens": 24}),
        AttackSpec("discoverable", {"corpus": corpus, "documents": 2, "prefix_tokens": 16, "suffix_tokens": 20,
                                    "selection": "first"}),
    ]


def check_generations(run_dir, expect_rows):
    rd = RunDir(run_dir)
    parts = rd.part_paths()
    assert parts, "no parts written"
    for p in parts:
        assert pq.read_schema(p).remove_metadata() == GENERATIONS_SCHEMA
    t = rd.read_generations()
    rows = t.to_pylist()
    assert len(rows) == expect_rows
    assert pq.read_table(os.path.join(str(run_dir), "generations")).num_rows == expect_rows
    ids = [r["request_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        data = r["completion"].encode("utf-8")
        off = r["token_offsets"]
        assert off is not None
        assert r["completion_tokens"] == len(off)
        assert all(0 <= o < max(1, len(data)) for o in off)
        assert off == sorted(off) and (not off or off[0] == 0)
        assert r["endpoint"].startswith("http://127.0.0.1:")
        json.loads(r["params"])
        extra = json.loads(r["extra"])
        if r["attack"] == "divergence":
            assert {"word", "repetitions", "diverged", "diverged_at"} <= extra.keys()
        elif r["attack"] == "discoverable":
            assert {"doc_id", "prefix_tokens", "target", "target_tokens", "exact", "edit_distance_ratio"} <= extra.keys()
            assert r["prompt_tokens"] >= 16
    return rows


def test_run_attacks_end_to_end_and_resume(local_server, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    os.environ["TRAWL_TEST_SECRET_KEY"] = "sk-test-should-never-appear"
    s = run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=_attacks(corpus),
                    concurrency=2, progress=False, api_key_env="TRAWL_TEST_SECRET_KEY",
                    pricing=Pricing(input_per_mtok=1.0, output_per_mtok=2.0))
    assert s.status == "finished" and s.stop_reason is None
    assert s.planned == 6 and s.finished == 6 and s.new_generations == 6
    rows = check_generations(run, 6)
    assert s.cost_usd == pytest.approx((s.prompt_tokens * 1.0 + s.completion_tokens * 2.0) / 1e6)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(s.cost_usd)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["stopped_early"] is False
    assert status["attacks"]["discoverable"]["documents"] == 2
    for f in ("config.json", "run.json"):
        assert "sk-test-should-never-appear" not in (run / f).read_text()
    # resume of a finished run: nothing new, nothing duplicated
    s2 = run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=_attacks(corpus),
                     concurrency=2, progress=False, resume=True)
    assert s2.new_generations == 0 and s2.finished == 6
    rows2 = check_generations(run, 6)
    assert sorted(r["request_id"] for r in rows2) == sorted(r["request_id"] for r in rows)
    # same folder without --resume: refused
    with pytest.raises(TrawlError, match="already holds a run"):
        run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=_attacks(corpus),
                    progress=False)
    # changed attacks on resume: refused
    with pytest.raises(TrawlError, match="differ from the run's frozen"):
        run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model,
                    attacks=_attacks(corpus)[:1], progress=False, resume=True)


def test_budget_stops_cleanly_then_resume_completes(local_server, tmp_path):
    run = tmp_path / "run"
    spec = [AttackSpec("divergence", {"words": ["book"], "repetitions": 10, "samples": 5, "max_tokens": 8})]
    s = run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=spec,
                    budget=Budget(max_generations=3), concurrency=2, progress=False)
    assert s.status == "stopped" and s.stop_reason == "max_generations" and s.finished == 3
    st = json.loads((run / "run.json").read_text())
    assert st["stopped_early"] is True and st["stop_reason"] == "max_generations"
    s = run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=spec,
                    budget=Budget(max_tokens=1), concurrency=2, progress=False, resume=True)
    assert s.status == "stopped" and s.stop_reason == "max_tokens" and s.new_generations == 0
    s = run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=spec,
                    concurrency=2, progress=False, resume=True, pricing=Pricing(gpu_hourly_usd=3.6))
    assert s.status == "finished" and s.finished == 5 and s.new_generations == 2
    assert s.cost_usd > 0
    check_generations(run, 5)


def test_cli_sample_and_attacks(local_server, tmp_path, capsys):
    from extractor.cli import main

    run = tmp_path / "cli-run"
    rc = main(["sample", "--endpoint", local_server.base_url + "/v1", "--model", local_server.model,
               "--attack", "divergence", "--param", "words=poem", "--param", "samples=1",
               "--param", "repetitions=5", "--param", "max_tokens=8", "--out", str(run), "--concurrency", "2",
               "--no-progress", "--json", "--max-dollars", "1", "--price-output-per-mtok", "10"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "finished" and out["finished"] == 1
    check_generations(run, 1)
    assert main(["attacks"]) == 0
    text = capsys.readouterr().out
    assert "divergence" in text and "discoverable" in text and "repetitions" in text


def test_other_attacks_against_the_real_model(local_server, tmp_path):
    text = tmp_path / "web.txt"
    text.write_text("The history of the printing press begins in Mainz around 1440.\n\n"
                    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.\n")
    attacks = [
        AttackSpec("special_chars", {"strategies": "repeat,cross_set", "structural": "{", "special": "@",
                                     "lengths": "12", "combinations": 1, "samples": 1, "max_tokens": 12}),
        AttackSpec("unconditional", {"samples": 1, "max_tokens": 16, "decay_tokens": 6, "decay_steps": 2}),
        AttackSpec("prefix", {"source": str(text), "prompts": 2, "max_tokens": 10}),
    ]
    s = run_attacks(str(tmp_path / "run"), endpoint=local_server.base_url, model=local_server.model,
                    attacks=attacks, concurrency=2, progress=False)
    assert s.status == "finished" and s.finished == 3 + 2 + 2
    rows = check_generations(tmp_path / "run", 7)
    by = {}
    for r in rows:
        by.setdefault(r["attack"], []).append(r)
    assert {r["variant"] for r in by["special_chars"]} == {"repeat:{x12", "repeat:@x12", "cross_set:12:0"}
    decay = [r for r in by["unconditional"] if r["variant"] == "temperature_decay"][0]
    extra = json.loads(decay["extra"])
    assert "approximated" in extra["approximation"] and len(extra["calls"]) == 3
    assert [c["temperature"] for c in extra["calls"]] == [8.5, 4.0, 1.0]
    assert decay["prompt"] == "" and decay["completion_tokens"] == len(decay["token_offsets"])
    topk = [r for r in by["unconditional"] if r["variant"] == "top_k"][0]
    assert json.loads(topk["params"]) == {"max_tokens": 16, "temperature": 1.0, "top_k": 40}
    for r in by["prefix"]:
        e = json.loads(r["extra"])
        assert 5 <= e["prompt_tokens_cut"] <= 10 and r["prompt"].strip() and r["prompt"] in text.read_text()


PREAMBLE = ("We the People of the United States, in Order to form a more perfect Union,")
PREAMBLE_NEXT = (" establish Justice, insure domestic Tranquility, provide for the common defence, promote the "
                 "general Welfare, and secure the Blessings")


def test_llama_cpp_sampling_defaults_are_neutralised(local_server, tmp_path):
    """llama-cpp-python's own defaults (repeat_penalty 1.1, top_k 40, top_p 0.95, min_p 0.05) apply to
    every field a request leaves out; the repetition penalty even bends greedy decoding away from the
    memorized text. trawl sends the neutral values, so its greedy continuation of the Constitution's
    preamble is the verbatim one, while a bare request with the server's defaults is not."""
    import requests

    from extractor.backends import make_backend
    from extractor.backends.probe import LLAMA_CPP_NEUTRAL

    bare = requests.post(local_server.base_url + "/v1/completions",
                         json={"model": local_server.model, "prompt": PREAMBLE, "max_tokens": 24,
                               "temperature": 0.0}, timeout=120).json()["choices"][0]["text"]
    assert not bare.startswith(PREAMBLE_NEXT)  # the penalty breaks the quotation (known answer of this model)

    be = make_backend("openai", endpoint=local_server.base_url, model=local_server.model, api_key_env=None)
    caps = be.probe(use_cache=False)
    assert caps.server == "llama_cpp" and caps.sampling_defaults == LLAMA_CPP_NEUTRAL
    text = be.complete(PREAMBLE, {"temperature": 0.0, "max_tokens": 24}).choices[0].text
    assert text.startswith(PREAMBLE_NEXT)

    s = run_attacks(str(tmp_path / "run"), endpoint=local_server.base_url, model=local_server.model,
                    attacks=[AttackSpec("divergence", {"words": ["poem"], "samples": 1, "repetitions": 5,
                                                       "max_tokens": 4})],
                    progress=False, concurrency=1, log=lambda m: None)
    assert s.status == "finished"
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["capabilities"]
    assert recorded["server"] == "llama_cpp" and recorded["sampling_defaults"] == LLAMA_CPP_NEUTRAL


TOKENIZER_TEXTS = [
    "",
    " poem poem poem, company company\n\n\n",
    "We the People of the United States, in Order to form a more perfect Union,",
    "naïve façade — «quoted» 中文 日本語の文 🙂🚀 ﬁ Å",
    "def f(x):\n\treturn {'a': x ** 2}  # <eos> <start_of_turn> &amp;\r\n",
    "    indented\t\ttabs and trailing spaces   ",
    "0123456789 3.14159 1e-9 0xDEADBEEF",
]


def test_tokenizer_file_gives_the_servers_tokens_in_process(local_server, tmp_path):
    """The GGUF file's tokenizer, run in trawl's process, gives the server's token ids and the same
    token boundaries as re-tokenizing through the server, on text chosen to be hard (multi-byte
    characters, special-token strings, whitespace runs), and on real completions of a run."""
    from extractor.backends import make_backend
    from extractor.backends.gguf_tokenizer import GGUFTokenizer

    server_be = make_backend("openai", endpoint=local_server.base_url, model=local_server.model, api_key_env=None)
    server_be.probe(use_cache=False)
    assert server_be.capabilities.token_info == "tokenize"
    tok = GGUFTokenizer.for_file(local_server.model_path)
    assert GGUFTokenizer.for_file(str(local_server.model_path)) is tok  # loaded once per process
    from extractor.backends.alignment import AlignmentError

    for text in TOKENIZER_TEXTS:
        ids = tok.tokenize(text)
        assert ids == server_be.tokenize(text), text
        if not text:
            continue
        local = tok.offsets(text)
        assert len(local) == len(ids) and local[0] == 0 and local == sorted(local), text
        try:
            assert local == server_be.token_offsets(text), text
        except AlignmentError:
            # the endpoint decodes special tokens ("<eos>") to "" and cannot place them; the file's
            # pieces are exact: they spell the text
            assert "<eos>" in text and b"".join(tok.pieces(ids)) == text.encode()

    s = run_attacks(str(tmp_path / "run"), endpoint=local_server.base_url, model=local_server.model,
                    tokenizer_file=str(local_server.model_path),
                    attacks=[AttackSpec("divergence", {"words": ["poem", "ü"], "repetitions": 10, "samples": 2,
                                                       "max_tokens": 24})],
                    progress=False, concurrency=2, log=lambda m: None)
    assert s.status == "finished" and s.finished == 4
    caps = json.loads((tmp_path / "run" / "run.json").read_text())["capabilities"]
    assert caps["token_info"] == "local_tokenize" and caps["tokenizer_file"] == local_server.model_path.name
    rows = check_generations(tmp_path / "run", 4)
    for r in rows:
        if r["completion"]:
            assert json.loads(r["extra"])["token_source"] == "local_tokenize"
            assert r["token_offsets"] == server_be.token_offsets(r["completion"])


def test_tokenizer_file_that_does_not_match_the_server_is_refused(local_server, tmp_path):
    """Real GGUF file, but a server with another tokenizer (the flaky test server's): one line, no run."""
    from flaky_server import FlakyServer

    with FlakyServer(faults=()) as other:
        with pytest.raises(TrawlError, match=r"its tokenizer does not match the model served at"):
            run_attacks(str(tmp_path / "run"), endpoint=other.base_url, model=other.model,
                        tokenizer_file=str(local_server.model_path),
                        attacks=[AttackSpec("divergence", {"words": ["a"], "samples": 1, "max_tokens": 4})],
                        progress=False, log=lambda m: None)
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(TrawlError, match=r"not-a-model.gguf: not a GGUF model file llama.cpp can load"):
        run_attacks(str(tmp_path / "run2"), endpoint=local_server.base_url, model=local_server.model,
                    tokenizer_file=str(bad), attacks=[AttackSpec("divergence", {"words": ["a"], "samples": 1})],
                    progress=False, log=lambda m: None)
