"""Ingest with workers reading the inputs and writing the shards (corpora.ingest_workers), run here
on an in-process executor: the corpus equals the one-process ingest byte for byte (ids, duplicates,
shard boundaries, record batches, checksums) over random inputs, errors are the same line, and
nothing but the finished shards is ever published."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from corpora import CorpusError, ingest
import importlib

ingest_mod = importlib.import_module("corpora.ingest_workers")
from corpora import shards as shards_mod
from corpora.executor import LocalExecutor


class Workers(LocalExecutor):
    """The local executor under another kind: ingest() then takes the workers' path."""

    kind = "workers-test"


def _folder_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "corpus.json"}


def _manifest(out: Path) -> dict:
    m = json.loads((out / "corpus.json").read_text())
    m.pop("created_at")
    return m


def _inputs(t: Path, seed: int) -> list[Path]:
    rng = random.Random(seed)
    pool = ["".join(rng.choice("abc de\u00e9\u4e2d") for _ in range(rng.randint(1, 700))) for _ in range(40)]
    pick = lambda: rng.choice(pool) if rng.random() < 0.3 else "".join(rng.choice("xyz ") for _ in range(rng.randint(1, 900)))
    srcs = []
    for f in range(3):   # JSONL files: empty and null texts, ids, metadata, duplicates
        p = t / f"part{f}.jsonl"
        with open(p, "w", encoding="utf-8") as fh:
            for i in range(rng.randint(0, 30)):
                text = rng.choice(["", None, pick(), pick()])
                fh.write(json.dumps({"text": text, "id": f"{f}-{i}", "lang": rng.choice(["en", "fr"])}) + "\n")
        srcs.append(p)
    d = t / "folder"
    d.mkdir()
    for i in range(rng.randint(5, 25)):   # several units of files, duplicates across them
        (d / f"doc{i:03d}.txt").write_text(pick(), encoding="utf-8")
    (d / "bad-utf8.txt").write_bytes(b"ok \xff\xfe broken")     # repaired to U+FFFD
    (d / "empty.txt").write_text("")
    srcs.insert(1, d)
    return srcs


@pytest.mark.parametrize("seed", range(6))
def test_workers_write_the_corpus_local_ingest_writes(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(ingest_mod, "FILES_PER_UNIT", 4)
    monkeypatch.setattr(shards_mod, "BATCH_TEXT_BYTES", 1500)   # shards of several record batches
    srcs = _inputs(tmp_path, seed)
    rng = random.Random(seed)
    for size in (1, rng.randint(500, 5000), 1 << 30):
        for keep in (False, True):
            ingest(srcs, tmp_path / "local", max_shard_bytes=size, keep_duplicates=keep, overwrite=True)
            c = ingest(srcs, tmp_path / "workers", max_shard_bytes=size, keep_duplicates=keep, overwrite=True,
                       executor=Workers())
            assert _manifest(tmp_path / "workers") == _manifest(tmp_path / "local")
            assert _folder_files(tmp_path / "workers") == _folder_files(tmp_path / "local")
            assert c.stats["repaired_utf8"] == 1 and c.documents == sum(1 for _ in c.iter_documents())
            assert [p.name for p in sorted(tmp_path.iterdir()) if ".tmp-" in p.name] == []
    assert _manifest(tmp_path / "local")["stats"]["exact_duplicates"] == 0   # the last run kept them


def test_duplicates_and_shard_boundaries_by_hand(tmp_path):
    # five texts, 3 bytes each, the second and fifth equal to the first: kept 0, 2, 3 -> ids 0, 1, 2;
    # shards of at most 6 bytes -> [0, 1] [2]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["aaa", "aaa", "bbb"]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["ccc", "", "aaa"]))
    c = ingest([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "c", max_shard_bytes=6, executor=Workers())
    m = c.manifest
    assert [(s["documents"], s["text_bytes"]) for s in m["shards"]] == [(2, 6), (1, 3)]
    assert [(d.doc_id, d.text) for d in c.iter_documents()] == [(0, "aaa"), (1, "bbb"), (2, "ccc")]
    assert m["stats"] == {"read": 6, "skipped_empty": 1, "repaired_utf8": 0, "exact_duplicates": 2}


def test_a_reader_error_is_the_local_one_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "FILES_PER_UNIT", 2)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    d = tmp_path / "d"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}.txt").write_text(f"file {i}")
    (d / "f3.txt").write_bytes(b"\x00binary")   # the folder's second unit
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": \n')   # a later unit: its error must not win
    srcs = [good, d, broken]
    with pytest.raises(CorpusError) as local:
        ingest(srcs, tmp_path / "out-local")
    with pytest.raises(CorpusError) as workers:
        ingest(srcs, tmp_path / "out", executor=Workers())
    assert str(workers.value) == str(local.value) and "f3.txt" in str(workers.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl", "d", "good.jsonl"]
    # random corruption of a JSONL input: the local error line, or the local corpus, never other bytes
    rng = random.Random(5)
    base = good.read_bytes() + broken.read_bytes()[:17]
    for trial in range(25):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        (tmp_path / "x.jsonl").write_bytes(bytes(data))
        outcome = []
        for tag, ex in (("l", None), ("w", Workers())):
            try:
                ingest([tmp_path / "x.jsonl"], tmp_path / f"x-{tag}", executor=ex, overwrite=True)
                outcome.append((_manifest(tmp_path / f"x-{tag}"), _folder_files(tmp_path / f"x-{tag}")))
            except CorpusError as exc:
                outcome.append(str(exc))
        assert outcome[0] == outcome[1], trial


def test_stages_of_killed_attempts_are_never_published(tmp_path):
    """A killed attempt leaves a half-written segment or stage in the temporary folder (Ray then
    retries the task under a new name); only the stages the finished tasks return are published."""
    from corpora import ingest_workers

    class Killed(Workers):
        def map(self, fn, argses, **kw):
            for args in argses:   # what a killed first attempt of every task leaves behind
                tmp = Path(args[0])
                prefix = ingest_workers.SEGMENT_PREFIX if fn is ingest_workers.read_unit_to_segment else \
                    ingest_workers.STAGE_PREFIX
                (tmp / f"{prefix}{args[1]:05d}-deadbeef.arrow").write_bytes(b"ARROW1\x00\x00half")
            return super().map(fn, argses, **kw)

    d = tmp_path / "d"
    d.mkdir()
    for i in range(30):
        (d / f"f{i:02d}.txt").write_text(f"text number {i} " * (i + 1))
    ingest([d], tmp_path / "local", max_shard_bytes=700)
    ingest([d], tmp_path / "c", max_shard_bytes=700, executor=Killed())
    assert _folder_files(tmp_path / "c") == _folder_files(tmp_path / "local")
    assert all(p.name.startswith("shard-") for p in (tmp_path / "c").iterdir() if p.name != "corpus.json")

