"""The array path of reports.windows against the straightforward one-generation-at-a-time
computation (bisect on the offsets, one hash per window in plain Python)."""
from __future__ import annotations

import bisect
import random

import numpy as np
import pytest

from reports import windows


def _thue_morse(n: int) -> bytes:
    return bytes(ord("a") + bin(i).count("1") % 2 for i in range(n))


def _buffers(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = [b"", b"\x00", b"\x00\x00", b"a", bytes(300), b"ab" * 2000, "\u00e9t\u00e9 \u2603 \U0001f600".encode() * 40,
           _thue_morse(4096), bytes(255 - (i % 256) for i in range(3000))]
    out += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 700))) for _ in range(30)]
    out += [bytes(rng.choice(b"ab ") for _ in range(rng.randrange(0, 400))) for _ in range(30)]
    return out


@pytest.fixture
def small_block(monkeypatch):
    """BLOCK made tiny so that the block-wise prefix and the row runs are exercised."""
    windows._powers.cache_clear()
    monkeypatch.setattr(windows, "BLOCK", 64)
    yield
    windows._powers.cache_clear()


def _check_ranges(data: bytes, rng: random.Random, n: int = 400):
    arr = np.frombuffer(data, dtype=np.uint8)
    st = [rng.randrange(len(data) + 1) for _ in range(n)]
    en = [rng.randrange(s, len(data) + 1) for s in st]
    st += [0, len(data), 0]
    en += [len(data), len(data), 0]
    got = windows.hash_ranges(arr, np.array(st), np.array(en)).tolist()
    assert got == [windows.window_hash(data[s:e]) for s, e in zip(st, en)]


@pytest.mark.parametrize("block", ["default", "small"])
def test_hash_ranges_equal_the_plain_hash(block, request):
    if block == "small":
        request.getfixturevalue("small_block")
    rng = random.Random(1)
    for data in _buffers(2):
        _check_ranges(data, rng, 60)
    _check_ranges(b"".join(_buffers(3)), rng)


def test_distinct_windows_hash_apart():
    """No collision among the distinct windows of adversarial texts: Thue-Morse (a polynomial hash
    modulo 2^64 would collide there), long runs of one byte, trailing NUL bytes, non-ASCII."""
    texts = [_thue_morse(8192), bytes(5000), b"ab" * 3000, "\u00e9\u00e8".encode() * 2000,
             bytes(random.Random(4).randrange(256) for _ in range(5000))]
    seen: dict = {}
    for data in texts:
        arr = np.frombuffer(data, dtype=np.uint8)
        for length in (0, 1, 2, 7, 64, 1024, 2048, 4096):
            st = np.arange(0, max(len(data) - length + 1, 0), 3)
            for s, h in zip(st.tolist(), windows.hash_ranges(arr, st, st + length).tolist()):
                seen.setdefault(h, set()).add(data[s:s + length])
    assert all(len(v) == 1 for v in seen.values())
    assert windows.window_hash(b"ab") != windows.window_hash(b"ab\x00") != windows.window_hash(b"\x00ab")


def _reference(comp: bytes, offs: list | None, spans: list[tuple[int, int]], W: int):
    """The generation's memorized tokens, its distinct window hashes and per span its covered
    token range and window hashes, one window at a time (the report's former loop)."""
    if not offs:
        return None
    o = np.clip(np.asarray(offs, dtype=np.int64), 0, len(comp))
    offs = np.maximum.accumulate(o).tolist()
    ends = offs[1:] + [len(comp)]
    covered, per_span = [], []
    for s, e in spans:
        a = bisect.bisect_left(offs, s)
        b = bisect.bisect_right(ends, e) - 1
        if b - a + 1 < 1:
            per_span.append(((a, a), []))
            continue
        covered.append((a, b + 1))
        per_span.append(((a, b + 1), [windows.window_hash(comp[offs[k]:ends[k + W - 1]])
                                      for k in range(a, b - W + 2)]))
    tokens = len({t for a, b in covered for t in range(a, b)})
    return tokens, per_span


def _random_generation(rng: random.Random):
    n = rng.randrange(0, 120)
    pieces = [rng.choice([b"a", b"bb", b" ", b"\xc3\xa9", b"", b"xyz", b"\x00"]) for _ in range(n)]
    comp = b"".join(pieces)
    offs, pos = [], 0
    for p in pieces:
        offs.append(pos)
        pos += len(p)
    kind = rng.random()
    if kind < 0.15:                                     # damaged offsets: out of range, decreasing
        offs = [rng.randrange(-5, len(comp) + 10) for _ in offs]
    elif kind < 0.2:
        offs = []
    spans = []
    for _ in range(rng.randrange(1, 5)):
        s = rng.randrange(-3, len(comp) + 3)
        spans.append((s, rng.randrange(s - 2, len(comp) + 4)))
    if rng.random() < 0.2:
        spans.append((0, len(comp)))
    return comp, offs, spans


