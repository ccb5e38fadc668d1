"""The batched binary search (suffix_index/search.py) against brute force: word-at-a-time compares,
the sampled prefix table (every stride), suffixes near the end, zero bytes, short patterns."""
from __future__ import annotations

import bisect
import random

import numpy as np
import pytest

from suffix_index.errors import IndexFormatError
from suffix_index.search import (PrefixSample, backward_match, lcp_compare, lcp_compare_words, sa_occurs, sa_range, sa_search,
                                 word_view)


def naive_sa(t: bytes) -> np.ndarray:
    return np.array(sorted(range(len(t)), key=lambda i: t[i:]), dtype=np.uint32)


def lcp(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def expected(t: bytes, sa: np.ndarray, pat: bytes):
    """(lower rank, upper rank, lcp before lower, lcp at lower) by definition."""
    sufs = [t[int(i):] for i in sa]
    lo = bisect.bisect_left(sufs, pat)
    hi = lo
    while hi < len(sufs) and sufs[hi].startswith(pat):
        hi += 1
    before = lcp(sufs[lo - 1], pat) if lo > 0 else 0
    at = lcp(sufs[lo], pat) if lo < len(sufs) else 0
    return lo, hi, before, at


def patterns(rng: random.Random, t: bytes, alphabet: bytes, k: int) -> list[bytes]:
    out = [b"", t, t[-1:], t[-3:], t[-7:], t[-9:] + b"\0", t[-5:] + b"\0\0\0\0\0"]
    for _ in range(k):
        if rng.random() < 0.6:
            a = rng.randrange(len(t))
            p = t[a:a + rng.randint(1, 40)]
            if rng.random() < 0.5:
                p += bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        else:
            p = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        out.append(p)
    return out


def pack(pats: list[bytes]):
    xs, xl, parts, o = [], [], [], 0
    for p in pats:
        xs.append(o)
        xl.append(len(p))
        parts.append(p)
        o += len(p)
    return (np.frombuffer(b"".join(parts) + b"\0" * 8, dtype=np.uint8),
            np.array(xs, dtype=np.int64), np.array(xl, dtype=np.int64))


@pytest.mark.parametrize("alphabet", [b"ab", b"\0a\xff", bytes(range(256)), b"abc "])
@pytest.mark.parametrize("n", [1, 5, 9, 300])
def test_search_with_and_without_sample_matches_brute_force(alphabet, n):
    rng = random.Random(n * 1000 + len(alphabet))
    t = bytes(rng.choice(alphabet) for _ in range(n))
    if n == 300 and len(alphabet) <= 3:
        t = t[:100] + t[:100] + t[200:]   # long repeats: compares past one word
    text = np.frombuffer(t, dtype=np.uint8)
    sa = naive_sa(t)
    pats = patterns(rng, t, alphabet, 60)
    G, xs, xl = pack(pats)
    want = [expected(t, sa, p) for p in pats]
    for sample in [None] + [PrefixSample(text, sa, s) for s in (1, 2, 3, 7, 64)]:
        lo, before, at = sa_search(text, sa, G, xs, xl, sample=sample)
        hi, _, _ = sa_search(text, sa, G, xs, xl, upper=True, sample=sample)
        got = list(zip(lo.tolist(), hi.tolist(), before.tolist(), at.tolist()))
        assert got == want, (sample and sample.stride, [(p, g, w) for p, g, w in zip(pats, got, want) if g != w][:3])
        r = sa_range(text, sa, G, xs, xl, sample=sample)
        assert list(zip(*[a.tolist() for a in r])) == [w[:2] for w in want]
        assert sa_occurs(text, sa, G, xs, xl, sample=sample).tolist() == [w[1] > w[0] for w in want]


def test_large_text_sample_and_tail_suffixes():
    """Past 64 KiB the sample reads words from the mapped text itself; the last 7 suffixes are padded."""
    rng = random.Random(7)
    chunk = bytes(rng.choice(b"ab\0") for _ in range(3000))
    t = (chunk * 25)[:70001] + b"ab\0"
    text = np.frombuffer(bytearray(t), dtype=np.uint8)
    from pydivsufsort import divsufsort

    sa = divsufsort(text).view(np.uint32)
    pats = [t[-k:] for k in range(1, 12)] + [t[-k:] + b"\0" * 5 for k in range(1, 9)]
    pats += [t[a:a + rng.randint(1, 3500)] for a in (rng.randrange(len(t)) for _ in range(40))]
    G, xs, xl = pack(pats)
    base_lo, base_b, base_a = sa_search(text, sa, G, xs, xl)
    base_hi, _, _ = sa_search(text, sa, G, xs, xl, upper=True)
    for stride in (1, 5, 256):
        s = PrefixSample(text, sa, stride)
        lo, b, a = sa_search(text, sa, G, xs, xl, sample=s)
        hi, _, _ = sa_search(text, sa, G, xs, xl, upper=True, sample=s)
        assert lo.tolist() == base_lo.tolist() and hi.tolist() == base_hi.tolist()
        assert b.tolist() == base_b.tolist() and a.tolist() == base_a.tolist()
    # and the baseline itself by definition, for the tail patterns
    for k, p in enumerate(pats[:19]):
        cnt = sum(1 for i in range(len(t)) if t.startswith(p, i))
        assert int(base_hi[k] - base_lo[k]) == cnt, p


def test_word_compare_equals_byte_compare():
    rng = random.Random(3)
    t = bytes(rng.choice(b"ab\0c") for _ in range(5000))
    text = np.frombuffer(t, dtype=np.uint8)
    pats = [t[a:a + rng.randint(0, 300)] + bytes(rng.choice(b"abc") for _ in range(rng.randint(0, 4)))
            for a in (rng.randrange(len(t)) for _ in range(400))]
    G, xs, xl = pack(pats)
    pos = np.array([rng.randrange(len(t)) for _ in pats], dtype=np.int64)
    pos[:20] = len(t) - 1 - np.arange(20)   # suffixes that end within a word
    m = np.zeros(len(pats), dtype=np.int64)
    want = lcp_compare(text, G, pos, xs, xl, m)
    got = lcp_compare_words(text, word_view(text), G, word_view(G), pos, xs, xl, m)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tolist() == want[1].tolist()


def test_sample_of_a_misordered_suffix_array_is_an_error():
    t = b"banana bandana cabana" * 4
    text = np.frombuffer(t, dtype=np.uint8)
    sa = naive_sa(t)
    bad = sa.copy()
    bad[[0, len(bad) - 1]] = bad[[len(bad) - 1, 0]]
    with pytest.raises(IndexFormatError, match="out of order"):
        PrefixSample(text, bad, 1, name="x.sa")
    bad = sa.copy()
    bad[3] = len(t) + 5
    with pytest.raises(IndexFormatError, match="out of range"):
        PrefixSample(text, bad, 1, name="x.sa")


def test_backward_match_by_definition():
    rng = random.Random(11)
    t = bytes(rng.choice(b"ab\xff") for _ in range(3000))
    text = np.frombuffer(t, dtype=np.uint8)
    g = bytearray(rng.choice(b"ab") for _ in range(2000))
    rows = []
    for _ in range(300):
        p = rng.randrange(len(t) + 1)
        e = rng.randrange(8, len(g) + 1)
        k = rng.randint(0, 200)
        if rng.random() < 0.6:   # plant a backward match of some length
            n = min(rng.randint(0, 150), p, e - 8)
            g[e - n:e] = t[p - n:p]
        rows.append((p, e, k))
    rows += [(0, 50, 30), (3, 40, 30), (7, 40, 100), (9, 40, 100), (len(t), len(g), 500)]
    G = np.frombuffer(bytes(g), dtype=np.uint8)
    pos = np.array([r[0] for r in rows], dtype=np.int64)
    gend = np.array([r[1] for r in rows], dtype=np.int64)
    kmax = np.array([r[2] for r in rows], dtype=np.int64)
    got = backward_match(text, G, pos, gend, kmax).tolist()
    for (p, e, k), n in zip(rows, got):
        want = 0
        while want < k and p - want - 1 >= 0 and e - want - 1 >= 0 and t[p - want - 1] == g[e - want - 1]:
            want += 1
        assert n == want, (p, e, k, n, want)
