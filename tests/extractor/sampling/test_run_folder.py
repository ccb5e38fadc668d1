"""The run folder's crash safety, without a server."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from corpora.storage import GENERATIONS_SCHEMA, utcnow
from extractor.sampling.journal import journal_record
from extractor.sampling.run_folder import RunDir, rows_to_table


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
    # simulate kill -9: journal has rows 3, 4 and a torn record; a stray temp part exists
    record = b"".join(bytes(b) for b in journal_record([_row(9999)], rows_to_table([_row(9999)])))
    with open(rd.journal_path, "ab") as fh:
        fh.write(record[:-30])
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
    rd._write_part(rows)  # the part is written, then the process dies before truncating
    assert rd.read_journal().num_rows == 4
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


def test_journal_lines_read_back_as_the_rows_they_encode():
    """orjson writes a plain row's line, the standard library one with NaN, infinities, huge ints
    or lone surrogates; json.loads gives back the very row either way."""
    import math
    import random

    from extractor.sampling.journal import journal_line

    rng = random.Random(7)
    specials = [float("nan"), float("inf"), float("-inf"), 10 ** 30, "\ud800x", "é🙂\n\u2028", -0.0, 1e-300]
    for _ in range(500):
        row = _row(rng.randrange(6))
        row["token_logprobs"] = [rng.uniform(-20, 0) for _ in range(rng.randrange(5))] or None
        for _ in range(rng.randrange(3)):
            key = rng.choice(["token_logprobs", "latency_s", "cost_usd", "seed", "completion", "extra"])
            v = rng.choice(specials)
            row[key] = [v, -1.0] if key == "token_logprobs" else v
        try:
            line = journal_line(row)
        except UnicodeEncodeError:   # a lone surrogate: neither writer takes it (the sampler cleans text first)
            continue
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        back = json.loads(line)
        assert list(back)[-1] == "_crc32"
        back.pop("_crc32")
        assert json.dumps(back, sort_keys=True) == json.dumps(row, sort_keys=True)   # NaN == NaN as text
        for k, v in row.items():
            if isinstance(v, float) and math.isnan(v):
                assert math.isnan(back[k])


def test_requests_journaled_in_one_write_recover_their_whole_records_after_a_torn_write(tmp_path):
    """kill -9 during the one write of three requests' records: the whole ones are done, the torn one is
    not, wherever the write was cut (in the last record's header or in its payload)."""
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rd.append_many([_row(i) for i in range(3)])
    rd._journal.close()
    base = open(rd.journal_path, "rb").read()
    data = b"".join(bytes(b) for i in range(3, 6) for b in journal_record([_row(i)], rows_to_table([_row(i)])))
    last = data.rindex(b"trawl-journal ")
    for cut in (last + 1, last + 20, len(data) - 7):
        run = tmp_path / f"cut{cut}"
        os.makedirs(run / "generations")
        with open(run / "generations" / os.path.basename(rd.journal_path), "wb") as fh:
            fh.write(base + data[:cut])      # rows 3 and 4 whole, row 5 torn
        fresh = RunDir(str(run))
        assert fresh.recover() == {f"id{i:04d}" for i in range(5)} and fresh.dropped == []


def test_parts_roll_by_rows_or_by_buffered_tokens(tmp_path, monkeypatch):
    import extractor.sampling.run_folder as rf

    monkeypatch.setattr(rf, "PART_TOKENS", 10)
    rd = RunDir(str(tmp_path / "run"), flush_rows=100)
    rd.recover()
    rd.append_many([_row(4), _row(5)])
    assert not rd.should_flush()
    rd.append(_row(1))
    assert rd.should_flush()            # 10 token offsets buffered
    rd.flush()
    assert not rd.should_flush() and rd.buffered() == 0
    rd2 = RunDir(str(tmp_path / "run2"), flush_rows=2)
    rd2.recover()
    rd2.append_many([_row(0), _row(0)])
    assert rd2.should_flush()


def _read(rd):
    t = rd.read_generations()
    return sorted(t.to_pylist(), key=lambda r: r["request_id"])


def _plain(rows):
    from extractor.sampling.run_folder import rows_to_table

    return sorted(rows_to_table(rows).to_pylist(), key=lambda r: r["request_id"])


def test_a_part_built_in_row_groups_holds_every_row_once(tmp_path, monkeypatch):
    """Rows spilled into the open part as they come (tables from the workers, rows converted here,
    in any mix) make one part equal to the rows, published only at the flush; before it the
    temporary file is hidden from dataset readers and the journal holds every row."""
    import extractor.sampling.run_folder as rf

    monkeypatch.setattr(rf, "GROUP_TOKENS", 8)
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rows = [_row(i) for i in range(12)]
    rd.append_many(rows[0:3], tables=[rf.rows_to_table(rows[0:2]), rf.rows_to_table(rows[2:3])])
    rd.spill()                                   # 3 rows + 3 tokens: below 8, nothing written yet
    assert not [n for n in os.listdir(rd.gen_dir) if ".tmp-" in n]
    rd.append_many(rows[3:6])                    # rows without tables
    rd.spill()
    tmp = [n for n in os.listdir(rd.gen_dir) if ".tmp-" in n]
    assert tmp and all(n.startswith(".") for n in tmp)
    assert rd.part_paths() == [] and pq.read_table(rd.gen_dir).num_rows == 0
    rd.append_many(rows[6:8], tables=[rf.rows_to_table(rows[6:8])])
    rd.append(rows[8])
    rd.spill()
    rd.append_many(rows[9:12], tables=[rf.rows_to_table(rows[9:12])])
    assert sorted(rd.read_journal().column("request_id").to_pylist()) == [r["request_id"] for r in rows]
    name = rd.flush()
    assert rd.part_paths() == [name] and pq.ParquetFile(name).metadata.num_row_groups >= 3
    assert os.path.getsize(rd.journal_path) == 0
    assert not [n for n in os.listdir(rd.gen_dir) if ".tmp-" in n]
    assert _read(rd) == _plain(rows)
    rd.append(_row(20))
    rd.close()
    assert len(rd.part_paths()) == 2 and len(_read(rd)) == 13


def test_a_kill_while_a_part_is_open_loses_nothing(tmp_path, monkeypatch):
    """The process dies with row groups in the open part's temporary file: recovery deletes the file
    and makes the part from the journal, every row once."""
    import extractor.sampling.run_folder as rf

    monkeypatch.setattr(rf, "GROUP_TOKENS", 1)
    rows = [_row(i) for i in range(8)]
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rd.append_many(rows[:3])
    rd.flush()
    rd.append_many(rows[3:7])
    rd.spill()
    rd.append(rows[7])
    rd._journal.close()                          # as a kill -9 leaves it: the writer never closed
    assert [n for n in os.listdir(rd.gen_dir) if ".tmp-" in n]
    rd2 = RunDir(str(tmp_path / "run"))
    assert rd2.recover() == {f"id{i:04d}" for i in range(8)}
    assert not [n for n in os.listdir(rd.gen_dir) if ".tmp-" in n]
    assert _read(rd2) == _plain(rows)


def test_a_failed_row_group_write_is_one_error_and_the_next_flush_writes_the_whole_part(tmp_path, monkeypatch):
    """A full disk while a row group goes into the open part: a WriteError naming the part, its
    temporary file removed, the rows still buffered (and journaled); a later flush writes them all."""
    import errno

    import extractor.sampling.run_folder as rf
    from corpora.storage import WriteError

    monkeypatch.setattr(rf, "GROUP_TOKENS", 1)
    rows = [_row(i) for i in range(5)]
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rd.append_many(rows[:3])
    rd.spill()
    real = pq.ParquetWriter.write_table

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    rd.append_many(rows[3:])
    try:
        rd.spill()
        raise AssertionError("no error")
    except WriteError as exc:
        assert "part-00000.parquet" in str(exc) and "No space left" in str(exc) and "\n" not in str(exc)
    assert not [n for n in os.listdir(rd.gen_dir) if ".tmp-" in n]
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real)
    rd.flush()
    assert _read(rd) == _plain(rows)


