"""C-level stderr silenced for a block: what C and C++ libraries write to file descriptor 2 while
they load (llama.cpp's model loader, Ray's core announcing its log level), which trawl reports in
its own one line instead. A leaf module (standard library only)."""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to /dev/null for the duration, and put it back after (also on an
    exception). Nothing is silenced when there is no usable descriptor 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
