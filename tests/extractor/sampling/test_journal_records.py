"""The journal's records (issue 16: a request's rows journaled as the Arrow table the worker made, one
checksummed record per request, instead of a JSON line per row): what a kill leaves is recovered to the
same part whichever format holds the rows, damage anywhere is a one-line error or a correct result
(the damaged record and those after it dropped, named, and sampled again), a torn last write is dropped
quietly, and a failed write leaves no torn record in the middle of the journal."""
from __future__ import annotations

import errno
import os
import random

import pyarrow as pa
import pytest

from corpora.storage import WriteError
from extractor.errors import TrawlError
from extractor.sampling import journal as jr
from extractor.sampling.journal import journal_line, journal_record, read_records
from extractor.sampling.run_folder import RunDir, rows_to_table


def rows(n=12, seed=5):
    """Rows of every column's kind: non-ASCII text, NaN-free log-probs, nulls, a precise time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(["alpha", "béta", "γάμμα", "delta 🙂", "x", "\n", "trawl-journal arrow 9 9\n"])
                 for _ in range(rng.randint(1, 30))]
        text = "".join(words)
        offs, pos = [], 0
        for w in words:
            offs.append(pos)
            pos += len(w.encode())
        out.append({"run_id": "run", "request_id": f"req-{i:04d}", "attack": "divergence", "variant": "v",
                    "prompt": "Repeat this word forever: " + "poem " * rng.randint(1, 9), "completion": text,
                    "token_offsets": offs, "token_logprobs": [rng.uniform(-9, 0) for _ in offs] if i % 3 else None,
                    "prompt_tokens": 3, "completion_tokens": len(offs), "finish_reason": "length", "model": "m",
                    "endpoint": "http://127.0.0.1:1", "params": '{"max_tokens": 30}', "seed": rng.randrange(2 ** 31),
                    "latency_s": rng.random(), "cost_usd": 0.0, "created_at": f"2026-11-30T01:0{i % 10}:00.123456Z",
                    "extra": '{"diverged": true}' if i % 2 else None})
    return out


REQUESTS = [(0, 3), (3, 4), (4, 9), (9, 12)]   # the rows of four requests


def killed_run(path, written, *, tables=True):
    """A run folder as kill -9 leaves it: the requests' records in the journal, no part."""
    rd = RunDir(str(path))
    rd.recover()
    for a, b in REQUESTS:
        chunk = written[a:b]
        rd.append_many(chunk, tables=[rows_to_table(chunk)] if tables else None)
    rd._close_journal()
    return rd


def stored(path) -> dict:
    return {r["request_id"]: r for r in RunDir(str(path)).read_generations().to_pylist()}


def test_records_read_back_as_the_tables_and_rows_they_hold():
    written = rows()
    table = rows_to_table(written)
    data = b"".join(bytes(b) for b in journal_record(written, table) + jr.json_record(written[:2]))
    records, notes = read_records("J", data)
    assert notes == [] and [(n, k) for n, k, _ in records] == [(1, b"arrow"), (2, b"json")]
    assert jr.record_table("J", 1, records[0][2]).equals(table)
    assert [r for _, r in jr.record_rows("J", 2, records[1][2])] == written[:2]


def test_recovery_makes_the_same_part_bytes_from_records_tables_or_json_lines_or_an_old_journal(tmp_path):
    written = rows()
    arrow = killed_run(tmp_path / "arrow", written)
    as_json = killed_run(tmp_path / "json", written, tables=False)
    records, _ = read_records("J", open(arrow.journal_path, "rb").read())
    assert [kind for _, kind, _ in records] == [b"arrow"] * 4
    old = RunDir(str(tmp_path / "old"))
    os.makedirs(old.gen_dir)
    with open(old.legacy_journal_paths[0], "wb") as fh:   # the JSON-line journal of earlier versions
        fh.write(b"".join(journal_line(r) for r in written))
    parts = []
    for rd in (arrow, as_json, old):
        fresh = RunDir(rd.path)
        assert fresh.recover() == {r["request_id"] for r in written} and fresh.dropped == []
        assert not os.path.exists(fresh.legacy_journal_paths[0]) and os.path.getsize(fresh.journal_path) == 0
        (part,) = fresh.part_paths()
        parts.append(open(part, "rb").read())
    assert parts[0] == parts[1] == parts[2]
    assert RunDir(arrow.path).read_generations().equals(rows_to_table(written))


