"""corpora: regressions for QA findings (empty corpora, UTF-8 BOM, bad sizes, --help)."""
from __future__ import annotations


import pytest

from corpora import CorpusError, build_offline_corpus, ingest, ingest_records
from corpora.readers import Record
from repo import one_line_error, trawl


# ------------------------------------------------------------------ 5. no documents


def test_ingest_of_only_empty_records_is_an_error(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text('{"text":""}\n')
    with pytest.raises(CorpusError, match=r"no documents: all 1 records were empty/duplicates/skipped"):
        ingest([src], tmp_path / "c")
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("c.tmp-*"))
    one_line_error(trawl("corpus", "ingest", src, "--out", tmp_path / "c"),
                   "no documents: all 1 records were empty/duplicates/skipped")
    assert not (tmp_path / "c").exists()


def test_ingest_of_nothing_is_an_error_and_keeps_an_existing_corpus(tmp_path):
    ingest_records([Record(source="a", text="kept")], tmp_path / "c")
    with pytest.raises(CorpusError, match="no documents: all 0 records"):
        ingest_records([], tmp_path / "c", overwrite=True)
    assert (tmp_path / "c" / "corpus.json").exists()


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_builtin_needs_positive_max_bytes(tmp_path, max_bytes):
    with pytest.raises(CorpusError, match="max_bytes must be a whole number > 0"):
        build_offline_corpus(tmp_path / "b", max_bytes=max_bytes)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ 7. UTF-8 BOM


def test_jsonl_with_utf8_bom(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first doc"}\n{"text": "second doc"}\n')
    c = ingest([src], tmp_path / "c")
    assert [d.text for d in c.iter_documents()] == ["first doc", "second doc"]
    assert c.stats["repaired_utf8"] == 0
    r = trawl("corpus", "ingest", src, "--out", tmp_path / "c2")
    assert r.returncode == 0, r.stderr


def test_text_file_with_utf8_bom(tmp_path):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_bytes(b"\xef\xbb\xbfhello world")
    c = ingest([d], tmp_path / "c")
    assert [x.text for x in c.iter_documents()] == ["hello world"]


def test_bom_only_at_the_start_of_the_file(tmp_path):
    src = tmp_path / "late.jsonl"
    src.write_bytes(b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    with pytest.raises(CorpusError, match="late.jsonl:2: invalid JSON"):
        ingest([src], tmp_path / "c")


# ------------------------------------------------------------------ 8. --help


def test_corpus_help_describes_arguments():
    r = trawl("corpus", "builtin", "--help")
    out = " ".join(r.stdout.split())
    assert "--out DIR, -o DIR corpus folder to create" in out, out
    r = trawl("corpus", "info", "--help")
    out = " ".join(r.stdout.split())
    assert "DIR corpus folder (or URL) from" in out, out


# ------------------------------------------------------------------ truncated compressed input

def _zst(data: bytes, frames: int = 2) -> bytes:
    import zstandard

    cut = len(data) // frames
    return b"".join(zstandard.ZstdCompressor().compress(data[i * cut:(i + 1) * cut if i < frames - 1 else None])
                    for i in range(frames))


@pytest.mark.parametrize("name", ["d.jsonl.zst", "folder/a.txt.zst"])
def test_truncated_zstd_input_is_one_line_naming_the_file(tmp_path, name):
    """zstandard's stream reader returns a truncated file's partial data as if whole: the
    documents after the cut were dropped with exit 0 (a .txt.zst in a folder became a short
    or empty document). Every truncation point must be an error naming the file."""
    rows = b"".join(b'{"text": "document %d %s"}\n' % (i, b"word " * 40) for i in range(400))
    whole = _zst(rows)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path if name.endswith(".jsonl.zst") else path.parent
    path.write_bytes(whole)   # the whole file reads as all its documents
    assert ingest([src], tmp_path / "ok").manifest["documents"] == (400 if name.endswith(".jsonl.zst") else 1)
    for cut in (len(whole) - 1, len(whole) - 50, len(whole) // 2 + 7, 20):
        path.write_bytes(whole[:cut])
        r = trawl("corpus", "ingest", src, "--out", tmp_path / f"c{cut}")
        one_line_error(r, str(path))
        assert not (tmp_path / f"c{cut}").exists()
