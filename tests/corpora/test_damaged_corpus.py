"""Corpus inputs and corpus folders damaged or hostile (issue 17): wrong types in corpus.json are one
line naming the key; a deeply nested JSON line is one line; random corruption of JSONL (plain, .gz,
.zst), Parquet, Arrow and text inputs is a one-line error or a correct corpus."""
from __future__ import annotations

import gzip
import json
import random
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from corpora import CorpusError, ingest, open_corpus
from corpora.shards import MANIFEST_NAME
from repo import one_line_error, trawl

TEXTS = [f"document number {i}: " + " ".join(f"w{(i * 7 + j) % 13}" for j in range(20)) for i in range(40)]


def test_deeply_nested_json_line_is_one_line(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"text": "ok"}) + "\n" + '{"text": "x", "m": ' + "[" * 200000 + "]" * 200000 + "}\n")
    with pytest.raises(CorpusError, match="d.jsonl:2: JSON nested too deeply"):
        ingest([src], tmp_path / "c")
    one_line_error(trawl("corpus", "ingest", src, "--out", tmp_path / "c"), "nested too deeply")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("key,value,where", [
    ("documents", "7", "documents"), ("shards", {"a": 1}, "shards"), ("shards", [5], "shards[0]"),
    ("shards", [{"name": 5, "documents": 1, "text_bytes": 1}], "shards[0].name"),
    ("shards", [{"name": "../../etc/passwd", "documents": 1, "text_bytes": 1}], "shards[0].name"),
    ("shards", [{"name": "shard-00000.arrow", "documents": "1", "text_bytes": 1}], "shards[0].documents"),
    ("stats", [1], "stats"), ("text_bytes", None, "text_bytes")])
def test_wrong_types_in_corpus_json_name_the_key(tmp_path, key, value, where):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    ingest([src], tmp_path / "c")
    m = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    m[key] = value
    (tmp_path / "c" / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(CorpusError, match=f"corpus.json: corrupt manifest \\({where.replace('[', '.').replace(']', '.')}"):
        open_corpus(tmp_path / "c")
    for args in (("corpus", "info", tmp_path / "c"), ("index", "build", tmp_path / "c", "--out", tmp_path / "i")):
        one_line_error(trawl(*args), f"corpus.json: corrupt manifest ({where}")


def encode(kind: str, rows) -> bytes:
    if kind.startswith("jsonl"):
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if kind == "jsonl.gz":
            return gzip.compress(data, mtime=0)
        if kind == "jsonl.zst":
            return zstandard.ZstdCompressor(write_checksum=True).compress(data)   # as zstd -C writes
        return data
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist(rows)
    if kind == "parquet":
        pq.write_table(table, sink, write_page_checksum=True)
    else:
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow", "txt"])
def test_fuzz_corrupted_inputs_are_one_line_or_a_correct_corpus(tmp_path, kind):
    """Random byte flips, zeroed runs and truncation: an error naming the file, or a corpus whose
    documents are what a reader of the damaged bytes sees (never a traceback). For compressed and
    checksummed formats a corpus must hold exactly the original documents."""
    rng = random.Random(zlib.crc32(kind.encode()))
    rows = [{"text": t, "id": i} for i, t in enumerate(TEXTS)]
    clean = encode(kind, rows) if kind != "txt" else "\n".join(TEXTS).encode()
    failed = []
    for trial in range(60):
        data = bytearray(clean)
        how = trial % 3
        if how == 0:
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:
            at = rng.randrange(len(data))
            data[at:at + 32] = bytes(len(data[at:at + 32]))
        else:
            del data[rng.randrange(1, len(data)):]
        src = tmp_path / f"in{trial}.{kind}"
        src.write_bytes(bytes(data))
        out = tmp_path / f"c{trial}"
        try:
            docs = [d.text for d in ingest([src], out).iter_documents()]
        except CorpusError as exc:
            assert "\n" not in str(exc) and (str(src) in str(exc) or "no documents" in str(exc)), str(exc)
            assert not out.exists()
            failed.append(src)
            continue
        if kind in ("jsonl.gz", "jsonl.zst", "parquet") and how != 2:
            assert docs == TEXTS, (kind, trial)
    if failed:   # and the command says it in one line
        one_line_error(trawl("corpus", "ingest", failed[0], "--out", tmp_path / "cli", "-q"), str(failed[0]))
