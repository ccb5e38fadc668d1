"""The commands on a Ray cluster of a head and a worker node started with ``ray start`` on this
machine: ``trawl corpus ingest``, ``trawl index build`` and ``trawl match`` with ``--executor ray
--ray-address`` give the files the local commands give, byte for byte; a lost cluster is one
error line, and the same command re-runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from executor_data import corpus_docs, generations, index_files, manifest_shards, write_run  # noqa: E402

pytest.importorskip("ray")

from repo import one_line_error, trawl  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray_cluster import Cluster

    c = Cluster(tmp_path_factory.mktemp("raytmp"))
    try:
        yield c
    finally:
        c.stop()


def _inputs(t: Path) -> tuple[Path, list[str]]:
    docs = corpus_docs(seed=9, docs=90)
    src = t / "src"
    (src / "a").mkdir(parents=True)
    with open(src / "part1.jsonl", "w") as f:
        for i, d in enumerate(docs[:40]):
            f.write(json.dumps({"text": d, "id": f"j{i}"}) + "\n")
    for i, d in enumerate(docs[40:]):
        (src / "a" / f"doc{i:03d}.txt").write_text(d)
    (src / "a" / "dup.txt").write_text(docs[41])   # an exact duplicate across units
    return src, docs


def _env_trawl(env: dict, *args):
    import os
    import subprocess

    return subprocess.run([sys.executable, "-m", "extractor.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=os.getcwd())


def test_commands_on_a_two_node_cluster_equal_local(cluster, tmp_path):
    src, docs = _inputs(tmp_path)
    ray = ("--executor", "ray", "--ray-address", cluster.address)
    for tag, extra in (("local", ()), ("ray", ray)):
        r = _env_trawl(cluster.env, "corpus", "ingest", src / "part1.jsonl", src / "a", "--out", tmp_path / f"c-{tag}",
                       "--shard-size", "9000", "-q", *extra)
        assert r.returncode == 0, r.stderr
        r = _env_trawl(cluster.env, "index", "build", tmp_path / f"c-{tag}", "--out", tmp_path / f"i-{tag}", "-q",
                       *extra)
        assert r.returncode == 0, r.stderr
    local_c = json.loads((tmp_path / "c-local" / "corpus.json").read_text())
    ray_c = json.loads((tmp_path / "c-ray" / "corpus.json").read_text())
    for m in (local_c, ray_c):
        m.pop("created_at")
    assert ray_c == local_c and len(local_c["shards"]) >= 3 and local_c["stats"]["exact_duplicates"] == 1
    for f in sorted((tmp_path / "c-local").glob("shard-*")):
        assert (tmp_path / "c-ray" / f.name).read_bytes() == f.read_bytes()
    assert index_files(tmp_path / "i-ray") == index_files(tmp_path / "i-local")
    assert manifest_shards(tmp_path / "i-ray") == manifest_shards(tmp_path / "i-local")

    write_run(tmp_path / "run", generations(docs, n=150, seed=4))
    for tag, extra in (("local", ()), ("ray", ray)):
        r = _env_trawl(cluster.env, "match", tmp_path / "run", "--index", tmp_path / "i-local", "--out",
                       tmp_path / f"m-{tag}.parquet", "--min-tokens", "4", "--batch-size", "40", "-q", *extra)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "m-ray.parquet").read_bytes() == (tmp_path / "m-local.parquet").read_bytes()


def test_a_lost_cluster_is_one_line_and_the_command_reruns(tmp_path, tmp_path_factory):
    from ray_cluster import Cluster

    src, _ = _inputs(tmp_path)
    c = Cluster(tmp_path_factory.mktemp("raylost"))
    try:
        r = _env_trawl(c.env, "corpus", "ingest", src / "a", "--out", tmp_path / "c", "-q")
        assert r.returncode == 0, r.stderr
    finally:
        c.stop()
    r = _env_trawl(c.env, "index", "build", tmp_path / "c", "--out", tmp_path / "i", "--executor", "ray",
                   "--ray-address", c.address)
    one_line_error(r, f"Ray cluster at {c.address}: cannot connect")
    assert not (tmp_path / "i").exists()
    r = _env_trawl(dict(c.env, RAY_ADDRESS=c.address), "index", "build", tmp_path / "c", "--out", tmp_path / "i",
                   "--executor", "ray")
    one_line_error(r, f"Ray cluster at {c.address}: cannot connect")
    # re-run, on a Ray started for the command (no address: never the dead one, nor any other)
    env = {k: v for k, v in c.env.items() if k != "RAY_ADDRESS"}
    r = _env_trawl(env, "index", "build", tmp_path / "c", "--out", tmp_path / "i", "--executor", "ray",
                   "--ray-cpus", "1", "-q")
    assert r.returncode == 0, r.stderr
    r = trawl("index", "verify", tmp_path / "i", "-q")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def local_outputs(tmp_path_factory):
    """Inputs, and the local corpus, index and matches that the re-runs must equal."""
    t = tmp_path_factory.mktemp("lost")
    src, docs = _inputs(t)
    for args in (("corpus", "ingest", src / "part1.jsonl", src / "a", "--out", t / "c", "--shard-size", "9000"),
                 ("index", "build", t / "c", "--out", t / "i")):
        r = trawl(*args, "-q")
        assert r.returncode == 0, r.stderr
    write_run(t / "run", generations(docs, n=150, seed=4))
    r = trawl("match", t / "run", "--index", t / "i", "--out", t / "m.parquet", "--min-tokens", "4", "--batch-size",
              "40", "-q")
    assert r.returncode == 0, r.stderr
    return t


def _command(step: str, t: Path, out: Path) -> list:
    return {
        "ingest": ["corpus", "ingest", t / "src" / "part1.jsonl", t / "src" / "a", "--out", out, "--shard-size", "9000"],
        "build": ["index", "build", t / "c", "--out", out],
        "match": ["match", t / "run", "--index", t / "i", "--out", out, "--min-tokens", "4", "--batch-size", "40"],
    }[step]


@pytest.mark.parametrize("step, out", [("ingest", "c2"), ("build", "i2"), ("match", "m2.parquet")])
def test_cluster_lost_mid_run_is_one_line_nothing_published_and_the_rerun_equals_local(
        local_outputs, tmp_path, tmp_path_factory, step, out):
    """The head and worker killed while the command's tasks (or match actors) run: one error line naming
    the cluster and the re-run, no output and no temporary folder; the same command re-run (here on a
    Ray started for it) writes what the local command wrote."""
    import subprocess
    import time

    from corpora.executor import STALL_ENV
    from ray_cluster import Cluster

    t = local_outputs
    stall = tmp_path / "stall"
    stall.write_text("hold the tasks")
    c = Cluster(tmp_path_factory.mktemp("raylost"), env_extra={STALL_ENV: str(stall)})
    try:
        p = subprocess.Popen([sys.executable, "-m", "extractor.cli", *map(str, _command(step, t, tmp_path / out)),
                              "--executor", "ray", "--ray-address", c.address, "-q"], env=c.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while not (tmp_path / "stall.started").exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "stall.started").exists(), p.communicate(timeout=60)
    finally:
        c.stop()   # every process of the cluster, SIGKILL at the latest: a head and a worker lost
    stdout, stderr = p.communicate(timeout=180)
    one_line_error(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr),
                   f"Ray cluster at {c.address}: lost mid-run")
    assert "re-run the command" in stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["stall", "stall.started"]   # nothing half-published

    env = {k: v for k, v in c.env.items() if k not in ("RAY_ADDRESS", STALL_ENV)}
    r = _env_trawl(env, *_command(step, t, tmp_path / out), "--executor", "ray", "--ray-cpus", "2", "-q")
    assert r.returncode == 0, r.stderr
    if step == "match":
        assert (tmp_path / out).read_bytes() == (t / "m.parquet").read_bytes()
    elif step == "build":
        assert index_files(tmp_path / out) == index_files(t / "i")
    else:
        got, want = (json.loads((d / "corpus.json").read_text()) for d in (tmp_path / out, t / "c"))
        got.pop("created_at"), want.pop("created_at")
        want["inputs"] = got["inputs"]   # the same files, named from another folder
        assert got == want
        for f in sorted((t / "c").glob("shard-*")):
            assert (tmp_path / out / f.name).read_bytes() == f.read_bytes()
