"""Ray with an index on a store (``file://``, a folder used as an object store): shards built by Ray
tasks and published; match actors each fetch the index into their node's cache by its URL; the
matches equal the local ones row for row (the file's ``index`` metadata names the URL)."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from executor_data import corpus_docs, generations, index_files, write_corpus, write_run

ray = pytest.importorskip("ray")

from corpora.executor import ExecutorSpec, RayExecutor  # noqa: E402
from suffix_index import SuffixIndex, build_index, match_to_parquet  # noqa: E402
from suffix_index.distributed import DistributedIndex  # noqa: E402

pytestmark = pytest.mark.ray


def test_build_publish_and_match_from_a_store_on_ray(tmp_path):
    from ray_cluster import ray_env

    docs = corpus_docs(seed=3, docs=90)
    write_corpus(tmp_path / "c", docs, shard_bytes=7_000)
    build_index(tmp_path / "c", tmp_path / "i-local")
    write_run(tmp_path / "run", generations(docs, n=150, seed=4))
    with SuffixIndex.open(tmp_path / "i-local") as idx:
        match_to_parquet(idx, tmp_path / "run", tmp_path / "m-local.parquet", min_tokens=4, batch_size=50)
    url = f"file://{tmp_path}/store/index"
    saved = dict(os.environ)
    os.environ.update(ray_env({"TRAWL_CACHE_DIR": str(tmp_path / "cache-driver")}))   # the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=128 << 20)
    try:
        with RayExecutor(ExecutorSpec(kind="ray", retries=2)) as ex:
            build_index(tmp_path / "c", url, executor=ex)
            assert index_files(tmp_path / "store" / "index") == index_files(tmp_path / "i-local")
            os.environ["TRAWL_CACHE_DIR"] = str(tmp_path / "cache-matcher")   # the driver: an empty cache
            with DistributedIndex(url, ex, groups=2, replicas=1) as di:
                r = match_to_parquet(di, tmp_path / "run", tmp_path / "m-ray.parquet", min_tokens=4, batch_size=50)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
    assert r["spans"] > 20
    assert pq.read_table(tmp_path / "m-ray.parquet").to_pylist() == pq.read_table(tmp_path / "m-local.parquet").to_pylist()
    assert pq.read_schema(tmp_path / "m-ray.parquet").metadata[b"index"].decode() == url
    assert any(p.name.startswith("index-") for p in (tmp_path / "cache-matcher" / "store").iterdir())
