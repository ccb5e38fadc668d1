"""Ray for the executor tests: a cluster of a head and a worker started with ``ray start`` on this
machine, and the cleanup that stops exactly the processes it started (by their ids, never
``ray stop``, which would stop every Ray of the user)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from repo import REPO

RAY = str(Path(sys.executable).with_name("ray"))


def ray_env(extra: dict | None = None) -> dict:
    """This checkout on the workers' path, token authentication off (a throwaway local cluster)."""
    return dict(os.environ, PYTHONPATH=REPO, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                **(extra or {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the cluster's temp folder), and their children."""
    found, parents = set(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(d)] = ppid
        if marker in cmd:
            found.add(int(d))
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def kill_cluster(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_under(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and _processes_under(temp_dir):
            time.sleep(0.3)


class Cluster:
    """``ray start --head`` plus one ``ray start --address`` worker node, one CPU each."""

    def __init__(self, temp_dir: Path, cpus: int = 1, env_extra: dict | None = None):
        self.temp_dir = str(temp_dir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = ray_env(env_extra)
        common = ["--num-cpus", str(cpus), "--disable-usage-stats"]
        try:
            subprocess.run([RAY, "start", "--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                            "--include-dashboard=false", *common], env=self.env, check=True, capture_output=True,
                           timeout=180)
            subprocess.run([RAY, "start", "--address", self.address, *common], env=self.env, check=True,
                           capture_output=True, timeout=180)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        kill_cluster(self.temp_dir)
