"""suffix_index: build, manifest, verify, bad input, the CLI and matches.parquet."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpora import ingest_records
from corpora.readers import Record
from suffix_index import IndexFormatError, SuffixIndex, build_index
from suffix_index.manifest import MANIFEST_NAME, manifest_sha256
from suffix_index.verify import verify_index
from repo import ROOT

DOCS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
        "sphinx of black quartz, judge my vow ü€", "the quick brown fox again"]


@pytest.fixture()
def corpus(tmp_path):
    recs = [Record(source=f"s{i}", text=t, metadata={"i": i}) for i, t in enumerate(DOCS)]
    ingest_records(recs, tmp_path / "corpus", max_shard_bytes=60)
    return tmp_path / "corpus"


@pytest.fixture()
def index(corpus, tmp_path):
    build_index(corpus, tmp_path / "index")
    return tmp_path / "index"


def test_layout_manifest_and_sa(index):
    m = json.loads((index / MANIFEST_NAME).read_text())
    assert m["format"] == "trawl-suffix-index" and m["format_version"] == 1
    assert m["documents"] == 4 and len(m["shards"]) > 1
    assert m["build"]["tools"]["pydivsufsort"]
    for s in m["shards"]:
        text = (index / s["files"]["bytes"]["name"]).read_bytes()
        sa = np.fromfile(index / s["files"]["sa"]["name"], dtype="<u4")
        assert s["pointer_width"] == 4 and len(sa) == len(text) == s["bytes"]
        assert [text[i:] for i in sa] == sorted(text[i:] for i in range(len(text)))
        assert text[0] == 0xFF
    assert not list(index.parent.glob("index.tmp-*"))


def test_parallel_build_is_identical(corpus, index, tmp_path):
    build_index(corpus, tmp_path / "index2", jobs=2, fsync=True)
    m1 = json.loads((index / MANIFEST_NAME).read_text())
    m2 = json.loads((tmp_path / "index2" / MANIFEST_NAME).read_text())
    assert [s["files"] for s in m1["shards"]] == [s["files"] for s in m2["shards"]]


def test_document_metadata_and_open_is_mapped(index):
    with SuffixIndex.open(index) as idx:
        d = idx.document(2)
        assert d.text == DOCS[2] and d.source == "s2" and d.metadata == {"i": 2}
        assert idx.count("the quick brown fox") == 2
        assert not idx.shards[0].text.flags.owndata  # a view over the mapped file


def test_verify_ok(index):
    r = verify_index(index)
    assert r["files_checked"] == 3 * r["shards"] and r["pairs_checked"] > 0


def test_corrupted_file_detected_by_verify(index):
    m = json.loads((index / MANIFEST_NAME).read_text())
    p = index / m["shards"][0]["files"]["bytes"]["name"]
    data = bytearray(p.read_bytes())
    data[5] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=rf"{p.name}: checksum mismatch"):
        verify_index(index)


def test_unsorted_sa_detected_by_quick_verify(index):
    m = json.loads((index / MANIFEST_NAME).read_text())
    p = index / m["shards"][0]["files"]["sa"]["name"]
    sa = np.fromfile(p, dtype="<u4")
    sa[[3, 4]] = sa[[4, 3]]
    sa.tofile(p)
    with pytest.raises(IndexFormatError, match="out of order"):
        verify_index(index, checksums=False)


def test_truncated_and_missing_files(index):
    m = json.loads((index / MANIFEST_NAME).read_text())
    sa = index / m["shards"][0]["files"]["sa"]["name"]
    sa.write_bytes(sa.read_bytes()[:-4])
    with pytest.raises(IndexFormatError, match=rf"{sa.name}: size .* \(truncated"):
        SuffixIndex.open(index)
    docs = index / m["shards"][1]["files"]["docs"]["name"]
    docs.unlink()
    sa.unlink()
    with pytest.raises(IndexFormatError, match="index file missing"):
        SuffixIndex.open(index)


def test_other_format_version_and_not_an_index(index, tmp_path):
    m = json.loads((index / MANIFEST_NAME).read_text())
    m["format_version"] = 2
    (index / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="format version 2"):
        SuffixIndex.open(index)
    (index / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(IndexFormatError, match="corrupt manifest"):
        SuffixIndex.open(index)
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        SuffixIndex.open(tmp_path)


def test_failed_build_leaves_nothing(corpus, tmp_path):
    shard = next(corpus.glob("shard-*.arrow"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(Exception) as ei:
        build_index(corpus, tmp_path / "bad")
    assert getattr(type(ei.value), "user_error", False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("bad.tmp-*"))


# --------------------------------------------------------------------------- CLI


def trawl(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "extractor.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd)


def write_generations(path: Path, rows):
    cols = {
        "run_id": [r[0] for r in rows], "request_id": [r[1] for r in rows], "completion": [r[2] for r in rows],
        "token_offsets": pa.array([r[3] for r in rows], type=pa.list_(pa.int32())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def test_cli_end_to_end(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(DOCS)))
    r = trawl("corpus", "ingest", src, "--out", tmp_path / "c", "--shard-size", "60")
    assert r.returncode == 0, r.stderr
    assert "4 documents" in r.stdout and "exact duplicates 0" in r.stdout
    r = trawl("index", "build", tmp_path / "c", "--out", tmp_path / "i", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    r = trawl("index", "verify", tmp_path / "i")
    assert r.returncode == 0 and "OK" in r.stdout
    r = trawl("index", "count", tmp_path / "i", "quick brown")
    assert r.stdout.strip() == "2"
    run = tmp_path / "run"
    g1 = "xx the quick brown fox jumps yy"
    offs1 = [0, 2, 6, 12, 18, 22, 28]
    write_generations(run / "generations" / "part-00000.parquet",
                      [("r1", "a", g1, offs1), ("r1", "b", "", []), ("r1", "c", "nothing here at all", None)])
    r = trawl("match", run, "--index", tmp_path / "i", "--min-tokens", "3")
    assert r.returncode == 0, r.stderr
    t = pq.read_table(run / "matches.parquet")
    rows = t.to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert (row["request_id"], row["span_start"], row["span_end"]) == ("a", 3, 29)
    assert row["text"] == "the quick brown fox jumps "
    assert row["tokens"] == 4 and row["occurrences"] == 1 and row["doc_id"] == 0 and row["doc_offset"] == 0
    meta = t.schema.metadata
    assert meta[b"min_tokens"] == b"3"
    assert meta[b"index_manifest_sha256"].decode() == manifest_sha256(tmp_path / "i")
    assert [f.name for f in t.schema] == ["run_id", "request_id", "span_start", "span_end", "tokens", "shard",
                                          "doc_id", "doc_offset", "occurrences", "source", "text"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "build", "{tmp}/nocorpus", "--out", "{tmp}/i"], "not a corpus folder"),
        (["index", "verify", "{tmp}"], "not an index folder"),
        (["match", "{tmp}/nothing", "--index", "{tmp}"], "no such file"),
        (["corpus", "ingest", "{tmp}/bad.jsonl", "--out", "{tmp}/c"], "bad.jsonl:1: invalid JSON"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    r = trawl(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2
    assert r.stderr.startswith("trawl: error: ") and message in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_64bit_pointers_path(corpus, tmp_path, monkeypatch):
    """Shards past 2 GiB get 8-byte pointers; forced here on a tiny shard."""
    import suffix_index.build as b

    monkeypatch.setattr(b, "MAX_32BIT_BYTES", 10)
    build_index(corpus, tmp_path / "i64")
    m = json.loads((tmp_path / "i64" / MANIFEST_NAME).read_text())
    assert {s["pointer_width"] for s in m["shards"]} == {8}
    with SuffixIndex.open(tmp_path / "i64") as idx:
        assert idx.shards[0].sa.dtype == np.uint64
        assert idx.count("the quick brown fox") == 2
        spans = idx.match([("k", b"zz the quick brown fox jumps over zz", None)], min_bytes=5)
        assert [(s.start, s.end, s.doc_id) for s in spans] == [(2, 7, 0), (3, 34, 0)]
    verify_index(tmp_path / "i64")


def test_empty_corpus_is_refused_at_ingest(tmp_path):
    """An empty corpus is an error where it would be made (see test_suffix_index_qa for build)."""
    from corpora import CorpusError

    with pytest.raises(CorpusError, match="no documents"):
        ingest_records([Record(source="e", text="")], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_match_reads_a_folder_of_parts_and_a_single_file(index, tmp_path):
    from suffix_index.matchfile import match_to_parquet

    parts = tmp_path / "parts"
    write_generations(parts / "part-00000.parquet", [("r", "a", "pack my box with five", None)])
    write_generations(parts / "part-00001.parquet", [("r", "b", "judge my vow ü€!", [0, 5, 8, 12, 16])])
    with SuffixIndex.open(index) as idx:
        r = match_to_parquet(idx, parts, tmp_path / "m.parquet", min_tokens=2, min_bytes=10)
        assert r == {"generations": 2, "spans": 2, "out": str(tmp_path / "m.parquet")}
        rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
        assert [(x["request_id"], x["span_start"], x["span_end"], x["tokens"]) for x in rows] == [
            ("a", 0, 21, None), ("b", 0, 18, 4)]
        assert rows[1]["text"] == "judge my vow ü€"
        r = match_to_parquet(idx, parts / "part-00000.parquet", tmp_path / "m2.parquet", min_tokens=2, min_bytes=10)
        assert r["spans"] == 1
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["x"]}), bad)
    from suffix_index import MatchInputError

    with SuffixIndex.open(index) as idx, pytest.raises(MatchInputError, match="no column 'run_id'"):
        match_to_parquet(idx, bad, tmp_path / "m3.parquet")
    assert not (tmp_path / "m3.parquet").exists()


def test_cli_corpus_info_builtin_and_index_info(tmp_path):
    r = trawl("corpus", "builtin", "--out", tmp_path / "b", "--max-bytes", "200KB")
    assert r.returncode == 0, r.stderr
    r = trawl("corpus", "info", tmp_path / "b")
    assert r.returncode == 0 and "documents" in r.stdout
    r = trawl("index", "build", tmp_path / "b", "--out", tmp_path / "i", "-q")
    assert r.returncode == 0, r.stderr
    r = trawl("index", "info", tmp_path / "i", "--json")
    assert json.loads(r.stdout)["format"] == "trawl-suffix-index"
    r = trawl("index", "find", tmp_path / "i", "import", "--limit", "2")
    assert r.returncode == 0 and r.stdout.count("doc ") == 2
