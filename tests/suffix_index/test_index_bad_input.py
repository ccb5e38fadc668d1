"""suffix_index: regressions for QA findings (damaged pointers, checksums, bad parameters, help)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpora import ingest_records
from corpora.readers import Record
from suffix_index import IndexFormatError, SuffixIndex, build_index
from suffix_index.manifest import MANIFEST_NAME
from suffix_index.verify import verify_index
from repo import one_line_error, trawl

DOCS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
        "sphinx of black quartz, judge my vow", "the quick brown fox again and again"]


@pytest.fixture()
def corpus(tmp_path):
    recs = [Record(source=f"s{i}", text=t) for i, t in enumerate(DOCS)]
    ingest_records(recs, tmp_path / "corpus")
    return tmp_path / "corpus"


@pytest.fixture()
def index(corpus, tmp_path):
    build_index(corpus, tmp_path / "index")
    return tmp_path / "index"


def damage_sa(index: Path, rank: int, value: int = 0xFFFFFF00) -> Path:
    """Overwrite one suffix-array pointer. The manifest's block checksums are dropped (an index built
    before them), so that what is tested here is the pointer checks behind them."""
    m = json.loads((index / MANIFEST_NAME).read_text())
    for f in m["shards"][0]["files"].values():
        f.pop("blocks", None)
    (index / MANIFEST_NAME).write_text(json.dumps(m))
    sa_path = index / m["shards"][0]["files"]["sa"]["name"]
    sa = np.fromfile(sa_path, dtype="<u4")
    sa[rank] = value
    sa.tofile(sa_path)  # same size
    return sa_path


def write_generations(path: Path, rows):
    cols = {"run_id": [r[0] for r in rows], "request_id": [r[1] for r in rows],
            "completion": [r[2] for r in rows],
            "token_offsets": pa.array([r[3] for r in rows], type=pa.list_(pa.int32()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


# ------------------------------------------------------------------ 1. damaged suffix-array pointers


@pytest.mark.parametrize("quick", [True, False])
def test_out_of_range_pointer_fails_verify(index, quick):
    sa_path = damage_sa(index, 5)
    msg = f"{sa_path.name}: pointer .* out of range" if quick else f"{sa_path.name}: checksum mismatch"
    with pytest.raises(IndexFormatError, match=msg):
        verify_index(index, checksums=not quick, samples=0)


def test_out_of_range_pointer_fails_cli_quick_verify(index):
    damage_sa(index, 7)
    one_line_error(trawl("index", "verify", index, "--quick"), "out of range")


def test_duplicate_pointer_fails_quick_verify(index):
    """An in-range but repeated pointer breaks the permutation fingerprint."""
    m = json.loads((index / MANIFEST_NAME).read_text())
    sa = np.fromfile(index / m["shards"][0]["files"]["sa"]["name"], dtype="<u4")
    damage_sa(index, 10, int(sa[11]))
    with pytest.raises(IndexFormatError, match="not a permutation|out of order"):
        verify_index(index, checksums=False, samples=0)


def test_out_of_range_pointer_stops_match_and_queries(index):
    m = json.loads((index / MANIFEST_NAME).read_text())
    n = m["shards"][0]["bytes"]
    damage_sa(index, (n - 1) // 2)  # the first rank every binary search reads
    with SuffixIndex.open(index) as idx:
        with pytest.raises(IndexFormatError, match=r"shard-00000\.sa: pointer .* out of range"):
            idx.match([("k", b"zz the quick brown fox jumps over zz", None)], min_bytes=5)
        with pytest.raises(IndexFormatError, match="out of range"):
            idx.count("quick")
        with pytest.raises(IndexFormatError, match="out of range"):
            idx.find("quick")
    # every rank read by some search: damage each one in turn, a query always fails or is right
    for rank in range(n):
        shutil.rmtree(index)
        build_index(index.parent / "corpus", index)
        damage_sa(index, rank)
        with SuffixIndex.open(index) as idx:
            try:
                spans = idx.match([("k", b"zz the quick brown fox jumps over zz", None)], min_bytes=5)
            except IndexFormatError:
                continue
            assert [(s.start, s.end) for s in spans] == [(2, 7), (3, 34)]


def test_out_of_range_pointer_cli_match_is_one_line(index, tmp_path):
    n = json.loads((index / MANIFEST_NAME).read_text())["shards"][0]["bytes"]
    damage_sa(index, (n - 1) // 2)
    run = tmp_path / "run"
    write_generations(run / "generations" / "part-00000.parquet",
                      [("r", "a", "xx the quick brown fox jumps over yy", None)])
    r = trawl("match", run, "--index", index, "--min-tokens", "2")
    one_line_error(r, "out of range")
    assert not (run / "matches.parquet").exists()


# ------------------------------------------------------------------ 2. corpus shard checksums at build


def flip_text_byte(corpus: Path) -> Path:
    shard = corpus / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    i = data.find(b"quick brown")
    assert i > 0
    data[i] ^= 0x01  # 'q' -> 'p': still valid UTF-8 and valid Arrow
    shard.write_bytes(bytes(data))
    return shard


@pytest.mark.parametrize("jobs", [1, 2])
def test_build_checks_corpus_shard_checksum(corpus, tmp_path, jobs):
    from corpora import CorpusError

    m = json.loads((corpus / "corpus.json").read_text())
    shard = flip_text_byte(corpus)
    with pytest.raises(CorpusError, match=r"shard-00000\.arrow: checksum mismatch \(corpus.json says "
                                          + m["shards"][0]["sha256"] + ", file has [0-9a-f]{64}"):
        build_index(corpus, tmp_path / "i", jobs=jobs)
    assert not (tmp_path / "i").exists() and not list(tmp_path.glob("i.tmp-*"))
    assert shard.exists()


def test_build_checksum_mismatch_cli_is_one_line(corpus, tmp_path):
    flip_text_byte(corpus)
    one_line_error(trawl("index", "build", corpus, "--out", tmp_path / "i"), "checksum mismatch (corpus.json says")


# ------------------------------------------------------------------ 3, 4, 6. bad numbers are one-line errors


@pytest.fixture()
def run(tmp_path):
    run = tmp_path / "run"
    write_generations(run / "generations" / "part-00000.parquet",
                      [("r", "a", "xx the quick brown fox jumps over yy", [0, 3, 7, 13, 19, 23, 29, 34])])
    return run


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "verify", "{index}", "--samples", "-1"], "--samples must be a whole number >= 0, got -1"),
        (["match", "{run}", "--index", "{index}", "--batch-size", "0"], "--batch-size must be a whole number >= 1"),
        (["match", "{run}", "--index", "{index}", "--min-tokens", "0"], "--min-tokens must be a whole number >= 1"),
        (["match", "{run}", "--index", "{index}", "--min-tokens", "-5"], "--min-tokens must be a whole number >= 1"),
        (["match", "{run}", "--index", "{index}", "--min-bytes", "0"], "--min-bytes must be a whole number >= 1"),
        (["index", "build", "{corpus}", "--out", "{tmp}/j", "-j", "0"], "--jobs must be a whole number >= 1"),
        (["index", "build", "{corpus}", "--out", "{tmp}/j", "-j", "-3"], "--jobs must be a whole number >= 1"),
        (["index", "find", "{index}", "the", "--limit", "-1"], "--limit must be a whole number >= 0"),
    ],
)
def test_bad_numbers_are_one_line_errors(index, corpus, run, tmp_path, args, message):
    r = trawl(*[a.format(index=index, run=run, corpus=corpus, tmp=tmp_path) for a in args])
    one_line_error(r, message)
    assert not (run / "matches.parquet").exists() and not (tmp_path / "j").exists()


def test_verify_samples_zero_still_checks_pointers(index):
    r = trawl("index", "verify", index, "--samples", "0", "--quick")
    assert r.returncode == 0 and "pointers in range" in r.stdout and "0 adjacent suffix pairs" in r.stdout


def test_find_limit_zero_is_count_only(index):
    r = trawl("index", "find", index, "the", "--limit", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "3 occurrences (count only: --limit 0 lists none)\n"
    with SuffixIndex.open(index) as idx:
        assert idx.find("the", limit=0) == [] and len(idx.find("the", limit=None)) == 3


def test_python_api_rejects_bad_parameters(index, corpus, run, tmp_path):
    from suffix_index import ParameterError
    from suffix_index.matchfile import match_to_parquet

    gens = [("k", b"zz the quick brown fox jumps over zz", None)]
    with SuffixIndex.open(index) as idx:
        for kw in ({"min_tokens": 0}, {"min_tokens": -5}, {"min_bytes": 0}, {"batch_size": 0},
                   {"min_tokens": 2.5}):
            with pytest.raises(ParameterError) as ei:
                idx.match(gens, **kw)
            assert isinstance(ei.value, ValueError) and ei.value.user_error
            with pytest.raises(ValueError):
                match_to_parquet(idx, run, tmp_path / "m.parquet", **kw)
        with pytest.raises(ParameterError, match="limit"):
            idx.find("the", limit=-1)
    assert not (tmp_path / "m.parquet").exists()
    with pytest.raises(ParameterError, match="samples"):
        verify_index(index, samples=-1)
    for jobs in (0, -3):
        with pytest.raises(ParameterError, match="jobs"):
            build_index(corpus, tmp_path / "j", jobs=jobs)
    assert not (tmp_path / "j").exists()


# ------------------------------------------------------------------ 5. a corpus without documents


def test_build_of_zero_document_corpus_is_an_error(corpus, tmp_path):
    from corpora import CorpusError

    mpath = corpus / "corpus.json"
    m = json.loads(mpath.read_text())
    for s in m["shards"]:
        (corpus / s["name"]).unlink()
    m.update(shards=[], documents=0, text_bytes=0)
    mpath.write_text(json.dumps(m))
    with pytest.raises(CorpusError, match="no documents"):
        build_index(corpus, tmp_path / "i")
    assert not (tmp_path / "i").exists()
    one_line_error(trawl("index", "build", corpus, "--out", tmp_path / "i"), "no documents")


# ------------------------------------------------------------------ 8. --help


@pytest.mark.parametrize("sub", [["index", "verify"], ["index", "count"], ["index", "find"], ["index", "info"],
                                 ["match"]])
def test_index_help_describes_positionals_and_defaults(sub):
    r = trawl(*sub, "--help")
    assert r.returncode == 0
    out = " ".join(r.stdout.split())
    for pos in ("INDEX", "TEXT", "GENERATIONS"):
        if f" {pos} " in out.split("positional arguments:")[0] + " ":
            assert f"{pos} index folder" in out or f"{pos} text to" in out or f"{pos} run folder" in out, out
    if sub == ["index", "verify"]:
        assert "(default: 10000)" in out


# ------------------------------------------------------------------ complete, linear order check

def _swap_pointers(index: Path, r1: int, r2: int) -> Path:
    m = json.loads((index / MANIFEST_NAME).read_text())
    path = index / m["shards"][0]["files"]["sa"]["name"]
    sa = np.fromfile(path, dtype="<u4")
    sa[r1], sa[r2] = sa[r2], sa[r1]
    sa.tofile(path)
    return path


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    """About 400 KB of text: far more adjacent pairs than the 10,000 the old check sampled."""
    tmp = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "the", "of", "and", "memorized", "text", "model"]
    docs = [" ".join(rng.choice(words, 2000)) for _ in range(40)]
    ingest_records([Record(source=f"d{i}", text=t) for i, t in enumerate(docs)], tmp / "c")
    build_index(tmp / "c", tmp / "i")
    return tmp / "i"


@pytest.mark.parametrize("ranks", [(3, 4), (0, -1), (123_457, 250_001)])
def test_two_swapped_pointers_fail_quick_verify(big_index, tmp_path, ranks):
    """A swap keeps every pointer in range and the permutation fingerprint intact; the sampled
    order check of 10,000 pairs let it pass. The complete order check catches it wherever it is."""
    index = tmp_path / "i"
    shutil.copytree(big_index, index)
    n = len(np.fromfile(_swap_pointers(index, 0, 0), dtype="<u4"))
    r1, r2 = (r % n for r in ranks)
    path = _swap_pointers(index, r1, r2)
    with pytest.raises(IndexFormatError, match=f"{path.name}: suffixes out of order at rank"):
        verify_index(index, checksums=False)
    one_line_error(trawl("index", "verify", index, "--quick"), "out of order")


def _brute_force_sorted(data: bytes, sa: np.ndarray) -> bool:
    return all(data[a:] < data[b:] for a, b in zip(sa.tolist(), sa[1:].tolist()))


def test_order_check_agrees_with_brute_force_on_repetitive_text():
    """check_order (linear) against Python's own comparison of every adjacent pair of suffixes, on
    highly repetitive bytes where byte-by-byte comparison is quadratic, sorted and perturbed."""
    from pydivsufsort import divsufsort

    from suffix_index.verify import check_order

    rng = np.random.default_rng(1)
    for data in (b"ab" * 1500, b"a" * 3000, bytes(rng.integers(97, 99, 3000, dtype=np.uint8)),
                 b"\xffthe same line\n" * 200):
        text = np.frombuffer(data, dtype=np.uint8).copy()
        sa = divsufsort(text).astype(np.int32)
        assert _brute_force_sorted(data, sa)
        assert check_order(text, sa, "x") == len(data) - 1
        for _ in range(5):
            bad = sa.copy()
            i, j = rng.integers(0, len(sa), 2)
            bad[i], bad[j] = bad[j], bad[i]
            if _brute_force_sorted(data, bad):
                continue
            with pytest.raises(IndexFormatError, match="out of order"):
                check_order(text, bad, "x")


def test_verify_of_a_repeated_document_checks_every_pair(tmp_path):
    """A 2 MB index of one duplicated document took 52 s to verify (0.4 s to build): suffix
    comparisons ran the length of the repeat. The linear check does every pair (time: see the
    closing note of issue 17; no timed assertion here)."""
    doc = ("All work and no play makes Jack a dull boy. " * 24000)
    ingest_records([Record(source="a", text=doc), Record(source="b", text=doc + "!")], tmp_path / "c",
                   keep_duplicates=True)
    build_index(tmp_path / "c", tmp_path / "i")
    r = verify_index(tmp_path / "i")
    assert r["pairs_checked"] == 2 * len(doc) + 2   # every byte of both documents and a separator each, less one