def test_summary_rows_from_memory_equal_the_parts_read_back(tmp_path, monkeypatch):
    """What the run folder remembers of the parts it wrote or verified is what a fresh reader finds."""
    import random

    import extractor.sampling.run_folder as rf

    monkeypatch.setattr(rf, "GROUP_TOKENS", 5)
    rng = random.Random(3)
    rd = RunDir(str(tmp_path / "run"), flush_rows=7)
    rd.recover()
    for k in range(30):
        r = dict(_row(rng.randrange(6)), request_id=f"r{k}", attack=rng.choice(["divergence", "prefix"]),
                 extra=json.dumps({"diverged": rng.random() < 0.5, "é": k}, ensure_ascii=False))
        rd.append_many([r], tables=[rf.rows_to_table([r])] if k % 2 else None)
        if rd.should_flush():
            rd.flush()
        else:
            rd.spill()
    rd.append(dict(_row(2), request_id="tail"))
    rd._journal.close()                          # killed: the last rows are recovered from the journal
    rd2 = RunDir(str(tmp_path / "run"), flush_rows=7)
    rd2.recover()
    remembered = rd2.summary_rows()
    assert len(remembered) == 31
    rd2.close()
    assert RunDir(str(tmp_path / "run")).summary_rows() == remembered   # nothing remembered: read back
