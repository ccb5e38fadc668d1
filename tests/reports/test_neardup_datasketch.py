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


@pytest.mark.parametrize("chunk_pairs", [3, 131_072])
def test_bucket_pairs_are_the_pairs_of_equal_bands(chunk_pairs, monkeypatch):
    """Every pair of texts whose band agrees comes exactly once per band (i > j), blocks of any
    size: signatures with few distinct values, so that buckets of 2, several and many texts occur,
    bands without any shared bucket, and one signature alone."""
    monkeypatch.setattr(neardup, "CHUNK_PAIRS", chunk_pairs)
    rng = np.random.default_rng(5)
    for n, values in ((300, 2), (300, 5), (200, 1 << 30), (1, 3)):
        sig = rng.integers(0, values, (n, 12)).astype(np.uint32)
        sig[n // 2:, 4:8] = sig[0, 4:8]                      # one band shared by half of the texts
        got = [(k, int(i), int(j)) for k, ii, jj in neardup._bucket_pairs(sig, 3, 4) for i, j in zip(ii, jj)]
        want = [(k, i, j) for k in range(3) for i in range(n) for j in range(i)
                if (sig[i, 4 * k:4 * k + 4] == sig[j, 4 * k:4 * k + 4]).all()]
        assert sorted(got) == want
        assert len(got) == len(set(got))


def test_crc32_many_equals_zlib():
    """The table-driven CRC-32 on arrays gives zlib.crc32 of every slice: random bytes, UTF-8 of
    non-ASCII text, every length 0-40 (each remainder mod 4), slices at every alignment, the buffer's end."""
    rng = random.Random(7)
    for trial in range(30):
        if trial % 2:
            buf = "".join(rng.choice("aé日\x00 ß😀\n") for _ in range(rng.randint(1, 400))).encode("utf-8")
        else:
            buf = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        lens = [rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, rng.randint(0, 40)]) for _ in range(rng.randint(1, 200))]
        lens = [min(n, len(buf)) for n in lens]
        starts = [rng.randint(0, len(buf) - n) for n in lens]
        starts[0], lens[0] = len(buf) - lens[0], lens[0]          # a slice ending at the buffer's end
        got = neardup.crc32_many(buf, np.array(starts), np.array(lens))
        assert got.dtype == np.uint32
        assert got.tolist() == [zlib.crc32(buf[s:s + n]) for s, n in zip(starts, lens)]
    assert neardup.crc32_many(b"", np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
    # a slice of >= 2^15 bytes among short ones (the rows ordered by the general sort, not as int16)
    buf = bytes(rng.getrandbits(8) for _ in range(40_000))
    starts, lens = np.array([0, 5, 3, 39_990, 1]), np.array([40_000, 0, 32_768, 10, 32_767])
    assert neardup.crc32_many(buf, starts, lens).tolist() == [zlib.crc32(buf[s:s + n]) for s, n in zip(starts, lens)]


def _adversarial_ascii(seed):
    rng = random.Random(seed)
    pieces = ["w1", "A_b", "x", "__", "9", "ABC", " ", "  ", ", ", "\n", "\t", "\x00", "-", "...", "é"[:0]]
    texts = ["", " ", "a b c d", "a b c d e", " a b c d e ", "\x00a\x00b\x00c\x00d\x00e\x00", "A,B;C.D!E?F",
             "one two three four five six", "_ _ _ _ _", "x" * 50, "   lead trail   words here now   "]
    for _ in range(300):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))))
    return texts


def test_ascii_shingles_equal_the_list_path():
    """Word 5-grams found on arrays equal _shingle_list's for every ASCII text of >= 5 words, in
    order; texts of fewer words are left to _shingle_list (mask)."""
    texts = _adversarial_ascii(3)
    buf, st, ln, per, ok = neardup._ascii_shingles(texts)
    got = [buf[s:s + n] for s, n in zip(st.tolist(), ln.tolist())]
    want = []
    for t, k in zip(texts, ok.tolist()):
        words = neardup._WORD_BYTES.findall(t.lower().encode("ascii"))
        assert k == (len(words) >= 5)
        if k:
            want.extend(neardup._shingle_list(t))
    assert got == want
    assert per.tolist() == [len(neardup._shingle_list(t)) for t, k in zip(texts, ok.tolist()) if k]


@pytest.mark.parametrize("chunk", [7, 65_536])
def test_signatures_equal_one_crc_per_shingle(chunk, monkeypatch):
    """Signatures on arrays (ASCII and non-ASCII texts mixed, texts of < 5 words, empty texts, chunk
    boundaries anywhere) equal the straightforward MinHash: zlib.crc32 per shingle, premixed, min per
    permutation."""
    monkeypatch.setattr(neardup, "CHUNK_SHINGLES", chunk)
    texts = _adversarial_ascii(4) + _texts(5)[:120] + ["Ünïcode words here and there", "日本語のテキスト", "é"]
    random.Random(1).shuffle(texts)
    a, b = neardup.permutations()
    want = np.empty((len(texts), 128), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for i, t in enumerate(texts):
            h = neardup._fmix32(np.array([zlib.crc32(s) for s in neardup._shingle_list(t)], dtype=np.uint32))
            want[i] = (a[:, None] * h[None, :] + b[:, None]).min(axis=1)
    assert np.array_equal(neardup.signatures(texts), want)
