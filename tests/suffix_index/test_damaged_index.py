"""Index bytes damaged on disk (issue 17): the manifest records a CRC-32 per 1 MiB block of each
.bytes and .sa file (and the document tables' sha256 is compared) before the first match, so ten
changed bytes stop `trawl match` with one line instead of missing and invented spans; old indexes
without block checksums still open; random damage to the manifest, .bytes, .sa or docs file is a
one-line error or the same spans."""
from __future__ import annotations

import json
import random
import shutil

import pytest

from corpora import ingest_records
from corpora.readers import Record
from repo import one_line_error, trawl
from suffix_index import IndexFormatError, SuffixIndex, build_index
from suffix_index.manifest import MANIFEST_NAME
from test_match_bad_input import gens
from json_mutations import put, walk

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def docs(n=60, seed=3):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(n)]


@pytest.fixture()
def index(tmp_path):
    ingest_records([Record(source=f"s{i}", text=t) for i, t in enumerate(docs())], tmp_path / "corpus")
    build_index(tmp_path / "corpus", tmp_path / "index")
    return tmp_path / "index"


def queries():
    d = docs()
    return [(i, (d[i][5:200] + " zz " + d[i + 1][:150]).encode(), None) for i in range(0, 40, 2)]


def spans(index):
    with SuffixIndex.open(index) as idx:
        return [(s.key, s.start, s.end, s.doc_id, s.doc_offset, s.occurrences, s.source)
                for s in idx.match(queries(), min_bytes=12)]


def test_manifest_records_block_checksums(index):
    m = json.loads((index / MANIFEST_NAME).read_text())
    files = m["shards"][0]["files"]
    assert files["bytes"]["blocks"]["size"] == 1 << 20 and len(files["sa"]["blocks"]["crc32"]) == 1
    assert "blocks" not in files["docs"]


def test_ten_changed_bytes_stop_match_with_one_line(index, tmp_path):
    clean = spans(index)
    assert clean
    path = index / "shard-00000.bytes"
    data = bytearray(path.read_bytes())
    for at in range(100, 2000, 190):   # ten bytes, same size
        data[at] = ord("q")
    path.write_bytes(bytes(data))
    with SuffixIndex.open(index) as idx, pytest.raises(IndexFormatError, match="shard-00000.bytes: block 0"):
        idx.match(queries(), min_bytes=12)
    run = tmp_path / "run"
    (run / "generations").mkdir(parents=True)
    gens(run / "generations" / "part-00000.parquet")
    one_line_error(trawl("match", run, "--index", index, "--min-tokens", 3),
                   "shard-00000.bytes: block 0 (bytes 0-1048575) does not match its checksum")
    assert not (run / "matches.parquet").exists()


def test_old_index_without_block_checksums_still_matches(index):
    clean = spans(index)
    m = json.loads((index / MANIFEST_NAME).read_text())
    for f in m["shards"][0]["files"].values():
        f.pop("blocks", None)
    (index / MANIFEST_NAME).write_text(json.dumps(m))
    assert spans(index) == clean


def mutate(value, rng):
    return rng.choice([None, "x", -1, 0, 1, 1.5, [], {}, True, 2 ** 40, [value], {"v": value}, str(value),
                       value + 1 if isinstance(value, int) and not isinstance(value, bool) else "../x"])


def test_fuzz_manifest_and_index_files(index, tmp_path):
    """Wrong types and values anywhere in manifest.json, byte flips and zeroed runs in .bytes, .sa and
    docs.arrow: opening and matching raise IndexFormatError in one line naming a file, or give the
    same spans as the undamaged index."""
    clean = spans(index)
    manifest = json.loads((index / MANIFEST_NAME).read_text())
    paths = list(walk(manifest, list_items=3))
    rng = random.Random(2017)
    for trial in range(120):
        work = tmp_path / f"i{trial}"
        shutil.copytree(index, work)
        target = rng.choice(["manifest", "manifest", "shard-00000.bytes", "shard-00000.sa", "shard-00000.docs.arrow"])
        if target == "manifest":
            p = rng.choice(paths)
            (work / MANIFEST_NAME).write_text(json.dumps(put(manifest, p, mutate(manifest, rng) if not p else
                                                             mutate(eval_path(manifest, p), rng))))
        else:
            data = bytearray((work / target).read_bytes())
            if trial % 2:
                for _ in range(rng.randint(1, 5)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                at = rng.randrange(len(data))
                data[at:at + 16] = bytes(len(data[at:at + 16]))
            if data == (index / target).read_bytes():
                continue
            (work / target).write_bytes(bytes(data))
        try:
            got = spans(work)
        except IndexFormatError as exc:
            assert "\n" not in str(exc) and str(work) in str(exc), str(exc)
            continue
        assert got == clean, (trial, target)


def eval_path(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def test_old_index_with_misordered_suffix_array_is_one_line_not_other_spans(index, tmp_path):
    """An index without block checksums (nothing compares the .sa before matching) whose suffix array
    has two sampled entries swapped: the matcher's prefix sample (every 256th suffix) finds them out
    of order and stops with one line naming the .sa file instead of searching from wrong bounds."""
    import numpy as np

    m = json.loads((index / MANIFEST_NAME).read_text())
    for f in m["shards"][0]["files"].values():
        f.pop("blocks", None)
    (index / MANIFEST_NAME).write_text(json.dumps(m))
    sa = np.fromfile(index / "shard-00000.sa", dtype="<u4")
    assert len(sa) > 2 * 256
    sa[[256, 512]] = sa[[512, 256]]
    sa.tofile(index / "shard-00000.sa")
    with pytest.raises(IndexFormatError) as err:
        spans(index)
    msg = str(err.value)
    assert "\n" not in msg and "shard-00000.sa" in msg and "out of order" in msg, msg