def test_rows_already_in_a_part_or_journaled_twice_are_stored_once(tmp_path):
    written = rows()
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rd._write_part(written[:5])          # a part written, then killed before the journal was emptied
    rd._close_journal()
    with open(rd.journal_path, "ab") as fh:
        for b in journal_record(written, rows_to_table(written)) + journal_record(written[2:7], None):
            fh.write(bytes(b))
    fresh = RunDir(rd.path)
    assert fresh.recover() == {r["request_id"] for r in written}
    assert sorted(stored(rd.path)) == sorted(r["request_id"] for r in written)
    assert fresh.read_generations().num_rows == len(written)


def test_fuzz_damaged_journal_records_never_store_different_rows(tmp_path):
    """Byte flips, zeroed runs, deleted, duplicated and inserted bytes anywhere in the journal (headers
    and payloads), and cuts: recovery raises one line naming the journal, or stores exactly rows as
    written, keeps every request before the damaged record, and names the damage (a cut at the end
    is a torn write: dropped quietly)."""
    written = rows()
    base = killed_run(tmp_path / "base", written)
    clean = open(base.journal_path, "rb").read()
    starts, pos = [], 0
    while pos < len(clean):           # where each record begins: its header line, then its size in bytes
        starts.append(pos)
        nl = clean.index(b"\n", pos)
        pos = nl + 1 + int(clean[pos:nl].split()[2])
    assert len(starts) == 4 and clean.count(b"trawl-journal arrow ") > 4   # look-alikes inside the payloads
    as_stored = {r["request_id"]: r for r in rows_to_table(written).to_pylist()}
    rng = random.Random(16)
    named = quiet = errors = 0
    for trial in range(240):
        b = bytearray(clean)
        how = trial % 6
        at = rng.randrange(len(b)) if trial % 3 else rng.choice(starts) + rng.randrange(40)   # headers often
        if how == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            b[at:at + 8] = bytes(len(b[at:at + 8]))
        elif how == 2:
            del b[at:at + rng.randint(1, 3)]
        elif how == 3:
            b[at:at] = b[at:at + 2]
        elif how == 4:
            b[at:at] = bytes([rng.randrange(256)])
        else:
            del b[at:]
        if bytes(b) == clean:
            continue
        run = tmp_path / f"t{trial}"
        os.makedirs(run / "generations")
        open(run / "generations" / "_journal.bin", "wb").write(bytes(b))
        fresh = RunDir(str(run))
        try:
            done = fresh.recover()
        except TrawlError as exc:
            assert "\n" not in str(exc) and "_journal.bin" in str(exc)
            errors += 1
            continue
        got = stored(run)
        assert set(got) == done
        for rid, row in got.items():
            assert row == as_stored[rid]
        damaged_record = max(i for i, s in enumerate(starts) if s <= at)
        before = {w["request_id"] for w in written[:REQUESTS[damaged_record][0]]}
        assert before <= done
        assert len(done) < len(written)
        if fresh.dropped:
            assert len(fresh.dropped) == 1 and "_journal.bin: record" in fresh.dropped[0] and "\n" not in fresh.dropped[0]
            named += 1
        else:   # a torn last write, or a size made larger: the record looks torn
            quiet += 1
    assert named > 120 and quiet >= 40 and errors < 10


