"""A full disk under every command that writes (issue 17): ingest, build, sample, match, report and
run each stop with one line naming the file they could not write (exit 74), no traceback, nothing
half-published (no new folder, no temporary file, the previous report whole), and the same command
run again with room (``--resume`` for a run) finishes with the result of an undisturbed run.

The disk is a real small tmpfs (tests/disk_full.py: the kernel's own ENOSPC, met by Python, Arrow,
Parquet and NumPy writes alike), or a file-size limit where no tmpfs can be mounted."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from disk_full import trawl_on_disk
from draw_server import DrawServer

ROOM = 64 * 1024 * 1024
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


@pytest.fixture(scope="module")
def server():
    with DrawServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Inputs made once: a JSONL corpus (~400 KB), and (through the CLI, with room) its corpus and index."""
    w = tmp_path_factory.mktemp("disk-full")
    rng = random.Random(17)
    (w / "in").mkdir()
    with open(w / "in" / "in.jsonl", "w") as fh:
        for _ in range(800):
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 100)))}) + "\n")
    return w


def _one_line(r, name: str) -> None:
    assert r.returncode == 74, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("trawl: error: ") and "Traceback" not in r.stderr, r.stderr
    assert name in lines[-1] and "cannot write" in lines[-1], lines[-1]
    assert len([line for line in lines if line.startswith("trawl: error")]) == 1


def _no_temps(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert left == [], left


def _step(work, tmp, name, seed_from: list[Path], free: int, *args):
    """Run ``trawl ARGS`` with the ``seed_from`` folders on a disk with ``free`` bytes left."""
    seed = tmp / f"{name}-seed"
    seed.mkdir()
    for p in seed_from:
        (shutil.copytree if p.is_dir() else shutil.copy)(p, seed / p.name)
    return trawl_on_disk(tmp / "disk", seed, tmp / f"{name}-after", free, *args)


def _ingest(work, tmp, free):
    return _step(work, tmp, f"ingest{free}", [work / "in" / "in.jsonl"], free,
                 "corpus", "ingest", "{disk}/in.jsonl", "-o", "{disk}/corpus")


def test_ingest_and_build(work, tmp_path):
    r = _ingest(work, tmp_path, 100_000)
    _one_line(r, "shard-00000.arrow")
    after = tmp_path / "ingest100000-after"
    assert not (after / "corpus").exists()
    _no_temps(after)
    r = _ingest(work, tmp_path, ROOM)
    assert r.returncode == 0, r.stderr
    corpus = tmp_path / f"ingest{ROOM}-after" / "corpus"
    assert json.loads((corpus / "corpus.json").read_text())["documents"] == 800

    build = ("index", "build", "{disk}/corpus", "-o", "{disk}/index")
    r = _step(work, tmp_path, "build-full", [corpus], 600_000, *build)
    _one_line(r, "index.tmp-")
    after = tmp_path / "build-full-after"
    assert not (after / "index").exists() and (after / "corpus" / "corpus.json").exists()
    _no_temps(after)
    r = _step(work, tmp_path, "build", [corpus], ROOM, *build)
    assert r.returncode == 0, r.stderr
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "build-after", tmp_path / "verify-after", ROOM,
                      "index", "verify", "{disk}/index")
    assert r.returncode == 0, r.stderr


def _rows(run: Path):
    t = pq.read_table(run / "generations", columns=["request_id", "completion", "seed", "token_offsets"])
    return sorted((r["request_id"], r["completion"], r["seed"], tuple(r["token_offsets"])) for r in t.to_pylist())


