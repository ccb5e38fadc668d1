"""The executor layer without Ray: the distributed match's merge against the one-process matcher
(every grouping of the shards), shard grouping, and the [executor] table and flags' checks."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from executor_data import corpus_docs, generations, write_corpus  # noqa: E402

from corpora.errors import ExecutorError
from corpora.executor import ExecutorSpec, LocalExecutor, spec_from_table
from suffix_index import SuffixIndex, build_index
from suffix_index.distributed import DistributedIndex, merge_group_spans, split_shards
from repo import one_line_error, trawl



@pytest.fixture(scope="module")
def index(tmp_path_factory):
    t = tmp_path_factory.mktemp("ix")
    docs = corpus_docs()
    write_corpus(t / "c", docs, shard_bytes=6_000)
    build_index(t / "c", t / "i")
    return t / "i", docs


@pytest.mark.parametrize("groups", [1, 3, 100])
def test_grouped_match_equals_local(index, groups):
    """Spans, counts and the canonical occurrence: the same from any split of the shards."""
    path, docs = index
    gens = generations(docs, n=80, seed=groups)
    with SuffixIndex.open(path) as idx:
        assert len(idx.shards) >= 8
        for min_tokens in (3, 9):
            want = idx.match(gens, min_tokens=min_tokens, batch_size=37)
            with DistributedIndex(path, LocalExecutor(), groups=groups) as di:
                got = di.match(gens, min_tokens=min_tokens, batch_size=37)
            assert got == want
            assert want and any(s.occurrences > 1 for s in want)


def test_merge_by_hand():
    # group 0 sees [0, 10) (count 2, shard 0) and [12, 20); group 1 sees [0, 10) (count 1, shard 3),
    # [2, 14) (so [12, 20) and nothing else is inside it) and [5, 9), inside [0, 10) and [2, 14)
    g0 = [(0, 0, 10, 4, 0, 50, 2, 7, 1, "a"), (0, 12, 20, 3, 2, 5, 1, 9, 0, "b")]
    g1 = [(0, 0, 10, 4, 3, 1, 1, 30, 0, "c"), (0, 2, 14, 5, 4, 0, 1, 31, 0, "d"), (0, 5, 9, 1, 4, 9, 3, 31, 9, "e"),
          (1, 5, 9, 1, 4, 9, 3, 31, 9, "e")]
    assert merge_group_spans([g1, g0]) == [
        (0, 0, 10, 4, 0, 50, 3, 7, 1, "a"),
        (0, 2, 14, 5, 4, 0, 1, 31, 0, "d"),
        (0, 12, 20, 3, 2, 5, 1, 9, 0, "b"),
        (1, 5, 9, 1, 4, 9, 3, 31, 9, "e"),
    ]


def test_split_shards_balanced_and_deterministic():
    rng = random.Random(3)
    sizes = [rng.randint(1, 1000) for _ in range(50)]
    for g in (1, 2, 7, 50, 80):
        sets = split_shards(sizes, g)
        assert sets == split_shards(sizes, g)
        assert sorted(i for s in sets for i in s) == list(range(50))
        assert len(sets) == min(g, 50)
        loads = [sum(sizes[i] for i in s) for s in sets]
        assert max(loads) - min(loads) <= max(sizes)


@pytest.mark.parametrize("table, fragment", [
    ({"kind": "spark"}, "kind must be one of"),
    ({"kind": "ray", "nodes": 3}, "unknown key 'nodes'"),
    ({"kind": "ray", "cpus": 0}, "cpus must be"),
    ({"kind": "ray", "workers": True}, "workers must be"),
    ({"kind": "ray", "retries": -1}, "retries must be"),
    ({"kind": "ray", "address": ""}, "address must be"),
    ({"kind": "local", "address": "h:1"}, "address is for"),
    ("ray", "must be a table"),
])
def test_executor_table_refused(table, fragment):
    with pytest.raises(ExecutorError, match=fragment) as e:
        spec_from_table(table, "c.toml")
    assert str(e.value).startswith("c.toml: ")


def test_executor_table_accepted():
    assert spec_from_table(None, "x") == ExecutorSpec()
    assert spec_from_table({"kind": "ray", "address": "h:6379", "workers": 4, "retries": 0}, "x") == \
        ExecutorSpec(kind="ray", address="h:6379", workers=4, retries=0)


def test_ray_flags_need_ray_executor(tmp_path):
    r = trawl("index", "build", str(tmp_path / "c"), "--out", str(tmp_path / "i"), "--ray-address", "h:1")
    one_line_error(r, "--ray-address and --ray-cpus need --executor ray")
    r = trawl("match", str(tmp_path), "--index", str(tmp_path / "i"), "--out", str(tmp_path / "m.parquet"),
              "--executor", "ray", "--ray-cpus", "0")
    one_line_error(r, "--ray-cpus must be")


# ------------------------------------------------------------------ [executor] in campaign and sweep files

def _campaign(tmp_path, index_path, executor: str) -> Path:
    from campaign_helpers import q

    p = tmp_path / "c.toml"
    p.write_text(f'[campaign]\nname = "a"\n\n[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9/v1"]\n\n'
                 f'[[attacks]]\nname = "divergence"\nwords = ["poem"]\nsamples = 2\nmax_tokens = 16\n\n'
                 f'[index]\npath = {q(str(index_path))}\n\n{executor}')
    return p


def test_campaign_executor_table(tmp_path, index):
    from extractor.campaigns.config import dump_toml, identity, load_campaign, validate_campaign
    from extractor.errors import TrawlError
    import tomllib

    plain = load_campaign(_campaign(tmp_path, index[0], ""))
    assert plain.config["executor"]["kind"] == "local"
    c = load_campaign(_campaign(tmp_path, index[0], '[executor]\nkind = "ray"\naddress = "10.0.0.1:6379"\nworkers = 8\n'))
    assert c.config["executor"] == {"kind": "ray", "address": "10.0.0.1:6379", "cpus": None, "workers": 8, "retries": 3}
    assert identity(c.config) == identity(plain.config)   # where it runs is not what it is
    again = tomllib.loads(dump_toml(c.config))             # the frozen copy keeps it
    assert again["executor"]["address"] == "10.0.0.1:6379"
    with pytest.raises(TrawlError, match=r"c.toml: \[executor\] kind must be one of") as e:
        load_campaign(_campaign(tmp_path, index[0], '[executor]\nkind = "dask"\n'))
    assert "\n" not in str(e.value)
    r = trawl("run", str(_campaign(tmp_path, index[0], '[executor]\nkind = "ray"\nretries = -2\n')), "--check")
    one_line_error(r, "[executor] retries must be a whole number")


def test_sweep_executor_table(tmp_path, index):
    from campaign_helpers import q
    from extractor.campaigns.sweep import load_sweep
    from extractor.errors import TrawlError

    body = (f'[defaults.index]\npath = {q(str(index[0]))}\n\n[[targets]]\nmodel = "m"\nversion = "v1"\n'
            f'endpoints = ["http://127.0.0.1:9"]\n\n[[attacks]]\nname = "divergence"\nwords = ["poem"]\nsamples = 1\n'
            f'max_tokens = 8\n\n')
    p = tmp_path / "s.toml"
    p.write_text(body + '[executor]\nkind = "ray"\ncpus = 2\n')
    sw = load_sweep(p)
    assert all(c.config["executor"]["kind"] == "ray" and c.config["executor"]["cpus"] == 2 for c in sw.campaigns)
    p.write_text(body + '[executor]\nkind = "ray"\nhost = "x"\n')
    with pytest.raises(TrawlError, match=r"\[executor\] has unknown key 'host'"):
        load_sweep(p)
