"""The run folder's crash safety, without a server."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from corpora.storage import GENERATIONS_SCHEMA, utcnow
from extractor.sampling.run_folder import RunDir


def _row(i):
    return {"run_id": "r", "request_id": f"id{i:04d}", "attack": "divergence", "variant": "poem", "prompt": "p",
            "completion": "x" * i, "token_offsets": list(range(i)), "token_logprobs": None, "prompt_tokens": 1,
            "completion_tokens": i, "finish_reason": "length", "model": "m", "endpoint": "http://127.0.0.1:1",
            "params": "{}", "seed": i, "latency_s": 0.1, "cost_usd": 0.0, "created_at": utcnow(precise=True), "extra": "{}"}


def test_append_flush_recover(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    assert rd.recover() == set()
    for i in range(3):
        rd.append(_row(i))
    rd.flush()
    for i in range(3, 5):
        rd.append(_row(i))
    # simulate kill -9: journal has rows 3, 4 and a torn line; a stray temp part exists
    with open(rd.journal_path, "a") as fh:
        fh.write('{"request_id": "id9999", "trunc')
    open(os.path.join(rd.gen_dir, ".part-00001.parquet.tmp-123"), "wb").write(b"junk")
    rd2 = RunDir(str(tmp_path / "run"))
    done = rd2.recover()
    assert done == {f"id{i:04d}" for i in range(5)}
    assert not [p for p in os.listdir(rd.gen_dir) if ".tmp-" in p]
    assert os.path.getsize(rd.journal_path) == 0
    t = rd2.read_generations()
    assert t.num_rows == 5 and t.schema == GENERATIONS_SCHEMA
    for p in rd2.part_paths():
        assert pq.read_schema(p).remove_metadata() == GENERATIONS_SCHEMA


def test_crash_between_part_and_journal_truncation_duplicates_nothing(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rows = [_row(i) for i in range(4)]
    for r in rows:
        rd.append(r)
    rd._write_part(list(rd._buffer))  # the part is written, then the process dies before truncating
    with open(rd.journal_path) as fh:
        assert len(fh.readlines()) == 4
    rd2 = RunDir(str(tmp_path / "run"))
    done = rd2.recover()
    assert len(done) == 4
    assert rd2.read_generations().num_rows == 4


def test_status_written_atomically(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_status({"status": "running"})
    assert json.loads(open(rd.status_path).read()) == {"status": "running"}
    assert not [p for p in os.listdir(rd.path) if ".tmp-" in p]


def test_generations_folder_reads_as_a_parquet_dataset(tmp_path):
    """pyarrow.parquet.read_table("RUN/generations") must see the parts only, mid-run and after."""
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    for i in range(3):
        rd.append(_row(i))
    rd.flush()
    rd.append(_row(3))  # in the journal only
    open(os.path.join(rd.gen_dir, ".part-00009.parquet.tmp-1"), "wb").write(b"junk")
    assert pq.read_table(rd.gen_dir).num_rows == 3
    rd.close()
    os.unlink(os.path.join(rd.gen_dir, ".part-00009.parquet.tmp-1"))
    assert sorted(os.listdir(rd.gen_dir)) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(rd.gen_dir).num_rows == 4