def test_sample_match_and_report(server, work, tmp_path):
    sample = ("sample", "--endpoint", server.base_url, "--model", server.model, "--attack", "divergence",
              "--param", "words=alpha,beta,gamma,delta", "--param", "samples=40", "--param", "max_tokens=24",
              "--out", "{disk}/run", "--no-progress")
    r = _step(work, tmp_path, "clean", [], ROOM, *sample)
    assert r.returncode == 0, r.stderr
    clean = tmp_path / "clean-after" / "run"

    r = _step(work, tmp_path, "sample-full", [], 30_000, *sample)
    _one_line(r, "/run/")
    first = tmp_path / "sample-full-after"
    _no_temps(first)
    status = json.loads((first / "run" / "run.json").read_text())
    assert status["status"] in ("failed", "running")   # "running" when even run.json could not be rewritten
    if status["status"] == "failed":
        assert "cannot write" in status["error"]
    r = trawl_on_disk(tmp_path / "disk", first, tmp_path / "resumed", ROOM, *sample, "--resume")
    assert r.returncode == 0, r.stderr
    resumed = tmp_path / "resumed" / "run"
    assert json.loads((resumed / "run.json").read_text())["status"] == "finished"
    assert _rows(resumed) == _rows(clean) and len(_rows(clean)) == 160

    # match and report against a small index of the draw server's own words
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "in.jsonl").write_text("".join(
        json.dumps({"text": r[1]}) + "\n" for r in _rows(clean)[:40] if r[1].strip()))
    for name, args in (("c", ("corpus", "ingest", "{disk}/in.jsonl", "-o", "{disk}/corpus")),
                       ("i", ("index", "build", "{disk}/corpus", "-o", "{disk}/index"))):
        r = trawl_on_disk(tmp_path / "disk", tmp_path / "m", tmp_path / f"m-{name}", ROOM, *args)
        assert r.returncode == 0, r.stderr
        shutil.rmtree(tmp_path / "m")
        shutil.copytree(tmp_path / f"m-{name}", tmp_path / "m")
    shutil.copytree(clean, tmp_path / "m" / "run")
    match = ("match", "{disk}/run", "--index", "{disk}/index", "--min-tokens", "5")
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "m", tmp_path / "match-full", 0, *match)
    _one_line(r, "run/matches.parquet")
    assert not (tmp_path / "match-full" / "run" / "matches.parquet").exists()
    _no_temps(tmp_path / "match-full")
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "m", tmp_path / "matched", ROOM, *match)
    assert r.returncode == 0, r.stderr
    assert pq.read_metadata(tmp_path / "matched" / "run" / "matches.parquet").num_rows > 0

    report = ("report", "{disk}/run", "-q")
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "matched", tmp_path / "reported", ROOM, *report)
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "reported" / "run" / "report").iterdir()}
    assert {"report.html", "report.md", "metrics.json"} <= set(before)
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "reported", tmp_path / "report-full", 20_000, *report,
                      "--window-tokens", "10")
    _one_line(r, "/run/report/")
    after = {p.name: p.read_bytes() for p in (tmp_path / "report-full" / "run" / "report").iterdir()}
    assert after == before   # the earlier report whole: no file of it replaced, no temporary left
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "reported", tmp_path / "report-again", ROOM, *report,
                      "--window-tokens", "10")
    assert r.returncode == 0, r.stderr


def test_run_campaign(server, work, tmp_path):
    """`trawl run`: the campaign stops at the step that met the full disk with one line, and the same
    command run again with room resumes it and finishes."""
    seed = tmp_path / "seed"
    seed.mkdir()
    words = "alpha beta gamma delta " * 30
    (seed / "in.jsonl").write_text(json.dumps({"text": words}) + "\n")
    for name, args in (("c", ("corpus", "ingest", "{disk}/in.jsonl", "-o", "{disk}/corpus")),
                       ("i", ("index", "build", "{disk}/corpus", "-o", "{disk}/index"))):
        r = trawl_on_disk(tmp_path / "disk", seed, tmp_path / name, ROOM, *args)
        assert r.returncode == 0, r.stderr
        shutil.rmtree(seed)
        shutil.copytree(tmp_path / name, seed)
    (seed / "c.toml").write_text(
        f'[campaign]\nname = "full"\nout = "out"\n[target]\nmodel = "{server.model}"\nversion = "v1"\n'
        f'endpoints = ["{server.base_url}"]\n[[attacks]]\nname = "divergence"\nwords = ["alpha", "beta"]\n'
        f'samples = 40\nmax_tokens = 24\n[index]\npath = "index"\n[history]\nrecord = false\n')
    r = trawl_on_disk(tmp_path / "disk", seed, tmp_path / "full", 30_000, "run", "{disk}/c.toml", "--no-progress")
    _one_line(r, "{}".format(tmp_path / "disk"))
    _no_temps(tmp_path / "full")
    assert not (tmp_path / "full" / "out" / "report" / "report.html").exists()
    r = trawl_on_disk(tmp_path / "disk", tmp_path / "full", tmp_path / "again", ROOM, "run", "{disk}/c.toml",
                      "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again" / "out" / "report" / "report.html").exists()
    st = json.loads((tmp_path / "again" / "out" / "campaign.json").read_text())
    assert st["status"] == "finished"
