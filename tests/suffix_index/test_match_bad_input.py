"""trawl match on hostile generations (issue 17): a completion or token_offsets column of the wrong
type, offsets outside the completion or decreasing, an --out naming a folder: one line each, never a
traceback and never spans computed from made-up token boundaries."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpora import ingest_records
from corpora.readers import Record
from repo import one_line_error, trawl
from suffix_index import SuffixIndex, build_index
from suffix_index.errors import MatchInputError
from suffix_index.matchfile import match_to_parquet, read_generations

TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"


@pytest.fixture()
def index(tmp_path):
    ingest_records([Record(source="s", text=TEXT)], tmp_path / "corpus")
    build_index(tmp_path / "corpus", tmp_path / "index")
    return tmp_path / "index"


def offsets(text: str) -> list[int]:
    out, pos = [], 0
    for w in text.split(" "):
        out.append(pos)
        pos += len(w) + 1
    return out


def gens(path, completion=None, token_offsets=None, request_id=None):
    comp = completion if completion is not None else pa.array([TEXT, "nothing here at all"])
    offs = token_offsets if token_offsets is not None else pa.array([offsets(TEXT), offsets("nothing here at all")],
                                                                    pa.list_(pa.int32()))
    rid = request_id if request_id is not None else pa.array(["a", "b"])
    pq.write_table(pa.table({"run_id": pa.array(["r", "r"]), "request_id": rid, "completion": comp,
                             "token_offsets": offs}), path)
    return path


def test_good_generations_match(index, tmp_path):
    with SuffixIndex.open(index) as idx:
        r = match_to_parquet(idx, gens(tmp_path / "g.parquet"), tmp_path / "m.parquet", min_tokens=5)
    assert r["spans"] == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"completion": pa.array([1, 2])}, "column 'completion' is int64, not a string"),
    ({"token_offsets": pa.array(["0 4", "0"])}, "column 'token_offsets' is string, not a list of integers"),
    ({"token_offsets": pa.array([["0"], ["0"]])}, "column 'token_offsets' is list<"),
    ({"request_id": pa.array([1, 2])}, "column 'request_id' is int64, not a string"),
    ({"token_offsets": pa.array([[0, 4, 500], [0]], pa.list_(pa.int32()))}, "row 0 (request a): token offset 500 "
                                                                             "lies outside its completion of"),
    ({"token_offsets": pa.array([[0, -3], [0]], pa.list_(pa.int32()))}, "token offset -3 lies outside"),
    ({"token_offsets": pa.array([[0], [0, 8, 5]], pa.list_(pa.int32()))}, "row 1 (request b): token offsets "
                                                                           "decrease (8 then 5 at token 2)"),
    ({"token_offsets": pa.array([[0, None], [0]], pa.list_(pa.int32()))}, "token offset -1 lies outside"),
])
def test_bad_columns_are_one_line(index, tmp_path, kwargs, message):
    g = gens(tmp_path / "g.parquet", **kwargs)
    with pytest.raises(MatchInputError, match="g.parquet: "):
        list(read_generations(g))
    r = trawl("match", g, "--index", index, "--out", tmp_path / "m.parquet", "--min-tokens", 3)
    one_line_error(r, message)
    assert not (tmp_path / "m.parquet").exists()


def test_equal_offsets_are_allowed(index, tmp_path):
    """Several tokens may share one multi-byte character's position (docs/CONTRACTS.md §3)."""
    offs = offsets(TEXT)
    offs = offs[:3] + [offs[3]] + offs[3:]
    g = gens(tmp_path / "g.parquet", token_offsets=pa.array([offs, [0]], pa.list_(pa.int32())))
    assert len(list(read_generations(g))) == 2


def test_out_naming_a_folder_or_below_a_file_is_one_line(index, tmp_path):
    g = gens(tmp_path / "g.parquet")
    (tmp_path / "folder").mkdir()
    one_line_error(trawl("match", g, "--index", index, "--out", tmp_path / "folder"), "is a folder")
    (tmp_path / "afile").write_text("x")
    one_line_error(trawl("match", g, "--index", index, "--out", tmp_path / "afile" / "m.parquet"), "is a file")
    run = tmp_path / "run"
    (run / "generations").mkdir(parents=True)
    gens(run / "generations" / "part-00000.parquet")
    (run / "matches.parquet").mkdir()
    one_line_error(trawl("match", run, "--index", index), "matches.parquet: is a folder")
    with SuffixIndex.open(index) as idx, pytest.raises(MatchInputError, match="is a folder"):
        match_to_parquet(idx, g, tmp_path / "folder")
