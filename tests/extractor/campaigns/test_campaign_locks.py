"""The sweep lock: an overlapping scheduled run exits 75 at once and touches nothing."""
from __future__ import annotations

import fcntl
import os

import pytest

from campaign_helpers import make_index, q, trawl
from extractor.campaigns.sweep import LOCKED_EXIT_CODE, SweepLock, SweepLocked, load_sweep, run_sweep
from repo import ROOT


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
    code = ("import sys, time; sys.path.insert(0, %r); from extractor.campaigns.sweep import SweepLock; "
            "l = SweepLock(%r).acquire(); print('held', flush=True); time.sleep(60)") % (
        str(ROOT), str(out))
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


def test_the_same_campaign_never_runs_twice_at_once(tmp_path):
    """`trawl run` on a campaign a sweep (or another `trawl run`) is running: exit 75, nothing touched."""
    from campaign_helpers import make_index
    from extractor.campaigns.config import load_campaign
    from extractor.campaigns.pipeline import CampaignLocked, run_campaign

    index = make_index(tmp_path / "ix")
    (tmp_path / "c.toml").write_text(f'[target]\nmodel = "m"\nversion = "v"\nendpoints = ["http://127.0.0.1:9"]\n'
                                     f'[[attacks]]\nname = "divergence"\n[index]\npath = {q(index)}\n')
    c = load_campaign(tmp_path / "c.toml")
    c.out.parent.mkdir(parents=True)
    fd = os.open(c.out.with_name(c.out.name + ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CampaignLocked, match="already running in another process"):
            run_campaign(c, progress=False)
        proc = trawl("run", "c.toml", cwd=tmp_path)
        assert proc.returncode == 75 and len(proc.stderr.splitlines()) == 1
        assert not c.out.exists()
    finally:
        os.close(fd)


def test_unreachable_endpoints_are_one_clear_error(tmp_path):
    from campaign_helpers import make_index
    from extractor.serving.embedded import free_port

    index = make_index(tmp_path / "ix")
    eps = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    (tmp_path / "c.toml").write_text(f'[target]\nmodel = "m"\nversion = "v"\nendpoints = ["{eps[0]}", "{eps[1]}"]\n'
                                     f'max_retries = 0\n[[attacks]]\nname = "divergence"\n[index]\npath = {q(index)}\n')
    proc = trawl("run", "c.toml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    err = [l for l in proc.stderr.splitlines() if l.startswith("trawl: error: ")]
    assert len(err) == 1 and "cannot reach the model server" in err[0] and "Traceback" not in proc.stderr
    st = __import__("json").loads((tmp_path / "trawl-out" / "c" / "campaign.json").read_text())
    assert st["status"] == "failed" and st["steps"]["sample"]["status"] == "failed"
