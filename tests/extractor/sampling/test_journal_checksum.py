"""Journal rows carry a CRC-32 (issue 17): a row damaged on disk is detected on resume, dropped,
named in the log and sampled again, so a resumed run never stores silently different rows; a torn
last line is dropped quietly as before, and journals from before the checksum still read. These are the
JSON-line journals (``_journal.jsonl``) of earlier versions, which a resume still reads; the records that
replaced them are tested in test_journal_records.py."""
from __future__ import annotations

import json
import re
import os
import random
import shutil

from draw_server import DrawServer
from extractor.attacks import AttackSpec
from extractor.sampling import run_attacks
from extractor.sampling.journal import CRC_KEY, journal_line
from extractor.sampling.run_folder import RunDir
from extractor.errors import TrawlError
from test_damaged_parts import rows


def _journal(path, written):
    """A run folder as a kill -9 of an earlier trawl left it: rows in its JSON-line journal, no part."""
    rd = RunDir(str(path))
    rd.recover()
    rd._close_journal()
    with open(rd.legacy_journal_paths[0], "wb") as fh:
        fh.write(b"".join(journal_line(r) for r in written))
    return rd


def _stored(rd) -> dict:
    return {r["request_id"]: r for r in RunDir(rd.path).read_generations().to_pylist()}


def test_journal_line_is_the_row_plus_its_checksum():
    r = rows(1)[0]
    line = journal_line(r)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    back = json.loads(line)
    assert list(back)[-1] == CRC_KEY and {k: v for k, v in back.items() if k != CRC_KEY} == r


def test_a_changed_character_in_a_journal_row_is_dropped_not_stored(tmp_path):
    written = rows(4)
    rd = _journal(tmp_path / "run", written)
    text = open(rd.legacy_journal_paths[0], encoding="utf-8").read().split("\n")
    assert "alpha" in text[1] or "beta" in text[1]
    text[1] = text[1].replace("alpha", "alphb", 1) if "alpha" in text[1] else text[1].replace("beta", "betb", 1)
    open(rd.legacy_journal_paths[0], "w", encoding="utf-8").write("\n".join(text))
    fresh = RunDir(rd.path)
    done = fresh.recover()
    assert done == {written[i]["request_id"] for i in (0, 2, 3)}
    assert len(fresh.dropped) == 1 and "_journal.jsonl:2: damaged journal row" in fresh.dropped[0]
    stored = _stored(fresh)
    assert all(stored[w["request_id"]]["completion"] == w["completion"] for w in written if w["request_id"] in done)


def test_a_torn_last_line_is_dropped_quietly_and_old_journals_still_read(tmp_path):
    written = rows(3)
    rd = _journal(tmp_path / "run", written)
    data = open(rd.legacy_journal_paths[0], "rb").read()
    open(rd.legacy_journal_paths[0], "wb").write(data[:-25])   # killed in the middle of the last write
    fresh = RunDir(rd.path)
    assert fresh.recover() == {written[0]["request_id"], written[1]["request_id"]} and fresh.dropped == []
    old = RunDir(str(tmp_path / "old"))
    os.makedirs(old.gen_dir)
    with open(old.legacy_journal_paths[0], "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in written)
    assert old.recover() == {r["request_id"] for r in written} and old.dropped == []


def test_fuzz_damaged_journal_rows_never_store_different_rows(tmp_path):
    """Byte flips, zeroed runs, deleted and duplicated bytes in one line of a checksummed journal:
    recovery raises one line naming the journal, or stores exactly the rows as written (each one
    whole and unchanged) and drops the damaged one."""
    written = rows(5)
    rng = random.Random(17)
    dropped = 0
    for trial in range(200):
        rd = _journal(tmp_path / f"r{trial}", written)
        lines = open(rd.legacy_journal_paths[0], "rb").read().split(b"\n")
        i = rng.randrange(4)   # a whole line (not the torn-last-line case)
        b = bytearray(lines[i])
        how = trial % 4
        at = rng.randrange(len(b))
        if how == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            b[at:at + 8] = bytes(len(b[at:at + 8]))
        elif how == 2:
            del b[at:at + rng.randint(1, 3)]
        else:
            b[at:at] = b[at:at + 2]
        lines[i] = bytes(b)
        open(rd.legacy_journal_paths[0], "wb").write(b"\n".join(lines))
        fresh = RunDir(rd.path)
        try:
            done = fresh.recover()
        except TrawlError as exc:
            assert "\n" not in str(exc) and "_journal.jsonl" in str(exc)
            continue
        stored = _stored(fresh)
        assert set(stored) == done
        for w in written:
            if w["request_id"] in stored:
                got = stored[w["request_id"]]
                assert {k: got[k] for k in w if k != "created_at"} == {k: v for k, v in w.items() if k != "created_at"}
        assert {w["request_id"] for j, w in enumerate(written) if j != i} <= done
        dropped += written[i]["request_id"] not in done
    assert dropped > 150


def test_resume_samples_a_damaged_row_again_and_ends_as_an_undamaged_run(tmp_path):
    spec = [AttackSpec("divergence", {"words": ["poem", "data"], "samples": 3, "max_tokens": 5, "repetitions": 3})]
    quiet = dict(api_key_env=None, progress=False, timeout=5.0, max_retries=2)
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    log: list[str] = []
    with DrawServer() as srv:
        run_attacks(str(clean), endpoint=srv.base_url, model=srv.model, attacks=spec, log=lambda m: None, **quiet)
        shutil.copytree(clean, damaged)
        rd = RunDir(str(damaged))
        table = rd.read_generations().to_pylist()
        for p in rd.part_paths():   # the rows back in the journal, as a killed run leaves them
            os.unlink(p)
        with open(rd.legacy_journal_paths[0], "wb") as fh:
            for r in table:
                fh.write(journal_line(dict(r, created_at=r["created_at"].isoformat())))
        lines = open(rd.legacy_journal_paths[0], encoding="utf-8").read().split("\n")
        victim = json.loads(lines[2])["request_id"]
        damaged_line = re.sub(r'"completion": ?"', lambda m: m.group(0) + "X", lines[2], count=1)
        assert damaged_line != lines[2]
        lines[2] = damaged_line
        open(rd.legacy_journal_paths[0], "w", encoding="utf-8").write("\n".join(lines))
        run_attacks(str(damaged), endpoint=srv.base_url, model=srv.model, attacks=spec, resume=True,
                    log=log.append, **quiet)

    def key(run):
        return sorted((r["request_id"], r["completion"], r["seed"], tuple(r["token_offsets"]))
                      for r in RunDir(str(run)).read_generations().to_pylist())

    assert key(damaged) == key(clean) and len(key(clean)) == 6
    assert any("_journal.jsonl:3: damaged journal row" in m for m in log), log
    assert victim in {r[0] for r in key(damaged)}