@pytest.mark.parametrize("W", [1, 3, 10])
@pytest.mark.parametrize("block", ["default", "small"])
def test_row_windows_equal_the_loop(W, block, request):
    if block == "small":
        request.getfixturevalue("small_block")
    rng = random.Random(W)
    gens = [_random_generation(rng) for _ in range(300)]
    rows = [j for j, g in enumerate(gens) if g[1]]
    comps = [g[0] for g in gens]
    data = np.frombuffer(b"".join(comps), dtype=np.uint8)
    cstart = np.concatenate([[0], np.cumsum([len(c) for c in comps])]).astype(np.int64)
    vals = np.array([o for j in rows for o in gens[j][1]], dtype=np.int64)
    rstart = np.concatenate([[0], np.cumsum([len(gens[j][1]) for j in rows])]).astype(np.int64)
    span_row = np.array([r for r, j in enumerate(rows) for _ in gens[j][2]], dtype=np.int64)
    ss = np.array([s for j in rows for s, _e in gens[j][2]], dtype=np.int64)
    se = np.array([e for j in rows for _s, e in gens[j][2]], dtype=np.int64)
    _o, _e, a, b, nw, ws, we = windows.row_windows(vals, rstart, np.array([len(comps[j]) for j in rows]), span_row,
                                                   ss, se, W)
    rows_arr = np.array(rows, dtype=np.int64)
    hashes = windows.hash_windows(data, cstart, np.repeat(rows_arr[span_row], nw), ws, we).tolist()
    assert windows.hash_span_windows(data, cstart, rows_arr[span_row], nw, ws, we).tolist() == hashes
    tokens = windows.covered_tokens(span_row, a, b, len(rows)).tolist()
    k = w = 0
    for r, j in enumerate(rows):
        want_tokens, per_span = _reference(*gens[j], W)
        assert tokens[r] == want_tokens
        for trange, hs in per_span:
            assert (int(a[k]), int(b[k])) == trange
            assert hashes[w:w + int(nw[k])] == hs
            w += int(nw[k])
            k += 1
    assert w == len(hashes) > 0


@pytest.mark.parametrize("block", ["default", "small"])
def test_span_windows_hash_as_their_rows(block, request):
    """hash_span_windows (only the bytes under some window, laid end to end) equals hash_windows
    over whole rows: spans without windows among others, overlapping spans (where packing saves
    nothing, so whole rows are hashed), empty windows, rows of every length, the buffer's last byte."""
    if block == "small":
        request.getfixturevalue("small_block")
    rng = random.Random(7)
    for trial in range(60):
        comps = [bytes(rng.choice(b"ab\x00\xff ") for _ in range(rng.randrange(0, 300))) for _ in range(rng.randrange(1, 8))]
        data = np.frombuffer(b"".join(comps), dtype=np.uint8)
        cstart = np.concatenate([[0], np.cumsum([len(c) for c in comps])]).astype(np.int64)
        span_row, nwin, ws, we = [], [], [], []
        for r, c in enumerate(comps):
            for _ in range(rng.randrange(0, 4) if trial % 5 else 2):
                s = rng.randrange(0, len(c) + 1) if trial % 5 else 0
                e = rng.randrange(s, len(c) + 1) if trial % 5 else len(c)
                k = rng.randrange(0, 6) if e > s or trial % 3 else 0
                starts = sorted(rng.randrange(s, e + 1) for _ in range(k))
                ends = sorted(rng.randrange(max(starts[-1], s) if starts else s, e + 1) for _ in range(k))
                ends = np.maximum(ends, starts).tolist() if k else []
                span_row.append(r)
                nwin.append(k)
                ws += starts
                we += ends
        args = (np.array(span_row, np.int64), np.array(nwin, np.int64), np.array(ws, np.int64), np.array(we, np.int64))
        want = windows.hash_windows(data, cstart, np.repeat(args[0], args[1]), args[2], args[3]).tolist()
        assert windows.hash_span_windows(data, cstart, *args).tolist() == want, trial
        assert want == [windows.window_hash(comps[r][a:b]) for r, a, b in
                        zip(np.repeat(args[0], args[1]).tolist(), ws, we)]


def _join_by_dict(table_ids, gen_ids):
    where = {r: i for i, r in enumerate(table_ids) if r is not None}
    pairs = [(where[r], j) for j, r in enumerate(gen_ids) if r is not None and r in where]
    return sorted(pairs)


