"""Matching and queries against brute force, on random and real text."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from corpora import ingest_records
from corpora.readers import Record
from suffix_index import SuffixIndex, build_index

# --------------------------------------------------------------------------- brute force


def brute_spans(docs: list[bytes], g: bytes, min_tokens=None, offsets=None, min_bytes=1):
    """All maximal spans (start, end) by definition, filtered like the matcher."""
    hay = b"\xff" + b"\xff".join(docs)
    n = len(g)
    ms = [0] * n
    for s in range(n):
        l = max(ms[s - 1] - 1, 0) if s else 0
        while s + l < n and g[s : s + l + 1] in hay and b"\xff" not in g[s : s + l + 1]:
            l += 1
        ms[s] = l
    out = []
    for s in range(n):
        if ms[s] == 0:
            continue
        if s and ms[s - 1] == ms[s] + 1:
            continue
        e = s + ms[s]
        if offsets is not None:
            ends = list(offsets[1:]) + [n]
            tok = sum(1 for o, en in zip(offsets, ends) if o >= s and en <= e)
            if tok < min_tokens:
                continue
        elif e - s < min_bytes:
            continue
        out.append((s, e))
    return out


def brute_count(docs: list[bytes], pat: bytes) -> int:
    return sum(len(re.findall(b"(?=" + re.escape(pat) + b")", d)) for d in docs)


def make_index(tmp_path: Path, docs: list[str], shard_bytes: int = 1 << 30, name="c") -> SuffixIndex:
    recs = [Record(source=f"doc{i}", text=t) for i, t in enumerate(docs)]
    ingest_records(recs, tmp_path / f"{name}-corpus", max_shard_bytes=shard_bytes, keep_duplicates=True)
    build_index(tmp_path / f"{name}-corpus", tmp_path / f"{name}-index")
    return SuffixIndex.open(tmp_path / f"{name}-index")


def check(idx: SuffixIndex, docs: list[str], gens: list[bytes], min_bytes=None, min_tokens=None, offsets=None):
    bdocs = [d.encode() for d in docs]
    if offsets is None:
        items = [(i, g, None) for i, g in enumerate(gens)]
        spans = idx.match(items, min_bytes=min_bytes, min_tokens=min_tokens or 50)
    else:
        items = [(i, g, o) for i, (g, o) in enumerate(zip(gens, offsets))]
        spans = idx.match(items, min_tokens=min_tokens)
    got = {}
    for s in spans:
        got.setdefault(s.key, []).append(s)
    # doc start positions per shard to check the reported occurrence
    for i, g in enumerate(gens):
        exp = brute_spans(bdocs, g, min_tokens=min_tokens, offsets=None if offsets is None else offsets[i],
                          min_bytes=min_bytes or 1)
        mine = sorted((s.start, s.end) for s in got.get(i, []))
        assert mine == exp, (i, g, mine, exp)
        for s in got.get(i, []):
            pat = g[s.start : s.end]
            assert s.occurrences == brute_count(bdocs, pat)
            # the reported occurrence really is one, and the first in corpus order
            text = bdocs[s.doc_id]
            assert text[s.doc_offset : s.doc_offset + len(pat)] == pat
            first_doc = next(j for j, d in enumerate(bdocs) if pat in d)
            assert s.doc_id == first_doc and s.doc_offset == bdocs[first_doc].find(pat)
    return spans


# --------------------------------------------------------------------------- random text

ALPHABETS = {
    "ab": "ab",
    "small": "abcd ",
    "multibyte": "aé€𝄞 b",
}


def rand_text(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize("alpha", list(ALPHABETS))
@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("backward", [None, 0, 1 << 40])
def test_random_text_matches_brute_force(tmp_path, alpha, shards, backward, monkeypatch):
    """``backward``: the most occurrences a span's extension reads backwards from (default; 0: never,
    always the search over starts; unbounded: always, whatever the count)."""
    if backward is not None:
        if shards == 1:
            pytest.skip("the two extension paths are compared over 3 shards (the harder case) only")
        import suffix_index.match

        monkeypatch.setattr(suffix_index.match, "BACKWARD_MAX_OCCURRENCES", backward)
    rng = random.Random(hash((alpha, shards)) & 0xFFFF)
    A = ALPHABETS[alpha]
    docs = [rand_text(rng, A, rng.randint(1, 400)) for _ in range(40)]
    total = sum(len(d.encode()) for d in docs)
    idx = make_index(tmp_path, docs, shard_bytes=total // shards + 1)
    assert (len(idx.shards) > 1) == (shards > 1)
    gens = []
    for _ in range(30):
        parts = []
        for _ in range(rng.randint(0, 4)):
            if rng.random() < 0.5:
                d = rng.choice(docs)
                a = rng.randint(0, len(d))
                parts.append(d[a : a + rng.randint(0, 120)])
            else:
                parts.append(rand_text(rng, A, rng.randint(0, 60)))
        gens.append("".join(parts).encode())
    gens.append(b"")
    gens.append(docs[0].encode())  # a whole document: span at both generation edges
    for mb in (1, 5, 12, 30):
        check(idx, docs, gens, min_bytes=mb)
    idx.close()


def test_token_threshold_matches_brute_force(tmp_path):
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "δέλτα", "€uro", "x", "longerword", "\n"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) for _ in range(30)]
    idx = make_index(tmp_path, docs, shard_bytes=3000)
    assert len(idx.shards) > 1
    gens, offsets = [], []
    for _ in range(40):
        d = rng.choice(docs)
        a = rng.randint(0, len(d))
        text = (" ".join(rng.choice(words) for _ in range(rng.randint(0, 10))) + d[a : a + rng.randint(0, 300)]
                + " ".join(rng.choice(words) for _ in range(rng.randint(0, 10))))
        g = text.encode()
        # tokens: a word with its leading space; byte offsets
        offs = [m.start() for m in re.finditer(rb"\s*\S+|\s+$", g)] or ([0] if g else [])
        gens.append(g)
        offsets.append(offs)
    for k in (1, 3, 8):
        check(idx, docs, gens, min_tokens=k, offsets=offsets)
    idx.close()


def test_repeated_text_counts_every_occurrence(tmp_path):
    unit = "the same sentence again and again. "
    docs = [unit * 50, "prefix " + unit * 3 + " suffix", unit]
    idx = make_index(tmp_path, docs)
    g = ("novel start " + unit * 4 + " novel end").encode()
    spans = check(idx, docs, [g], min_bytes=20)
    assert spans and spans[0].occurrences == brute_count([d.encode() for d in docs], g[spans[0].start : spans[0].end])
    assert idx.count(unit) == 50 + 3 + 1
    idx.close()


def test_no_match_across_documents(tmp_path):
    docs = ["hello world", "foo bar baz"]
    idx = make_index(tmp_path, docs)
    assert idx.count("worldfoo") == 0
    spans = idx.match([("k", b"hello worldfoo bar baz", None)], min_bytes=3)
    assert [(s.start, s.end) for s in spans] == [(0, 11), (11, 22)]
    # a 0xFF byte in a generation never matches the separator
    spans = idx.match([("k", b"world\xfffoo", None)], min_bytes=1)
    assert [(s.start, s.end) for s in spans] == [(0, 5), (6, 9)]
    idx.close()


# --------------------------------------------------------------------------- real text


def test_real_text_matches_brute_force(tmp_path):
    import json as _json
    import textwrap

    files = sorted(Path(_json.__file__).parent.glob("*.py")) + [Path(textwrap.__file__)]
    docs = [p.read_text() for p in files]
    idx = make_index(tmp_path, docs, shard_bytes=sum(len(d) for d in docs) // 2 + 10)
    rng = random.Random(3)
    gens = []
    for _ in range(12):
        d = rng.choice(docs)
        a = rng.randint(0, len(d) - 1)
        gens.append(("Some novel words here; " + d[a : a + rng.randint(50, 400)] + " and a novel tail.").encode())
    check(idx, docs, gens, min_bytes=40)
    idx.close()


# --------------------------------------------------------------------------- queries


def test_count_find_document(tmp_path):
    docs = ["abcabc", "xabcx", "ü ü"]
    idx = make_index(tmp_path, docs, shard_bytes=8)
    assert len(idx.shards) == 3
    assert idx.count("abc") == 3
    assert idx.count("ü") == 2
    assert idx.count("zzz") == 0
    occ = idx.find("abc")
    assert [(o.doc_id, o.doc_offset) for o in occ] == [(0, 0), (0, 3), (1, 1)]
    assert [o.shard for o in occ] == [0, 0, 1]
    assert idx.find("abc", limit=1)[0].doc_offset == 0
    assert idx.document(2).text == "ü ü"
    assert idx.document(1).source == "doc1"
    with pytest.raises(KeyError):
        idx.document(99)
    idx.close()


def test_empty_inputs(tmp_path):
    idx = make_index(tmp_path, ["some text"])
    assert idx.match([]) == []
    assert idx.match([("e", b"", None), ("t", b"", [])], min_bytes=1, min_tokens=1) == []
    assert idx.match([("short", b"so", [0, 1])], min_tokens=5) == []
    idx.close()
