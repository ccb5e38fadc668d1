"""Build and match on Ray (``ray.init(num_cpus=2)`` in this process) against the local results, byte
for byte; workers killed mid-build and mid-match; errors that stay one line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from executor_data import corpus_docs, generations, index_files, manifest_shards, write_corpus, write_run  # noqa: E402

ray = pytest.importorskip("ray")

from corpora import CorpusError  # noqa: E402
from corpora.errors import ExecutorError  # noqa: E402
from corpora.executor import CRASH_ONCE_ENV, ExecutorSpec, RayExecutor  # noqa: E402
from suffix_index import SuffixIndex, build_index, match_to_parquet  # noqa: E402
from suffix_index.distributed import DistributedIndex  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    t = tmp_path_factory.mktemp("ray")
    docs = corpus_docs(seed=5, docs=150)
    write_corpus(t / "c", docs, shard_bytes=7_000)
    build_index(t / "c", t / "i-local")
    write_run(t / "run", generations(docs, n=240, seed=2))
    with SuffixIndex.open(t / "i-local") as idx:
        match_to_parquet(idx, t / "run", t / "m-local.parquet", min_tokens=4, batch_size=50)
    return t


@pytest.fixture(scope="module")
def ex(work):
    from ray_cluster import ray_env

    arm = work / "crash"
    saved = dict(os.environ)
    os.environ.update(ray_env({CRASH_ONCE_ENV: str(arm)}))   # the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=128 << 20)
    try:
        with RayExecutor(ExecutorSpec(kind="ray", retries=2)) as e:
            assert not e.owned and e.cpus == 2
            yield e
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def _arm(work: Path, stage: str = "armed") -> Path:
    (work / "crash").write_text(stage)
    return work / "crash.fired"


def _clear(work: Path) -> None:
    for name in ("crash", "crash.fired"):
        (work / name).unlink(missing_ok=True)


def _match(work, ex, out: str, **kw):
    with DistributedIndex(work / "i-local", ex, **kw) as di:
        return match_to_parquet(di, work / "run", work / out, min_tokens=4, batch_size=50)


def test_build_identical(work, ex, tmp_path):
    build_index(work / "c", tmp_path / "i", executor=ex)
    assert len(manifest_shards(tmp_path / "i")) >= 6
    assert index_files(tmp_path / "i") == index_files(work / "i-local")
    assert manifest_shards(tmp_path / "i") == manifest_shards(work / "i-local")


@pytest.mark.parametrize("groups, replicas", [(None, None), (3, 1), (1, 2)])
def test_match_identical(work, ex, groups, replicas):
    r = _match(work, ex, f"m-{groups}-{replicas}.parquet", groups=groups, replicas=replicas)
    assert r["spans"] > 50
    assert (work / f"m-{groups}-{replicas}.parquet").read_bytes() == (work / "m-local.parquet").read_bytes()


def test_worker_killed_mid_build_is_retried(work, ex, tmp_path):
    _clear(work)
    fired = _arm(work)
    build_index(work / "c", tmp_path / "i", executor=ex)
    assert fired.exists(), "no worker was killed"
    assert index_files(tmp_path / "i") == index_files(work / "i-local")   # no .part-* folder left either
    assert not [p for p in tmp_path.iterdir() if p.name != "i"]


def test_worker_killed_mid_match_is_retried(work, ex):
    _clear(work)
    fired = _arm(work)
    _match(work, ex, "m-crash.parquet", groups=2, replicas=1)
    assert fired.exists(), "no actor was killed"
    assert (work / "m-crash.parquet").read_bytes() == (work / "m-local.parquet").read_bytes()


def test_task_error_reaches_the_caller_as_itself(work, ex, tmp_path):
    import shutil

    shutil.copytree(work / "c", tmp_path / "c")
    shard = sorted((tmp_path / "c").glob("shard-*.arrow"))[2]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match="checksum mismatch"):
        build_index(tmp_path / "c", tmp_path / "i", executor=ex)
    assert not (tmp_path / "i").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c"]   # the temporary index removed


def test_damaged_index_is_one_error_from_an_actor(work, ex, tmp_path):
    import shutil

    shutil.copytree(work / "i-local", tmp_path / "i")
    sa = sorted((tmp_path / "i").glob("*.sa"))[1]
    data = bytearray(sa.read_bytes())
    data[10] ^= 0xFF
    sa.write_bytes(bytes(data))
    from suffix_index import IndexFormatError

    with DistributedIndex(tmp_path / "i", ex) as di, pytest.raises(IndexFormatError, match="does not match"):
        match_to_parquet(di, work / "run", tmp_path / "m.parquet", min_tokens=4)
    assert not (tmp_path / "m.parquet").exists()


def test_a_shard_no_node_can_hold_is_refused(work, ex, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "node_memory", 1 << 20)
    with pytest.raises(ExecutorError, match="needs .* GiB of memory, the largest node"):
        build_index(work / "c", tmp_path / "i", executor=ex)
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("stage", ["read", "write"])
def test_ingest_on_workers_equals_local_even_when_one_dies(work, ex, tmp_path, stage):
    """Workers read the files and write the shards; one killed mid-read or with its shard half
    written is retried, and the corpus is still the local one, with no stage or segment left."""
    import json

    from corpora import ingest

    src = tmp_path / "src"
    src.mkdir()
    texts = corpus_docs(seed=21, docs=150)
    for i, t in enumerate(texts):
        (src / f"d{i:03d}.txt").write_text(t)
    (src / "z-dup.txt").write_text(texts[3])
    ingest([src], tmp_path / "c-local", max_shard_bytes=9_000)
    _clear(work)
    fired = _arm(work, stage)
    ingest([src], tmp_path / "c-ray", max_shard_bytes=9_000, executor=ex)
    assert fired.exists(), "no worker was killed"
    a, b = (json.loads((tmp_path / n / "corpus.json").read_text()) for n in ("c-local", "c-ray"))
    a.pop("created_at"), b.pop("created_at")
    assert a == b and len(a["shards"]) >= 3 and a["stats"]["exact_duplicates"] == 1
    assert sorted(os.listdir(tmp_path / "c-ray")) == sorted(os.listdir(tmp_path / "c-local"))
    for f in (tmp_path / "c-local").glob("shard-*"):
        assert (tmp_path / "c-ray" / f.name).read_bytes() == f.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["c-local", "c-ray", "src"]
