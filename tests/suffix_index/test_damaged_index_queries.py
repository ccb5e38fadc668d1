"""`count`, `find` and `document` (and `trawl index count` / `find`) detect a damaged index as
`match` does (issue 17): each compares the checksummed blocks its search read (O(log N) blocks of a
large index, each once per opened index) and the document tables, so damage is one line, never a
wrong count or a wrong list of occurrences. Brute force over the documents gives the answers."""
from __future__ import annotations

import json
import random
import shutil

import pytest

from corpora import ingest_records
from corpora.readers import Record
from repo import one_line_error, trawl
from suffix_index import IndexFormatError, SuffixIndex, build_index
from suffix_index.manifest import MANIFEST_NAME, block_checksums
from test_damaged_index import docs

SMALL_BLOCK = 64   # small blocks, so that a query reads some blocks and not others


@pytest.fixture()
def index(tmp_path):
    ingest_records([Record(source=f"s{i}", text=t) for i, t in enumerate(docs())], tmp_path / "corpus")
    build_index(tmp_path / "corpus", tmp_path / "index")
    return tmp_path / "index"


def _reblock(index, size=SMALL_BLOCK):
    """The manifest's block checksums recomputed for ``size``-byte blocks (as a build with that block
    size would write them)."""
    m = json.loads((index / MANIFEST_NAME).read_text())
    for sh in m["shards"]:
        for kind in ("bytes", "sa"):
            f = sh["files"][kind]
            f["blocks"] = {"size": size, "crc32": block_checksums((index / f["name"]).read_bytes(), size)}
    (index / MANIFEST_NAME).write_text(json.dumps(m))


def _queries():
    d = docs()
    rng = random.Random(5)
    qs = ["alpha beta", "zeta", "kappa lambda mu", "no such words", "a", "eta iota"]
    for _ in range(14):
        t = rng.choice(d)
        at = rng.randrange(len(t) - 30)
        qs.append(t[at:at + rng.randint(3, 30)])
    return qs


def _brute_count(q):
    return sum(sum(1 for i in range(len(t)) if t.startswith(q, i)) for t in docs())


def _answers(idx):
    return [(idx.count(q), [(o.doc_id, o.doc_offset, o.source) for o in idx.find(q, limit=None)]) for q in _queries()]


def test_queries_on_the_undamaged_index_equal_brute_force(index):
    _reblock(index)
    with SuffixIndex.open(index) as idx:
        for q, (n, occ) in zip(_queries(), _answers(idx)):
            assert n == _brute_count(q) == len(occ), q
        assert idx.document(7).text == docs()[7]


def test_ten_changed_bytes_stop_count_and_find_with_one_line(index):
    path = index / "shard-00000.bytes"
    data = bytearray(path.read_bytes())
    for at in range(100, 2000, 190):
        data[at] = ord("q")
    path.write_bytes(bytes(data))
    for args in (("count", "alpha"), ("find", "alpha"), ("find", "alpha", "--limit", "0")):
        one_line_error(trawl("index", args[0], index, *args[1:]),
                       "shard-00000.bytes: block 0 (bytes 0-1048575) does not match its checksum")
    with SuffixIndex.open(index) as idx, pytest.raises(IndexFormatError, match="shard-00000.bytes"):
        idx.document(0)


def test_fuzz_damage_gives_an_error_or_the_right_answers(index, tmp_path):
    """Byte flips and zeroed runs in .bytes, .sa or the document table with 64-byte checksummed blocks:
    each query either stops with IndexFormatError naming the file or answers as the undamaged index
    (whose answers equal brute force)."""
    _reblock(index)
    with SuffixIndex.open(index) as idx:
        clean = _answers(idx)
    rng = random.Random(1717)
    caught = same = 0
    for trial in range(40):
        work = tmp_path / f"i{trial}"
        shutil.copytree(index, work)
        target = rng.choice(["shard-00000.bytes", "shard-00000.bytes", "shard-00000.sa", "shard-00000.docs.arrow"])
        data = bytearray((work / target).read_bytes())
        if trial % 2:
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(len(data))
            data[at:at + 16] = bytes(len(data[at:at + 16]))
        (work / target).write_bytes(bytes(data))
        try:
            idx = SuffixIndex.open(work)
        except IndexFormatError:
            caught += 1
            continue
        with idx:
            for q, want in zip(_queries(), clean):
                try:
                    got = (idx.count(q), [(o.doc_id, o.doc_offset, o.source) for o in idx.find(q, limit=None)])
                except IndexFormatError as exc:
                    assert "\n" not in str(exc) and str(work) in str(exc), str(exc)
                    caught += 1
                    continue
                assert got == want, (trial, target, q)
                same += 1
    assert caught and same   # both outcomes occur: the check is per block, not all or nothing