@pytest.mark.parametrize("hashes", ["real", "colliding", "constant"])
def test_request_lookup_is_the_exact_join(hashes, monkeypatch):
    """Request ids found in the per-request table equal a dict join (nulls match nothing), also
    when the hashes collide between generation and table ids, or among the table's own ids."""
    import pyarrow as pa

    from reports import spans
    if hashes == "colliding":        # r<k> and r<k + 450> share a hash: false candidates to reject
        def folded(ids):
            return np.array([int(r[1:r.index("-")]) % 450 if r and r.startswith("r") and "-" in r else 999
                             for r in ids.to_pylist()], dtype=np.uint64)
        monkeypatch.setattr(spans, "_id_hashes", folded)
    elif hashes == "constant":
        monkeypatch.setattr(spans, "_id_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    rng = random.Random(3)
    table = [f"r{rng.randrange(400)}-\u00e9" if rng.random() > 0.05 else None for _ in range(300)]
    table = list(dict.fromkeys(table))                 # one row per id, as the per-request table
    lookup = spans.RequestLookup(pa.array(table, pa.string()))
    for _ in range(5):
        gen = [f"r{rng.randrange(500)}-\u00e9" if rng.random() > 0.1 else None for _ in range(200)] + ["", "r1"]
        rows, pos = lookup.find(pa.chunked_array([pa.array(gen[:50]), pa.array(gen[50:])]))
        assert sorted(zip(rows.tolist(), pos.tolist())) == _join_by_dict(table, gen)


def _id_hash_of(b: bytes) -> int:
    """spans._id_hashes' definition for one value, in plain Python integers."""
    from reports.windows import window_hash
    if len(b) > 16:
        return window_hash(b)
    M = (1 << 64) - 1
    w0, w1 = (int.from_bytes(b[k:k + 8].ljust(8, b"\0"), "little") for k in (0, 8))
    h = ((w0 ^ (len(b) * 0x9E3779B97F4A7C15 & M)) * 0xBF58476D1CE4E5B9) & M
    h ^= h >> 29
    h = ((h ^ w1) * 0x94D049BB133111EB) & M
    h ^= h >> 32
    h = (h * 0xD6E8FEB86659FD93) & M
    return h ^ (h >> 29)


def test_id_hashes_equal_the_plain_definition():
    """Request-id hashes read through the 8-byte view equal the definition value by value: every
    length 0-20 (short and long ids mixed in one column), non-ASCII, nulls (as empty), sliced
    columns, values at the buffer's end; equal ids hash equal in any column, these 2,000 all differ."""
    import pyarrow as pa

    from reports import spans
    rng = random.Random(12)
    alphabet = "0123456789abcdef\u00e9\u65e5"
    for trial in range(40):
        vals = [None if rng.random() < 0.05 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
                for _ in range(rng.randint(1, 60))]
        arr = pa.array(vals, pa.string())
        cut = rng.randint(0, len(vals) - 1) if trial % 2 else 0
        got = spans._id_hashes(arr.slice(cut)).tolist()
        assert got == [_id_hash_of((v or "").encode()) for v in vals[cut:]], trial
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(2000)]
    assert len(set(spans._id_hashes(pa.array(ids)).tolist())) == 2000
    # every id 16 bytes (the words read without a gather): the bytes starting at every alignment, 16-byte
    # ids holding non-ASCII characters, and a column with one shorter id or a null (the general path)
    for cut in range(9):
        vals = ids[:50] + ["\u00e9" * 8, "ab\u65e5" + "c" * 11] + ids[50:60]
        for extra in ([], ["short"], [None]):
            col = pa.array(["x" * cut] + vals + extra, pa.string()).slice(1)     # the bytes start at cut
            assert spans._id_hashes(col).tolist() == [_id_hash_of((v or "").encode()) for v in vals + extra]


@pytest.mark.parametrize("spread", ["real", "few_buckets", "full_buckets"])
def test_request_lookup_buckets_equal_the_binary_search(spread, monkeypatch):
    """The bucket table finds the rows the binary search over the sorted hashes finds: real ids
    (most buckets hold 0-2 hashes), hashes crowding into one bucket (the binary search is used),
    and buckets holding exactly MAX_BUCKET hashes, some ids absent between them."""
    import pyarrow as pa

    from reports import spans
    rng = random.Random(11)
    table = list(dict.fromkeys(f"{rng.getrandbits(64):016x}" for _ in range(3000)))
    if spread != "real":
        real = spans._id_hashes
        # every hash keeps its low bits; the top bits choose few buckets (adversarial for the table)
        fill = spans.RequestLookup.MAX_BUCKET + (1 if spread == "few_buckets" else 0)
        slot = {r: i // fill for i, r in enumerate(table)}
        shift = 64 - (2 * (len(table) + 1) - 1).bit_length()        # the table's bucket bits (ids and None)

        def crowded(ids):
            low = real(ids) & np.uint64((1 << shift) - 1)
            top = np.array([slot.get(r, rng.randrange(len(table))) if r is not None else 0
                            for r in ids.to_pylist()], dtype=np.uint64)
            return (top << np.uint64(shift)) | low
        monkeypatch.setattr(spans, "_id_hashes", crowded)
    lookup = spans.RequestLookup(pa.array(table + [None], pa.string()))
    assert (lookup.bucket_start is None) == (spread == "few_buckets")
    gen = [rng.choice(table) if rng.random() < 0.4 else f"{rng.getrandbits(64):016x}" for _ in range(5000)]
    gen += [None, "", table[0]]
    rows, pos = lookup.find(pa.array(gen, pa.string()))
    lookup.bucket_start = None                        # the binary search on the same table
    rows2, pos2 = lookup.find(pa.array(gen, pa.string()))
    assert rows.tolist() == rows2.tolist() and pos.tolist() == pos2.tolist()
    assert sorted(zip(rows.tolist(), pos.tolist())) == _join_by_dict(table + [None], gen)
    assert len(pos) > 1500
