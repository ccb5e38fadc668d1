"""Where the project is, and trawl's real CLI in a subprocess, for tests that run it as a user does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]   # the repository (tests/ is its child)
REPO = str(ROOT)


def trawl(*args) -> subprocess.CompletedProcess:
    """``python -m extractor.cli ARGS`` with this checkout on PYTHONPATH; text output captured."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "extractor.cli", *map(str, args)], capture_output=True,
                          text=True, env=env)


def one_line_error(r: subprocess.CompletedProcess, message: str) -> None:
    """The command failed with exit 2 and exactly one line, ``trawl: error: ...`` holding ``message``."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("trawl: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


def ctrl_c_ready() -> None:
    """``preexec_fn`` for a child the test will send Ctrl-C (SIGINT) as a terminal would: SIGINT at
    its default and unblocked in the child, whatever the test runner's own state. A runner started
    as a background job of a non-interactive shell (``pytest &``) ignores SIGINT, a child inherits
    that, and its Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
