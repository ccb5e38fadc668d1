"""reports on matches made by the real matcher (corpora -> suffix_index -> matches.parquet).

Skips while corpora / suffix_index are not built on this branch (each part lives on its own
branch until the lead merges them); on the merged tree it checks that the figures computed from
the real matcher's output equal the brute-force ones, and that the matcher's index is used to
list the documents holding each span.
"""
from __future__ import annotations

import random

import pytest

from reports import compute_metrics
from synthetic_runs import Corpus, Gen, token_offsets, write_run

corpora = pytest.importorskip("corpora")
suffix_index = pytest.importorskip("suffix_index")
if not (hasattr(corpora, "ingest_records") and hasattr(suffix_index, "build_index")):
    pytest.skip("corpora / suffix_index not built on this branch", allow_module_level=True)
from suffix_index.matchfile import match_to_parquet  # noqa: E402

W = 50


def _data():
    rng = random.Random(21)
    vocab = [" w%d" % i for i in range(300)] + [" caf\u00e9", " \u65e5\u672c"]
    docs_t = [[rng.choice(vocab) for _ in range(220)] for _ in range(4)]
    docs_t.append(docs_t[0][100:140] + [rng.choice(vocab) for _ in range(100)])     # overlap source
    docs_t.append([rng.choice(vocab) for _ in range(20)] + docs_t[1][30:110])        # duplicate passage
    docs = ["".join(d) for d in docs_t]
    fill = lambda n: [" z%d" % rng.randrange(400) for _ in range(n)]  # noqa: E731
    gens = [
        Gen(fill(20) + docs_t[0][0:80] + fill(20), "divergence", "poem", 0.01),
        Gen(fill(10) + docs_t[0][10:90] + fill(10), "divergence", "poem", 0.01),
        Gen(fill(10) + docs_t[0][80:140] + docs_t[4][40:100] + fill(5), "divergence", "company", 0.01),
        Gen(fill(10) + docs_t[1][30:100] + fill(10), "unconditional", "", 0.01),
        Gen(fill(10) + docs_t[2][0:30] + fill(40), "unconditional", "", 0.01),
        Gen(fill(80), "divergence", "work", 0.01),
    ]
    return docs, gens


def test_real_matcher_gives_brute_force_figures(tmp_path):
    from corpora import Record
    docs, gens = _data()
    corpus_dir, index_dir = tmp_path / "corpus", tmp_path / "index"
    corpora.ingest_records([Record(source=f"d{i}.txt", text=d) for i, d in enumerate(docs)], corpus_dir)
    suffix_index.build_index(corpus_dir, index_dir)
    ref_run = tmp_path / "ref"
    write_run(str(ref_run), Corpus(docs, [f"d{i}.txt" for i in range(len(docs))]), gens, min_tokens=10)
    real_run = tmp_path / "real"
    write_run(str(real_run), Corpus(docs), gens, min_tokens=10)
    idx = suffix_index.SuffixIndex.open(index_dir)
    try:
        match_to_parquet(idx, real_run, real_run / "matches.parquet", min_tokens=10)
    finally:
        getattr(idx, "close", lambda: None)()
    ref, real = compute_metrics(ref_run), compute_metrics(real_run)
    for k in ("memorized_generations", "memorized_tokens", "unique_memorized_windows", "unique_memorized_bytes",
              "longest_run_tokens", "spans_ge_10", "spans_ge_50", "generations_ge_20", "good_turing_new_probability"):
        assert real["metrics"][k] == ref["metrics"][k], k
    # brute force of the window figures
    blobs = [d.encode() for d in docs]
    wins, mem_tokens = set(), 0
    for g in gens:
        comp, offs = token_offsets(g.tokens)
        ends = offs[1:] + [len(comp)]
        mem = set()
        for i in range(len(offs) - W + 1):
            w = comp[offs[i]:ends[i + W - 1]]
            if any(w in b for b in blobs):
                wins.add(w)
                mem.update(range(i, i + W))
        mem_tokens += len(mem)
    assert real["metrics"]["unique_memorized_windows"] == len(wins)
    assert real["metrics"]["memorized_tokens"] == mem_tokens
    # the duplicated passage: the index lists both documents holding it
    assert real["parameters"]["documents_lookup"].startswith("index ")
    dup = [s for s in real["top_spans"] if s["occurrences"] >= 2]
    assert dup and {d["doc_id"] for d in dup[0]["documents"]} == {1, 5}
    assert dup[0]["documents_holding"] == 2
