"""The sweep lock: an overlapping scheduled run exits 75 at once and touches nothing."""
from __future__ import annotations

import fcntl
import os

import pytest

from campaign_helpers import make_index, q, trawl
from extractor.sweep import LOCKED_EXIT_CODE, SweepLock, SweepLocked, load_sweep, run_sweep


@pytest.fixture()
def sweep_file(tmp_path):
    index = make_index(tmp_path / "ix")
    p = tmp_path / "nightly.toml"
    p.write_text(f'[sweep]\nout = "out"\n\n[defaults.index]\npath = {q(index)}\n\n'
                 '[[attacks]]\nname = "divergence"\n\n'
                 '[[targets]]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9"]\n')
    return p


def test_second_sweep_exits_75_while_the_first_holds_the_lock(sweep_file, tmp_path):
    out = tmp_path / "out"
    with SweepLock(out) as held:
        assert held.fd is not None
        # in-process: a second holder is refused
        with pytest.raises(SweepLocked, match=f"another trawl sweep is running in {out} \\(pid {os.getpid()}"):
            SweepLock(out).acquire()
        with pytest.raises(SweepLocked):
            run_sweep(load_sweep(sweep_file), progress=False)
        # through the CLI, as cron would call it
        proc = trawl("sweep", str(sweep_file), "--no-progress", cwd=tmp_path)
        assert proc.returncode == LOCKED_EXIT_CODE == 75
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("trawl: error: another trawl sweep is running in ")
        assert "Traceback" not in proc.stderr
        assert not (out / "campaigns").exists() and not (out / "sweep.json").exists()
    # released: the lock file stays, but nobody holds it
    fd = os.open(out / "sweep.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_lock_is_dropped_when_the_holder_dies(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys, time; sys.path.insert(0, %r); from extractor.sweep import SweepLock; "
            "l = SweepLock(%r).acquire(); print('held', flush=True); time.sleep(60)") % (
        str(__import__("pathlib").Path(__file__).resolve().parents[1]), str(out))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(SweepLocked):
            SweepLock(out).acquire()
        p.kill()
        p.wait(10)
        SweepLock(out).acquire().release()        # kill -9 leaves no stale lock
    finally:
        if p.poll() is None:
            p.kill()
