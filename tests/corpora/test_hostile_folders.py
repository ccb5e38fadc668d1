"""Output folders under hostile use (issue 17): --force replaces only a folder trawl made, never the
input, the current folder or a stranger's folder; what killed ingests and builds left beside their
output (OUT.tmp-PID of a dead process) is cleaned up at the next start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corpora import CorpusError, ingest, open_corpus
from repo import REPO, one_line_error
from suffix_index import IndexFormatError, build_index


def trawl_in(cwd, *args) -> subprocess.CompletedProcess:
    """``trawl ARGS`` run from the folder ``cwd``."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "extractor.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def jsonl(path: Path, texts=("alpha beta gamma", "delta epsilon zeta")) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def dead_pid() -> int:
    """The pid of a process that has ended (so no process has it now, barring reuse)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------ --force


def test_ingest_force_into_the_current_folder_keeps_the_input_and_other_files(tmp_path):
    src = jsonl(tmp_path / "d.jsonl")
    (tmp_path / "notes.txt").write_text("mine")
    r = trawl_in(tmp_path, "corpus", "ingest", "d.jsonl", "--out", tmp_path, "--force")
    one_line_error(r, "current folder")
    assert src.exists() and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", [".", ".."])
def test_ingest_out_dot_and_dotdot_are_one_line(tmp_path, out):
    (tmp_path / "w").mkdir()
    jsonl(tmp_path / "w" / "d.jsonl")
    for force in ([], ["--force"]):
        r = trawl_in(tmp_path / "w", "corpus", "ingest", "d.jsonl", "--out", out, *force)
        one_line_error(r, "")
        assert (tmp_path / "w" / "d.jsonl").exists()


def test_force_refuses_a_folder_trawl_did_not_make(tmp_path):
    src = jsonl(tmp_path / "d.jsonl")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(CorpusError, match="not a corpus folder trawl made"):
        ingest([src], other, overwrite=True)
    assert (other / "cat.jpg").exists()
    r = trawl_in(tmp_path, "corpus", "ingest", src, "--out", other, "--force")
    one_line_error(r, "not a corpus folder trawl made (no corpus.json)")


def test_force_refuses_a_parent_of_the_input_and_a_file(tmp_path):
    (tmp_path / "data").mkdir()
    src = jsonl(tmp_path / "data" / "d.jsonl")
    with pytest.raises(CorpusError, match="holds the input"):
        ingest([src], tmp_path / "data", overwrite=True)
    with pytest.raises(CorpusError, match="inside the input folder"):
        ingest([tmp_path / "data"], tmp_path / "data" / "corpus")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CorpusError, match="not a folder"):
        ingest([src], tmp_path / "afile", overwrite=True)
    assert src.exists() and (tmp_path / "afile").read_text() == "x"


def test_force_replaces_a_corpus_and_an_empty_folder(tmp_path):
    src = jsonl(tmp_path / "d.jsonl")
    ingest([src], tmp_path / "c")
    assert ingest([src], tmp_path / "c", overwrite=True).documents == 2
    (tmp_path / "empty").mkdir()
    assert ingest([src], tmp_path / "empty", overwrite=True).documents == 2


def test_index_build_force_replaces_only_an_index(tmp_path):
    src = jsonl(tmp_path / "d.jsonl")
    ingest([src], tmp_path / "c")
    stranger = tmp_path / "stuff"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("keep")
    with pytest.raises(IndexFormatError, match="not an index folder trawl made"):
        build_index(tmp_path / "c", stranger, overwrite=True)
    assert (stranger / "keep.txt").exists()
    with pytest.raises(IndexFormatError, match="holds the input"):
        build_index(tmp_path / "c", tmp_path, overwrite=True)
    with pytest.raises(IndexFormatError, match="is the input"):   # the corpus itself
        build_index(tmp_path / "c", tmp_path / "c", overwrite=True)
    assert open_corpus(tmp_path / "c").documents == 2
    build_index(tmp_path / "c", tmp_path / "i")
    build_index(tmp_path / "c", tmp_path / "i", overwrite=True)
    r = trawl_in(tmp_path, "index", "build", "c", "--out", ".", "--force")
    one_line_error(r, "current folder")
    r = trawl_in(tmp_path / "stuff", "index", "build", "../c", "--out", "..", "--force")
    one_line_error(r, "")
    assert (stranger / "keep.txt").exists() and src.exists()


# ------------------------------------------------------------------------------ stale temporary folders


def test_ingest_and_build_remove_stale_temporary_folders_of_dead_processes(tmp_path):
    src = jsonl(tmp_path / "d.jsonl")
    dead = dead_pid()
    stale = tmp_path / f"c.tmp-{dead}"
    stale.mkdir()
    (stale / "shard-00000.arrow").write_bytes(b"x" * 1000)
    old = tmp_path / f"c.old-{dead}"
    old.mkdir()
    live = tmp_path / f"c.tmp-{os.getppid()}"   # a live process's: another writer, left alone
    live.mkdir()
    ingest([src], tmp_path / "c")
    assert not stale.exists() and not old.exists() and live.exists()
    assert not (tmp_path / f"c.tmp-{os.getpid()}").exists()
    stale_index = tmp_path / f"i.tmp-{dead}"
    stale_index.mkdir()
    (stale_index / "shard-00000.sa").write_bytes(b"\0" * 4096)
    build_index(tmp_path / "c", tmp_path / "i")
    assert not stale_index.exists()
    others = tmp_path / f"ix.tmp-{dead}"   # another output's leftovers are not ours to remove
    others.mkdir()
    build_index(tmp_path / "c", tmp_path / "i", overwrite=True)
    assert others.exists()
