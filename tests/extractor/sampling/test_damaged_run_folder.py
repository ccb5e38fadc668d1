"""A run folder's JSON damaged outside trawl (issue 17): a truncated or wrong-typed run.json is a
one-line error on resume, never a silent reset of the earlier sessions' history; a wrong-typed
config.json or journal row is one line naming the file and the key; random damage to any of them is
a one-line TrawlError or reads as it was written."""
from __future__ import annotations

import json
import random

import pytest

from extractor.errors import TrawlError
from extractor.sampling.run_folder import RunDir
from test_damaged_parts import rows
from json_mutations import put, walk

STATUS = {"format": "trawl-run", "format_version": 1, "run_id": "run", "status": "finished", "prompt_tokens": 30,
          "completion_tokens": 900, "cost_usd": 0.25,
          "sessions": [{"started_at": "2026-01-01T00:00:00Z", "resumed": False, "skipped_done": 0},
                       {"started_at": "2026-01-02T00:00:00Z", "resumed": True, "skipped_done": 4}]}
CONFIG = {"format": "trawl-run", "format_version": 1, "run_id": "run", "seed_scheme": 2, "model": "m",
          "attacks": [{"name": "divergence", "params": {}}], "seed": 0}


def make(path) -> RunDir:
    rd = RunDir(str(path))
    rd.freeze_config(CONFIG)
    rd.write_status(STATUS)
    return rd


def test_truncated_run_json_is_an_error_not_a_fresh_history(tmp_path):
    rd = make(tmp_path / "run")
    text = open(rd.status_path).read()
    open(rd.status_path, "w").write(text[: len(text) // 2])
    with pytest.raises(TrawlError, match="run.json: damaged run status .*history"):
        rd.load_status()


@pytest.mark.parametrize("key,value", [("prompt_tokens", "30"), ("cost_usd", [1]), ("sessions", {"a": 1}),
                                       ("sessions", [1, 2]), ("completion_tokens", -5), ("cost_usd", None)])
def test_wrong_types_in_run_json_name_the_key(tmp_path, key, value):
    rd = make(tmp_path / "run")
    rd.write_status(dict(STATUS, **{key: value}))
    with pytest.raises(TrawlError, match=f"run.json: damaged run status \\({key!r}"):
        rd.load_status()
    assert RunDir(str(tmp_path / "new")).load_status() == {}   # no run.json yet: a new run


@pytest.mark.parametrize("key,value", [("run_id", 5), ("run_id", None), ("seed_scheme", "2"), ("seed_scheme", 0)])
def test_wrong_types_in_config_json_name_the_key(tmp_path, key, value):
    rd = make(tmp_path / "run")
    rd.freeze_config(dict(CONFIG, **{key: value}))
    with pytest.raises(TrawlError, match=f"config.json: '{key}' is"):
        rd.load_config()
    open(rd.config_path, "w").write("[" * 100000 + "]" * 100000)
    with pytest.raises(TrawlError, match="config.json: cannot read"):
        rd.load_config()


@pytest.mark.parametrize("key,value", [("completion_tokens", "many"), ("token_offsets", "0,1,2"),
                                       ("created_at", "yesterday"), ("seed", 2 ** 70), ("completion", {"a": 1})])
def test_wrong_type_in_a_journal_row_is_one_line_naming_line_and_key(tmp_path, key, value):
    rd = make(tmp_path / "run")
    good = rows(3)
    bad = dict(good[1], **{key: value})
    with open(rd.legacy_journal_paths[0], "w") as fh:
        for r in (good[0], bad, good[2]):
            fh.write(json.dumps(r) + "\n")
    with pytest.raises(TrawlError, match=f"_journal.jsonl:2: damaged journal row \\({key!r}"):
        RunDir(rd.path).recover()
    assert not RunDir(rd.path).part_paths()   # nothing half-recovered


def test_journal_rows_with_unhashable_or_missing_request_ids_are_not_done(tmp_path):
    rd = make(tmp_path / "run")
    good = rows(2)
    with open(rd.legacy_journal_paths[0], "w") as fh:
        for r in (dict(good[0], request_id=["x"]), dict(good[1], request_id=None), good[1], "just a string"):
            fh.write(json.dumps(r) + "\n")
    assert RunDir(rd.path).recover() == {good[1]["request_id"]}


def mutate(value, rng):
    """A random wrong or damaged replacement for a JSON value."""
    return rng.choice([None, "x", -1, 1.5, [], {}, True, 2 ** 64, [value], {"v": value}, str(value)])


def test_fuzz_run_json_config_json_and_journal(tmp_path):
    """Random damage (wrong types, truncation, byte flips) to config.json, run.json and journal rows:
    the readers a resume uses raise a one-line TrawlError naming the file, or read what is there."""
    rng = random.Random(1717)
    journal_rows = rows(4)
    for trial in range(150):
        rd = make(tmp_path / f"r{trial}")
        target = rng.choice(["config", "status", "journal"])
        original = {"config": CONFIG, "status": STATUS, "journal": journal_rows[1]}[target]
        how = rng.choice(["type", "truncate", "flip"])
        if how == "type":
            path = rng.choice(list(walk(original)))
            text = json.dumps(put(original, path, mutate(original, rng)))
        else:
            text = json.dumps(original)
            if how == "truncate":
                text = text[: rng.randrange(len(text))]
            else:
                b = bytearray(text.encode())
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                text = b.decode("utf-8", "replace")
        middle = text if target == "journal" else json.dumps(journal_rows[1])
        with open(rd.legacy_journal_paths[0], "w") as fh:
            fh.write(json.dumps(journal_rows[0]) + "\n" + middle + "\n" + json.dumps(journal_rows[2]) + "\n")
        if target != "journal":
            open(rd.config_path if target == "config" else rd.status_path, "w").write(text)
        fresh = RunDir(rd.path)
        try:
            config, status = fresh.load_config(), fresh.load_status()
            done = fresh.recover()
        except TrawlError as exc:
            msg = str(exc)
            assert "\n" not in msg and ("config.json" in msg or "run.json" in msg or "_journal.jsonl" in msg), msg
            continue
        assert isinstance(config["run_id"], str) and isinstance(status.get("sessions", []), list)
        stored = fresh.read_generations().to_pylist()
        assert sorted(r["request_id"] for r in stored) == sorted(done)
        for r in stored:   # every stored row is one of the journal's rows, as written
            want = next((w for w in journal_rows if w["request_id"] == r["request_id"]), None)
            if want is not None and r["request_id"] != journal_rows[1]["request_id"]:
                assert r["completion"] == want["completion"] and r["token_offsets"] == want["token_offsets"]
        assert {journal_rows[0]["request_id"], journal_rows[2]["request_id"]} <= done
