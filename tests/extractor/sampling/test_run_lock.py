"""One process at a time per run folder (RUN/.lock), and a damaged part is a one-line error."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from extractor.attacks import AttackSpec
from extractor.errors import TrawlError
from extractor.sampling.run_folder import RunDir, RunLock, RunLocked
from extractor.sampling import run_attacks
from flaky_server import FlakyServer
from repo import REPO

ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
FAST = dict(timeout=5.0, max_retries=2, backoff_base=0.01, backoff_max=0.05, progress=False)
SPEC = [AttackSpec("divergence", {"words": "a,b,c", "samples": 3, "repetitions": 3, "max_tokens": 8})]


def _ids(run):
    return RunDir(str(run)).read_generations(columns=["request_id"]).column("request_id").to_pylist()


def test_second_run_attacks_on_the_same_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with FlakyServer(faults=(), delay=0.2) as srv:
        out = {}

        def first():
            out["summary"] = run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=SPEC,
                                         concurrency=1, resume=True, **FAST)

        t = threading.Thread(target=first)
        t.start()
        deadline = time.time() + 30
        while not (run / "run.json").exists() and time.time() < deadline:
            time.sleep(0.02)
        assert (run / "run.json").exists()
        with pytest.raises(RunLocked, match=rf"another trawl process is using this run folder \(pid {os.getpid()}\)") \
                as ei:
            run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=SPEC, concurrency=1, resume=True,
                        **FAST)
        assert ei.value.exit_code == 75 and isinstance(ei.value, TrawlError)
        t.join(60)
    assert out["summary"].status == "finished"
    ids = _ids(run)
    assert len(ids) == len(set(ids)) == out["summary"].planned == 9
    # released at the end: a resume now works and adds nothing
    with FlakyServer(faults=()) as srv:
        s = run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=SPEC, resume=True, **FAST)
    assert s.new_generations == 0 and len(_ids(run)) == 9


def test_lock_held_by_another_process_cli_exit_75_and_nothing_written(tmp_path):
    run = tmp_path / "run"
    with FlakyServer(faults=()) as srv:
        run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=SPEC, **FAST)
        before = {p: os.path.getmtime(run / p) for p in ("run.json", "config.json")}
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys, time\n"
             f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "os.ftruncate(fd, 0); os.write(fd, b'%d\\n' % os.getpid())\n"
             "print('locked', flush=True); time.sleep(60)\n"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            r = subprocess.run([sys.executable, "-m", "extractor.cli", "sample", "--endpoint", srv.base_url,
                                "--model", srv.model, "--out", str(run), "--resume", "--no-progress",
                                "--attack", "divergence", "--param", "words=a,b,c", "--param", "samples=3",
                                "--param", "repetitions=3", "--param", "max_tokens=8"],
                               env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
        finally:
            holder.kill()
            holder.wait()
    assert r.returncode == 75, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0] == (f"trawl: error: {run}: another trawl process is using this run folder (pid {holder.pid}); "
                        f"wait for it to end, or stop it, then --resume")
    assert {p: os.path.getmtime(run / p) for p in before} == before
    assert len(_ids(run)) == 9
    # the holder is dead (like kill -9): the kernel dropped its lock
    with RunLock(str(run)):
        pass


def test_failed_start_leaves_no_folder_and_no_lock(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(TrawlError, match="cannot reach"):
        run_attacks(str(run), endpoint="http://127.0.0.1:1", model="m", attacks=SPEC, **FAST)
    assert not run.exists()
    # an existing empty folder keeps existing and is still usable as a new run folder
    run.mkdir()
    with pytest.raises(TrawlError, match="cannot reach"):
        run_attacks(str(run), endpoint="http://127.0.0.1:1", model="m", attacks=SPEC, **FAST)
    assert run.is_dir() and not RunDir(str(run)).is_nonempty()


def test_truncated_part_is_a_one_line_error_naming_it(tmp_path):
    run = tmp_path / "run"
    with FlakyServer(faults=()) as srv:
        run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=SPEC, **FAST)
        part = RunDir(str(run)).part_paths()[0]
        with open(part, "r+b") as fh:
            fh.truncate(os.path.getsize(part) // 2)
        with pytest.raises(TrawlError) as ei:
            run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=SPEC, resume=True, **FAST)
    msg = str(ei.value)
    assert part in msg and "unreadable generations part" in msg and "delete it" in msg and "\n" not in msg
    with pytest.raises(TrawlError, match="unreadable generations part"):
        RunDir(str(run)).read_generations()
