"""Helpers for the campaign / sweep / history tests: a tiny real index, TOML writers, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from repo import ROOT
from sampler_helpers import DOCS as _TEXTS

CONSTITUTION = _TEXTS[0]   # the US Constitution's preamble (sampler_helpers.DOCS)

DOCS = [
    CONSTITUTION,
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal.",
    "poem poem poem poem poem poem poem poem poem poem poem poem poem poem poem poem poem poem poem poem",
]


def make_index(folder: Path) -> Path:
    """A real corpus (corpora.ingest_records) and its real suffix-array index; returns the index path."""
    from corpora.ingest import ingest_records
    from corpora.readers import Record
    from suffix_index import build_index

    folder = Path(folder)
    if (folder / "index" / "manifest.json").exists():
        return folder / "index"
    ingest_records([Record(source=f"doc{i}", text=t, metadata={}) for i, t in enumerate(DOCS)], folder / "corpus")
    build_index(folder / "corpus", folder / "index")
    return folder / "index"


def trawl(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console command, in a subprocess, as a user (or cron) runs it."""
    return subprocess.run([sys.executable, "-m", "extractor.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})


def q(s: str) -> str:
    """A TOML basic string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def qlist(xs) -> str:
    return "[" + ", ".join(q(x) for x in xs) + "]"
