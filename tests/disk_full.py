"""Run trawl's real CLI on a disk that fills up, for the disk-full tests.

The disk is a small tmpfs mounted in a private user and mount namespace (``unshare -rm``: no root
needed where unprivileged user namespaces are enabled, as on the CI machine): every write of the
command, whatever makes it (Python, Arrow IPC, Parquet, NumPy, fsync, mkdir), meets the kernel's
real ENOSPC, which is what a full disk does; nothing is injected. The tmpfs is made just large
enough for what is copied onto it first (``seed``) plus ``free`` bytes. After the command its
contents are copied out (``after``) for the test to inspect, since the mount goes with the
namespace. Where namespaces are not available the command runs in a plain folder under a file-size
limit (``RLIMIT_FSIZE`` = ``free``: writes past it fail with EFBIG, as ``ulimit -f`` does), which
meets the same error paths for any file that outgrows the limit.
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from repo import REPO

_SCRIPT = r'''
set -u
disk=$1; seed=$2; after=$3; size=$4; free=$5; shift 5
mount -t tmpfs -o size=$size tmpfs "$disk" || exit 90
cp -a "$seed/." "$disk/" || exit 91
dd if=/dev/zero of="$disk/.filler" bs=4096 2>/dev/null
truncate -s -$free "$disk/.filler" || exit 92
"$@"
rc=$?
rm -f "$disk/.filler"
cp -a "$disk/." "$after/"
exit $rc
'''


@functools.lru_cache(maxsize=1)
def mode() -> str:
    """``tmpfs`` where a private tmpfs can be mounted, else ``fsize`` (``TRAWL_TEST_DISK=fsize``
    forces the fallback, to test it where both work)."""
    if os.environ.get("TRAWL_TEST_DISK") in ("tmpfs", "fsize"):
        return os.environ["TRAWL_TEST_DISK"]
    if shutil.which("unshare"):
        probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"trawl-ns-probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        try:
            r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{probe}'"],
                               capture_output=True, timeout=30)
            if r.returncode == 0:
                return "tmpfs"
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    return "fsize"


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def trawl_on_disk(disk: Path, seed: Path, after: Path, free: int, *args, how: str | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``trawl ARGS`` (``{disk}`` in an argument is replaced by the disk's path) with the contents
    of ``seed`` on a disk that has ``free`` bytes left; the disk's contents end in ``after``."""
    how = how or mode()
    disk.mkdir(parents=True, exist_ok=True)
    after.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "extractor.cli", *(str(a).replace("{disk}", str(disk)) for a in args)]
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
    if how == "tmpfs":
        size = _size(seed) * 2 + 1024 * 1024 + free   # room for the seed's files (in pages) and the filler's slack
        return subprocess.run(["unshare", "-rm", "sh", "-c", _SCRIPT, "sh", str(disk), str(seed), str(after),
                               str(size), str(free), *argv], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=timeout)
    shutil.rmtree(disk)
    shutil.copytree(seed, disk)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (free, free))

    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                       preexec_fn=limit)
    shutil.rmtree(after)
    shutil.copytree(disk, after)
    return r
