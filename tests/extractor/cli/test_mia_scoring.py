"""`trawl mia` through the scoring driver of `trawl rank` (issue 14), over the echo server with known
logprobs (tests/echo_server.py): batched requests; kill -9 mid-run, then a rerun (and --resume) scores
only what is missing and ends with the mia.json of an uninterrupted run; a budget stop and a failed
server say so in mia.json and the report; a damaged scoring journal is rescored (or one line), never
read as other numbers."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from extractor.cli import main
from extractor.cli.mia import text_key
from extractor.sampling.journal import journal_line, read_journal_line
from tests.echo_server import EchoServer
from tests.mia_texts import MEMBERS, NONMEMBERS, write_jsonl
from tests.repo import REPO, one_line_error, trawl

N = 6


@pytest.fixture()
def sets(tmp_path):
    return (write_jsonl(tmp_path / "m.jsonl", MEMBERS[:N]), write_jsonl(tmp_path / "n.jsonl", NONMEMBERS[:N]))


def args(sets, srv, out, *extra):
    m, n = sets
    return [str(a) for a in ("mia", "--members", m, "--nonmembers", n, "--endpoint", srv.base_url, "--model", "m",
                             "-o", out, "--bootstrap", "200", "--price-input-per-mtok", "2",
                             "--price-output-per-mtok", "10", *extra)]


def figures(out) -> dict:
    f = json.loads((out / "mia.json").read_text())
    f.pop("generated_at")
    return f


def echo_texts(srv) -> list[str]:
    """The texts of every echo (scoring) request the server saw, in order."""
    out = []
    for q in srv.requests:
        if q.get("echo"):
            out.extend(q["prompt"] if isinstance(q["prompt"], list) else [q["prompt"]])
    return out


def test_batched_requests_and_the_scores_file(tmp_path, sets):
    with EchoServer() as srv:
        r = trawl(*args(sets, srv, tmp_path / "o", "--batch", "4", "--concurrency", "2"))
        assert r.returncode == 0, r.stderr
        reqs = [q for q in srv.requests if q.get("echo")]
        texts = echo_texts(srv)
    # 12 texts in batches of 4, each batch once as is and once lowercased: 6 requests
    assert len(reqs) == 6 < 2 * N and all(isinstance(q["prompt"], list) and len(q["prompt"]) == 4 for q in reqs)
    originals = MEMBERS[:N] + NONMEMBERS[:N]
    assert sorted(t for t in texts if t in originals) == sorted(originals)
    f = figures(tmp_path / "o")
    assert f["schema_version"] == 2 and f["members"] == N and f["nonmembers"] == N
    sc = f["scoring"]
    assert sc["complete"] and sc["stopped"] is None and sc["scored"] == {"members": N, "nonmembers": N}
    assert sc["prompt_tokens"] > 0 and sc["cost_usd"] == pytest.approx((sc["prompt_tokens"] * 2 + len(texts) * 10) / 1e6)  # a generated token a text sent
    assert "Stopped early" not in (tmp_path / "o" / "report.md").read_text()
    assert not (tmp_path / "o" / "_scores_journal.jsonl").exists()


def _journaled(path) -> list[dict]:
    rows = []
    for line in open(path, "rb").readlines():
        rec = read_journal_line(line, True)
        if rec is not None:
            rows.append(rec["row"])
    return rows


def test_kill_9_then_rerun_and_resume_equal_an_uninterrupted_run(tmp_path, sets):
    with EchoServer() as srv:
        r = trawl(*args(sets, srv, tmp_path / "full", "--batch", "1", "--concurrency", "1"))
        assert r.returncode == 0, r.stderr
        want = figures(tmp_path / "full")
        for out, again in (("killed", ()), ("resumed", ("--resume",))):
            srv.delay = 0.15
            cmd = [sys.executable, "-m", "extractor.cli", *map(str, args(sets, srv, tmp_path / out, "--batch", "1",
                                                                         "--concurrency", "1"))]
            proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            journal = tmp_path / out / "_scores_journal.jsonl"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (journal.exists() and len(_journaled(journal)) >= 4):
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done = {row["request_id"] for row in _journaled(journal)}
            assert 4 <= len(done) < 2 * N and not (tmp_path / out / "mia.json").exists()
            srv.delay = 0.0
            before = len(srv.requests)
            r = trawl(*args(sets, srv, tmp_path / out, "--batch", "1", "--concurrency", "1", *again))
            assert r.returncode == 0, r.stderr
            sent = {text_key(w, t) for w, ts in (("members", MEMBERS[:N]), ("nonmembers", NONMEMBERS[:N]))
                    for t in ts if t in [x for q in srv.requests[before:] if q.get("echo") for x in
                                         (q["prompt"] if isinstance(q["prompt"], list) else [q["prompt"]])]}
            assert not (sent & done) and len(sent) + len(done) == 2 * N     # only what was missing
            assert figures(tmp_path / out) == want                         # every figure, usage and cost
    one_line_error(trawl("mia", "--members", sets[0], "--nonmembers", sets[1], "--embedded", "-o",
                         tmp_path / "empty", "--resume"), "nothing to resume")


def test_budget_stop_and_a_dead_server_are_said_then_a_rerun_completes(tmp_path, sets):
    out = tmp_path / "o"
    with EchoServer() as srv:
        assert trawl(*args(sets, srv, tmp_path / "full", "--batch", "1")).returncode == 0
        want = figures(tmp_path / "full")
        r = trawl(*args(sets, srv, out, "--batch", "1", "--concurrency", "1", "--max-dollars", "0.0015"))
        assert r.returncode == 0 and "stopped early (max_dollars)" in r.stderr, r.stderr
    f = figures(out)
    sc = f["scoring"]
    assert not sc["complete"] and sc["stopped"] == "max_dollars" and 0 < sc["cost_usd"] <= 0.0015
    scored = sc["scored"]["members"] + sc["scored"]["nonmembers"]
    assert 0 < scored < 2 * N and f["members"] == sc["scored"]["members"]
    for name in ("report.md", "report.html"):
        assert "Stopped early (max" in (out / name).read_text()
    assert (f"Stopped early (max_dollars): {sc['scored']['members']} of {N} members and {sc['scored']['nonmembers']} "
            f"of {N} non-members scored") in (out / "report.html").read_text()
    with EchoServer(fail_after=1) as srv:      # one more text (its main score), then the server fails
        r = trawl(*args(sets, srv, out, "--batch", "1", "--concurrency", "1", "--max-retries", "0", "-q"))
        one_line_error(r, "scoring stopped")
    f = figures(out)
    assert not f["scoring"]["complete"] and f["scoring"]["stopped"].startswith("failed: scoring stopped")
    assert "Stopped early (failed: scoring stopped" in (out / "report.html").read_text()
    with EchoServer() as srv:
        r = trawl(*args(sets, srv, out, "--batch", "1"))
        assert r.returncode == 0, r.stderr
        assert len(echo_texts(srv)) < 2 * 2 * N       # the texts scored before were not sent again
    g = figures(out)
    assert g["scoring"]["complete"] and g["methods"] == want["methods"]
    assert g["scoring"]["prompt_tokens"] == want["scoring"]["prompt_tokens"]


def finished_run(tmp_path, sets, srv, batch: str) -> tuple[dict, list[dict]]:
    """An uninterrupted run's figures, and the journal records the driver writes for its rows
    (extractor/scoring: one a scored text), from its scores.parquet."""
    import pyarrow.parquet as pq

    full = tmp_path / "full"
    assert main(args(sets, srv, full, "--batch", batch, "-q")) == 0
    t = pq.read_table(full / "scores.parquet")
    settings = json.loads(t.schema.metadata[b"settings"])
    return figures(full), [{"settings": settings, "row": row, "prompt_tokens": 7, "completion_tokens": 1,
                            "cost_usd": 1e-5} for row in t.to_pylist()]


def test_damaged_journal_is_rescored_never_other_numbers(tmp_path, sets, capsys):
    """The journal a killed run leaves, damaged at random: each rerun ends with the figures of the
    undamaged run (damaged lines scored again) or one line; never a traceback or other numbers."""
    with EchoServer() as srv:
        want, recs = finished_run(tmp_path, sets, srv, "3")
        clean = b"".join(journal_line(r) for r in recs)
        rng = random.Random(1414)
        outcomes = set()
        for trial in range(30):
            out = tmp_path / f"t{trial}"
            out.mkdir()
            data = bytearray(clean)
            if trial:
                for _ in range(rng.randint(1, 4)):
                    kind = rng.random()
                    at = rng.randrange(len(data))
                    if kind < 0.5:
                        data[at] ^= 1 << rng.randrange(8)
                    elif kind < 0.7:
                        data[at:at + 16] = bytes(len(data[at:at + 16]))
                    elif kind < 0.85:        # a digit changed for another: the checksum must catch it
                        digits = [i for i, b in enumerate(data) if 0x30 <= b <= 0x39]
                        i = rng.choice(digits)
                        data[i] = 0x30 + (data[i] - 0x30 + rng.randrange(1, 10)) % 10
                    else:
                        del data[at:]
            (out / "_scores_journal.jsonl").write_bytes(bytes(data))
            before = len(srv.requests)
            capsys.readouterr()
            rc = main(args(sets, srv, out, "--batch", "3", "-q"))
            err = capsys.readouterr().err
            if rc != 0:
                assert rc == 2 and err.count("\n") == 1 and err.startswith("trawl: error: "), err
                outcomes.add("error")
                continue
            got = figures(out)
            assert got["methods"] == want["methods"] and got["members"] == want["members"], trial
            assert got["scoring"]["complete"]
            rescored = len([q for q in srv.requests[before:] if q.get("echo")])
            outcomes.add("rescored" if rescored else "journal")
            if trial == 0:
                assert rescored == 0      # an undamaged journal is used as it is
        assert "rescored" in outcomes and "journal" in outcomes


def test_journal_records_of_other_types_are_rescored(tmp_path, sets, capsys):
    """Lines whose checksum holds but whose record is not one trawl writes (a field of another type, other
    settings): dropped and scored again; the figures are the undamaged run's."""
    with EchoServer() as srv:
        want, clean = finished_run(tmp_path, sets, srv, "4")
        settings, rows = clean[0]["settings"], [r["row"] for r in clean]
        bad = [("row", "perplexity", "1.5"), ("row", "scored_tokens", -1), ("row", "scored_tokens", 2 ** 40),
               ("row", "token_logprobs", "x"), ("row", "request_id", 5), ("row", "min_k_pp_exact", 1),
               ("row", "attack", 3), ("rec", "cost_usd", float("nan")), ("rec", "prompt_tokens", True),
               ("rec", "settings", {**settings, "k": 0.5}), ("rec", "row", [])]
        for trial, (where, key, value) in enumerate(bad):
            recs = [{"settings": settings, "row": dict(r), "prompt_tokens": 7, "completion_tokens": 1,
                     "cost_usd": 1e-5} for r in rows]
            victim = recs[trial % len(recs)]
            (victim["row"] if where == "row" else victim)[key] = value
            out = tmp_path / f"b{trial}"
            out.mkdir()
            (out / "_scores_journal.jsonl").write_bytes(b"".join(journal_line(r) for r in recs))
            before = len(srv.requests)
            assert main(args(sets, srv, out, "--batch", "4", "-q")) == 0, (key, capsys.readouterr().err)
            assert figures(out)["methods"] == want["methods"], key
            sent = []
            for q in srv.requests[before:]:
                if q.get("echo"):
                    sent.extend(q["prompt"] if isinstance(q["prompt"], list) else [q["prompt"]])
            by_key = {text_key(w, t): t for w, ts in (("members", MEMBERS[:N]), ("nonmembers", NONMEMBERS[:N]))
                      for t in ts}
            assert [x for x in sent if x in by_key.values()] == [by_key[rows[trial % len(rows)]["request_id"]]], key