def test_a_failed_write_leaves_no_torn_record_and_the_run_goes_on(tmp_path, monkeypatch):
    """A full disk in the middle of a request's record: WriteError naming the journal, the journal cut
    back to its last whole record; the next write and a resume see every row journaled before and after."""
    written = rows()
    rd = RunDir(str(tmp_path / "run"))
    rd.recover()
    rd.append_many(written[:3], tables=[rows_to_table(written[:3])])
    real = os.writev

    def half(fd, buffers):
        data = b"".join(bytes(b) for b in buffers)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", half)
    with pytest.raises(WriteError, match="_journal.bin.*No space left"):
        rd.append_many(written[3:6], tables=[rows_to_table(written[3:6])])
    monkeypatch.setattr(os, "writev", real)
    assert rd.buffered() == 3
    rd.append_many(written[6:9], tables=[rows_to_table(written[6:9])])
    rd._close_journal()
    records, notes = read_records("J", open(rd.journal_path, "rb").read())
    assert len(records) == 2 and notes == []
    fresh = RunDir(rd.path)
    want = {r["request_id"] for r in written[:3] + written[6:9]}
    assert fresh.recover() == want and fresh.dropped == []


def test_read_journal_is_what_a_killed_run_holds(tmp_path):
    written = rows()
    rd = killed_run(tmp_path / "run", written)
    with open(rd.journal_path, "ab") as fh:
        fh.write(b"".join(bytes(b) for b in journal_record(written[:1], None))[:-3])   # torn
    assert RunDir(rd.path).read_journal().equals(rows_to_table(written))
    assert os.path.getsize(rd.journal_path) > 0                                        # nothing changed


def test_a_record_with_a_matching_checksum_and_the_wrong_content_is_one_line(tmp_path):
    """Written by another program (the checksum redone): one line naming the journal and the record."""
    run = tmp_path / "run"
    os.makedirs(run / "generations")
    other = pa.table({"request_id": ["x"]})
    junk = [jr.arrow_record(other), jr._frame(b"arrow", b"not arrow"), jr._frame(b"json", b'{"a": 1}\n')]
    for i, rec in enumerate(junk):
        open(run / "generations" / "_journal.bin", "wb").write(b"".join(bytes(b) for b in rec))
        with pytest.raises(TrawlError, match=r"_journal.bin: record 1.*damaged journal") as exc:
            RunDir(str(run)).recover()
        assert "\n" not in str(exc.value)


def test_resume_samples_damaged_records_again_and_ends_as_an_undamaged_run(tmp_path):
    """A killed run's journal with its second record damaged: the resume names it, samples that
    record's and the later records' generations again, and ends with the rows of an undamaged run."""
    import shutil

    from draw_server import DrawServer
    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    spec = [AttackSpec("divergence", {"words": ["poem", "data"], "samples": 3, "max_tokens": 5, "repetitions": 3})]
    quiet = dict(api_key_env=None, progress=False, timeout=5.0, max_retries=2)
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    log: list[str] = []
    with DrawServer() as srv:
        run_attacks(str(clean), endpoint=srv.base_url, model=srv.model, attacks=spec, log=lambda m: None, **quiet)
        shutil.copytree(clean, damaged)
        rd = RunDir(str(damaged))
        table = rd.read_generations()
        for p in rd.part_paths():   # the rows back in the journal, as a killed run leaves them
            os.unlink(p)
        chunks = [table.slice(i, 2) for i in range(0, table.num_rows, 2)]
        data = bytearray(b"".join(bytes(b) for c in chunks for b in jr.arrow_record(c)))
        second = data.index(b"trawl-journal ", 1)
        data[second + 200] ^= 0x10                      # a byte of the second record's payload
        open(rd.journal_path, "wb").write(bytes(data))
        run_attacks(str(damaged), endpoint=srv.base_url, model=srv.model, attacks=spec, resume=True,
                    log=log.append, **quiet)

    def key(run):
        return sorted((r["request_id"], r["completion"], r["seed"], tuple(r["token_offsets"]))
                      for r in RunDir(str(run)).read_generations().to_pylist())

    assert key(damaged) == key(clean) and len(key(clean)) == 6
    assert any("_journal.bin: record 2 (byte" in m and "sampled again" in m for m in log), log
