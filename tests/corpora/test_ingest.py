"""corpora: readers, ingest statistics, shards, bad input, the builtin corpus."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard

from corpora import CorpusError, build_offline_corpus, ingest, open_corpus
from corpora.shards import MANIFEST_NAME

ROWS = [
    {"text": "first document", "id": "a", "lang": "en", "score": 1.5},
    {"text": "", "id": "b", "lang": "en", "score": 0.0},
    {"text": "second document ü", "id": "c", "lang": "de", "score": 2.0},
    {"text": "first document", "id": "d", "lang": "en", "score": 3.0},
]


def write_jsonl(path: Path, rows, opener=open):
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    elif path.suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.parquet", "d.arrow", "d.feather"])
def test_formats_fields_metadata_and_stats(tmp_path, name):
    src = tmp_path / name
    if "jsonl" in name:
        write_jsonl(src, ROWS)
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(ROWS), src)
    elif name.endswith(".arrow"):
        with pa.OSFile(str(src), "wb") as sink, pa.ipc.new_file(sink, pa.Table.from_pylist(ROWS).schema) as w:
            w.write_table(pa.Table.from_pylist(ROWS))
    else:
        feather.write_feather(pa.Table.from_pylist(ROWS), src)
    c = ingest([src], tmp_path / "out", id_field="id")
    assert c.stats == {"read": 4, "skipped_empty": 1, "repaired_utf8": 0, "exact_duplicates": 1}
    docs = list(c.iter_documents())
    assert [d.doc_id for d in docs] == [0, 1]
    assert [d.text for d in docs] == ["first document", "second document ü"]
    assert [d.ext_id for d in docs] == ["a", "c"]
    assert docs[1].metadata == {"lang": "de", "score": 2.0}
    assert docs[0].source.startswith(str(src) + "#")
    assert c.text_bytes == len("first document".encode()) + len("second document ü".encode())


def test_keep_duplicates_and_text_field(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"body": "same"}, {"body": "same"}])
    c = ingest([src], tmp_path / "out", text_field="body", keep_duplicates=True)
    assert c.documents == 2 and c.stats["exact_duplicates"] == 0


def test_directory_of_text_files_sorted_and_repaired(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_bytes(b"bad \xff\xfe bytes")
    (d / "a.txt").write_text("alpha")
    (d / "sub" / "c.md").write_text("gamma")
    (d / ".hidden").write_text("no")
    c = ingest([d], tmp_path / "out")
    docs = list(c.iter_documents())
    assert [Path(x.source).name for x in docs] == ["a.txt", "b.txt", "c.md"]
    assert docs[1].text == "bad \ufffd\ufffd bytes"
    assert c.stats["repaired_utf8"] == 1


def test_invalid_utf8_and_lone_surrogates_in_jsonl_are_repaired(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_bytes(b'{"text": "ok \xff here"}\n{"text": "lone \\udc80 surrogate"}\n\n{"text": "fine"}\n')
    c = ingest([src], tmp_path / "out")
    texts = [d.text for d in c.iter_documents()]
    assert texts == ["ok \ufffd here", "lone \ufffd surrogate", "fine"]
    assert c.stats["repaired_utf8"] == 2 and c.stats["read"] == 3


def test_shards_are_bounded(tmp_path):
    rows = [{"text": f"document number {i} " + "x" * 100} for i in range(50)]
    c = ingest([write_jsonl(tmp_path / "x.jsonl", rows)], tmp_path / "out", max_shard_bytes=1000)
    assert len(c.shards) > 5
    for s in c.manifest["shards"]:
        assert s["text_bytes"] <= 1000
        assert s["sha256"] and (c.path / s["name"]).is_file()
    ids = [d.doc_id for d in c.iter_documents()]
    assert ids == list(range(50))


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "ok"}\n{"text": oops}\n', "x.jsonl:2: invalid JSON"),
        (b'{"body": "no text field"}\n', "x.jsonl:1: no field 'text'"),
        (b'["not", "an", "object"]\n', "x.jsonl:1: expected a JSON object"),
        (b'{"text": 42}\n', "x.jsonl:1: field 'text' is int"),
    ],
)
def test_bad_jsonl_is_one_clear_error_and_leaves_nothing(tmp_path, content, message):
    src = tmp_path / "x.jsonl"
    src.write_bytes(content)
    with pytest.raises(CorpusError, match=message.replace("[", r"\[")):
        ingest([src], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_missing_column_in_parquet(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a"]}), src)
    with pytest.raises(CorpusError, match="t.parquet: no column 'text'"):
        ingest([src], tmp_path / "out")
    with pytest.raises(CorpusError, match="no column 'nope'"):
        ingest([src], tmp_path / "out", text_field="body", id_field="nope")


def test_binary_file_in_directory(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("text")
    (d / "b.bin").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(CorpusError, match=r"b\.bin: binary file"):
        ingest([d], tmp_path / "out")
    c = ingest([d], tmp_path / "out", skip_binary=True)
    assert c.documents == 1


def test_corrupt_inputs(tmp_path):
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:30])
    with pytest.raises(CorpusError, match="x.jsonl.gz"):
        ingest([gz], tmp_path / "out")
    pqf = tmp_path / "y.parquet"
    pqf.write_bytes(b"PAR1 not really")
    with pytest.raises(CorpusError, match="y.parquet: not a readable Parquet file"):
        ingest([pqf], tmp_path / "out")
    with pytest.raises(CorpusError, match="no such file"):
        ingest([tmp_path / "missing.jsonl"], tmp_path / "out")


def test_existing_output_needs_force(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", ROWS)
    ingest([src], tmp_path / "out")
    with pytest.raises(CorpusError, match="already exists"):
        ingest([src], tmp_path / "out")
    c = ingest([src], tmp_path / "out", overwrite=True, keep_duplicates=True)
    assert c.documents == 3


def test_open_corpus_checks_manifest(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", ROWS)
    c = ingest([src], tmp_path / "out")
    m = json.loads((c.path / MANIFEST_NAME).read_text())
    m["format_version"] = 99
    (c.path / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(CorpusError, match="format version 99"):
        open_corpus(c.path)
    with pytest.raises(CorpusError, match="not a corpus folder"):
        open_corpus(tmp_path)


def test_builtin_offline_corpus_is_deterministic(tmp_path):
    a = build_offline_corpus(tmp_path / "a", max_bytes=300_000)
    b = build_offline_corpus(tmp_path / "b", max_bytes=300_000)
    assert 0 < a.text_bytes <= 300_000
    assert [s["sha256"] for s in a.manifest["shards"]] == [s["sha256"] for s in b.manifest["shards"]]
    docs = list(a.iter_documents())
    assert all(Path(d.source).is_file() for d in docs)
    assert any(d.source.endswith(".py") for d in docs)
