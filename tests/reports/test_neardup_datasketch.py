"""reports.neardup computes datasketch's MinHash LSH clusters on arrays: same signatures, same
(bands, rows), same clusters as inserting each text into datasketch's index (the code the report
used before), on texts with many near-duplicates at several thresholds."""
import random
import zlib

import numpy as np
import pytest

from reports import neardup

datasketch = pytest.importorskip("datasketch")


def _texts(seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(300)] + ["Straße", "naïve", "日本語", "x_y"]
    texts = []
    for _ in range(150):
        base = [rng.choice(words) for _ in range(rng.randint(1, 90))]
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 4)):            # variants: a share of the words replaced
            c = list(base)
            for _ in range(rng.randint(0, len(c) // 2)):
                c[rng.randrange(len(c))] = rng.choice(words)
            texts.append(" ".join(c))
    texts += ["", "a", "abcd", "ABCDE", "hello there", "x y z w", "\ufffd\ufffd bad", "    ", ", ; : . !"]
    texts = list(dict.fromkeys(texts))
    rng.shuffle(texts)
    return texts


def _datasketch_clusters(texts, threshold):
    """The former implementation: datasketch objects, one insert and query per text."""
    from datasketch import MinHash, MinHashLSH
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    mhs = MinHash.bulk([neardup._shingles(t) for t in texts], num_perm=128, seed=1, hashfunc=zlib.crc32)
    for i, mh in enumerate(mhs):
        for j in lsh.query(mh):
            if np.count_nonzero(mh.hashvalues == mhs[j].hashvalues) >= threshold * 128:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
        lsh.insert(i, mh, check_duplication=False)
    return [find(i) for i in range(len(texts))], mhs


def test_signatures_params_and_clusters_equal_datasketchs():
    if int(datasketch.__version__.split(".")[0]) < 2:
        pytest.skip("datasketch < 2.0 uses the legacy permutation scheme")
    from datasketch.lsh import _optimal_param
    for t in (0.1, 0.3, 0.45, 0.5, 0.55, 0.7, 0.9):
        assert neardup.lsh_params(t) == _optimal_param(t, 128, 0.5, 0.5), t
    texts = _texts()
    for threshold in (0.3, 0.5, 0.8):
        labels, mhs = _datasketch_clusters(texts, threshold)
        got = neardup.cluster_texts(texts, threshold=threshold)
        assert got["labels"] == labels
        assert got["clusters"] == len(set(labels)) < len(texts)
    sig = neardup.signatures(texts)
    assert all(np.array_equal(sig[i], mh.hashvalues) for i, mh in enumerate(mhs))


def test_capped_clusters_first_texts_only():
    texts = _texts(1)
    full = neardup.cluster_texts(texts[:40])
    capped = neardup.cluster_texts(texts, max_texts=40)
    assert capped["labels"][:40] == full["labels"]
    assert capped["labels"][40:] == list(range(40, len(texts)))
    assert capped["summary"]["capped"] and capped["clusters"] == full["clusters"] + len(texts) - 40


def test_big_bucket_in_blocks(monkeypatch):
    """Buckets larger than a pair block are cut into blocks with the same result."""
    texts = _texts(2)
    want = neardup.cluster_texts(texts)["labels"]
    monkeypatch.setattr(neardup, "CHUNK_PAIRS", 3)
    monkeypatch.setattr(neardup, "CHUNK_SHINGLES", 7)
    assert neardup.cluster_texts(texts)["labels"] == want
