"""The prefix and discoverable attacks take prompts and targets from a corpus folder: a shard whose
bytes no longer match its sha256 in corpus.json is one line naming it, never prompts or targets
silently different from the corpus (issue 17, a neighbour of the damaged index)."""
from __future__ import annotations

import pytest

from corpora import ingest_records
from corpora.readers import Record
from extractor.attacks.corpus_source import DocSource
from extractor.errors import TrawlError

TEXTS = ["the quick brown fox jumps over the lazy dog " * 5, "a memorized paragraph of training text " * 5]


def test_a_changed_byte_in_a_corpus_shard_is_one_line(tmp_path):
    ingest_records([Record(source=f"s{i}", text=t) for i, t in enumerate(TEXTS)], tmp_path / "c")
    assert [DocSource(str(tmp_path / "c")).get(i).text for i in range(2)] == TEXTS
    shard = tmp_path / "c" / "shard-00000.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data.replace(b"lazy", b"lacy", 1))   # same size: the Arrow file still opens
    with pytest.raises(TrawlError, match=r"shard-00000.arrow: checksum mismatch") as e:
        DocSource(str(tmp_path / "c"))
    assert "\n" not in str(e.value)
