"""The report's batched paths give exactly what the one-at-a-time definitions give."""
from __future__ import annotations

import random

import numpy as np
import pytest

from reports import taxonomy


def _texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["1", "2", "3", "7", "10", "a", "b", "c", "Q", ",", ", ", " ", "\n", "yy", "zz", "x1", "-", ".",
              "1234567890123456789", "\u00e9t\u00e9", "\u0663", "\ue000", "\ue001", "_", "\t\t", "poem ",
              "\u2003", "\x1c", "\u200b", "\x85", "\xa0", "\u00bd", "\uff11"]
    texts = ["".join(rng.choice(pieces[:k]) for _ in range(rng.randint(0, 150))) for k in (4, 8, 12, len(pieces))
             for _ in range(250)]
    texts += ["".join(f"{rng.choice(pieces)}{i}" for i in range(rng.randint(3, 30))) for _ in range(100)]
    texts += [pre + ", ".join(str(3 * i + 1) for i in range(n)) + post for n in range(1, 12)
              for pre, post in (("", ""), ("x", " y"))]
    texts += ["poem " * k for k in range(8)] + ["", " ", "a", "1", "2016, 2017, 2018, 2019"]
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("batch_units", [1, 40, 700, 65_536])
def test_predictable_many_equals_one_at_a_time(batch_units, monkeypatch):
    texts = _texts(batch_units)
    want = np.array([taxonomy.is_predictable(t) for t in texts])
    monkeypatch.setattr(taxonomy, "BATCH_UNITS", batch_units)
    assert np.array_equal(taxonomy.predictable_many(texts), want)
    assert 0 < want.sum() < len(texts)                # both answers occur


def test_predictable_many_without_a_free_separator(monkeypatch):
    """When every separator character occurs in the batch, the texts are judged one at a time."""
    texts = _texts(3)[:60] + ["\ue000 1, 2, 3, 4, 5", "\ue001"]
    want = [taxonomy.is_predictable(t) for t in texts]
    monkeypatch.setattr(taxonomy, "_SEPARATORS", ["\ue000", "\ue001"])
    assert taxonomy.predictable_many(texts).tolist() == want


def test_predictable_many_text_arrow_cannot_hold():
    """A lone surrogate (not from a report, whose texts are decoded with U+FFFD, but from a caller):
    that batch is judged one text at a time."""
    texts = ["1, 2, 3, 4, 5, 6", "abc \ud800 def", "poem poem poem poem"]
    assert taxonomy.predictable_many(texts).tolist() == [taxonomy.is_predictable(t) for t in texts] == \
        [True, False, True]


def test_classify_many_equals_classify_both():
    rng = random.Random(7)
    texts = _texts(11)
    occ = [rng.choice([0, 1, 5, 6, 100, None]) for _ in texts]
    for rmin in (1, 6):
        assert taxonomy.classify_many(texts, occ, rmin) == [taxonomy.classify_both(t, o, rmin)
                                                            for t, o in zip(texts, occ)]


def test_repeated_draws_same_when_every_fingerprint_collides(tmp_path, monkeypatch):
    """Rows are compared in full only where their fingerprints agree; with every fingerprint equal
    (all rows compared in full) the section is the same, near-identical completions (one byte apart,
    same length: same fingerprint where the byte is not sampled) are told apart, and copies in
    other batches and parts are found."""
    import json as _json

    import pyarrow as pa

    import reports.metrics as rm
    from reports import compute_metrics, repeats
    from synthetic_runs import Corpus, Gen, write_run
    rng = random.Random(3)
    params = _json.dumps({"temperature": 1.0})

    def toks():
        return [" " + "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(3, 9)))
                for _ in range(80)]
    same, other = toks(), toks()
    near = list(same)
    near[40] = near[40][:-1] + ("b" if near[40][-1] != "b" else "c")         # one byte apart, same length
    gens = [Gen(t, "divergence", "poem", extra={}, request_id=rid, meta={"seed": s, "params": params})
            for t, rid, s in [(same, "a", 1), (other, "b", 2), (near, "c", 3), (same, "d", 4), (toks(), "e", 5),
                              (same, "f", 6), (near, "g", 7), ([], "h", 8), ([], "i", 9)]]
    run = tmp_path / "run"
    write_run(str(run), Corpus(["nothing here matches"]), gens, min_tokens=10, parts=2)
    monkeypatch.setattr(rm, "BATCH_ROWS", 2)
    want = compute_metrics(str(run))["repeated_draws"]
    assert (want["duplicate_rows"], want["duplicate_completions"]) == (4, 3)      # same x3, near x2, empty x2
    col = pa.array(["".join(same).encode(), "".join(near).encode(), None, b""], pa.binary())
    fp = repeats.fingerprints(col, np.arange(4))
    assert fp[2] == fp[3] and fp[0] != fp[2]
    monkeypatch.setattr(repeats, "fingerprints", lambda col, rows: np.zeros(len(rows), np.uint64))
    assert compute_metrics(str(run))["repeated_draws"] == want


def test_fingerprints_equal_for_equal_completions():
    import pyarrow as pa

    from reports.repeats import fingerprints
    rng = random.Random(9)
    vals = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 8, 9, 15, 16, 100]))) for _ in range(300)]
    vals += vals[:100]
    for typ in (pa.binary(), pa.large_binary()):
        arr = pa.array(vals, typ)
        fp = fingerprints(arr.slice(3), np.arange(len(vals) - 3))          # a sliced column too
        by_val: dict = {}
        for v, f in zip(vals[3:], fp.tolist()):
            assert by_val.setdefault(v, f) == f
        assert len(set(fp.tolist())) == len(set(vals[3:]))                     # and here all differ


def _diff(a, b, path="") -> list[str]:
    """Paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b), key=str) for p in
                (_diff(a[k], b[k], f"{path}.{k}") if k in a and k in b else [f"{path}.{k}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r:.80} != {b!r:.80}"]


def _assert_same_report(fast, slow) -> None:
    """Two compute_metrics results are the same report (the clock's fields aside)."""
    for m in (fast, slow):
        for k in ("generated_at", "elapsed_s", "timings"):
            m.pop(k)
    assert _diff(fast, slow) == []
    assert fast.memorized_texts == slow.memorized_texts


def _straightforward(monkeypatch):
    """Swap the batched paths for the one-at-a-time computations they replace."""
    import zlib

    from reports import neardup, repeats, taxonomy_figures, texts

    def cluster_texts(items, threshold=0.5, max_texts=200_000):      # datasketch, one text at a time
        from datasketch import MinHash, MinHashLSH
        n, m = len(items), min(len(items), max_texts)
        parent = list(range(n))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        mhs = MinHash.bulk([neardup._shingles(t) for t in items[:m]], num_perm=128, seed=1, hashfunc=zlib.crc32)
        for i, mh in enumerate(mhs):
            for j in lsh.query(mh):
                if np.count_nonzero(mh.hashvalues == mhs[j].hashvalues) >= threshold * 128:
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
            lsh.insert(i, mh, check_duplication=False)
        labels = [find(i) for i in range(n)]
        sizes = np.bincount(np.array(labels, dtype=np.int64), minlength=max(n, 1))
        summary = {"distinct_texts": n, "clusters": len(set(labels)), "largest_cluster": int(sizes.max()) if n else 0,
                   "clusters_with_several_texts": int((sizes > 1).sum()) if n else 0, "threshold": threshold,
                   "num_perm": 128, "shingle": neardup.SHINGLE, "capped": n > max_texts, "clustered_texts": m}
        return {"clusters": len(set(labels)), "labels": labels, "num_perm": 128, "shingle": neardup.SHINGLE,
                "summary": summary}

    def window_freq(self, idx):                                        # distinct (window, generation) by lexsort
        lens = self.woff[idx + 1] - self.woff[idx]
        pairs = {(int(d), int(g)) for i, n in zip(idx.tolist(), lens.tolist())
                 for d, g in zip(self.digests[self.woff[i]:self.woff[i] + n].tolist(), [int(self.gen[i])] * n)}
        per: dict = {}
        for d, _g in pairs:
            per[d] = per.get(d, 0) + 1
        fk: dict = {}
        for k in per.values():
            fk[k] = fk.get(k, 0) + 1
        return dict(sorted(fk.items()))

    monkeypatch.setattr(neardup, "cluster_texts", cluster_texts)
    monkeypatch.setattr(texts.taxonomy, "classify_many",
                        lambda ts, occ, rmin: [taxonomy.classify_both(t, o, rmin) for t, o in zip(ts, occ)])
    monkeypatch.setattr(repeats, "fingerprints", lambda col, rows: np.zeros(len(rows), np.uint64))
    monkeypatch.setattr(taxonomy_figures.SpanPool, "_window_freq", window_freq)
    from reports import passes, spans
    monkeypatch.setattr(spans, "union_added", lambda *a: None)         # interval unions: the loop
    monkeypatch.setattr(passes, "union_added", lambda *a: None)
    monkeypatch.setattr(spans, "_id_hashes", lambda ids: np.zeros(len(ids), np.uint64))   # request ids: a dict
    import pyarrow.compute as pc

    from reports import windows
    monkeypatch.setattr(passes, "memorized_rows", lambda batch, pr, rows, mem_row, mi: np.nonzero(   # every id looked up
        pc.is_in(batch.column("request_id"), value_set=mi.memorized_request_ids()).to_numpy(zero_copy_only=False))[0])
    monkeypatch.setattr(windows, "hash_span_windows", lambda data, rs, srow, nw, ws, we:        # whole completions
                        windows.hash_windows(data, rs, np.repeat(srow, nw), ws, we))
    monkeypatch.setattr(spans.MatchIndex, "longest_row", lambda self: None)   # the longest span's text read again


def test_metrics_json_equals_the_straightforward_computation(tmp_path, monkeypatch):
    """On a planted run (known spans, near-duplicate passages of shared documents, 3 parts) every
    figure of metrics.json is the one the one-at-a-time computations give."""
    pytest.importorskip("datasketch")
    import json as _json

    from reports import compute_metrics
    from synthetic_runs import write_planted_run
    run = tmp_path / "run"
    info = write_planted_run(str(run), 2500, memorized_rate=0.06, short_rate=0.1, corpus_docs=40, part_rows=1000,
                             row_group_rows=300)
    fast = compute_metrics(str(run))
    _straightforward(monkeypatch)
    slow = compute_metrics(str(run))
    _assert_same_report(fast, slow)
    m = fast["metrics"]
    assert m["memorized_generations"] == info["planted_memorized"] > 100
    assert 0 < m["unique_memorized_documents"] < fast["near_duplicates"]["distinct_texts"]


def _ascii_texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["1", "22", "007", "10", "1234567890123456", "123456789012345", "a", "b", "Z", "ab", "Ab", "abcdefghij",
              "abcdefghijk", "abcdefghijkl", "_", ",", ", ", " ", "  ", "\n", "\t", "\x0b", "\x1c", "\x1f", "\x00",
              "\x7f", "-", ".", "poem ", "x1"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 120))) for _ in range(600)]
    texts += [", ".join(str(3 * i + 1) for i in range(n)) for n in range(1, 10)]
    texts += ["poem " * k for k in range(6)] + ["", " ", "a", "1", "a) b) c) d) e)", "\x1c\x1d\x1e\x1f"]
    rng.shuffle(texts)
    return texts


def _partition(ids: np.ndarray) -> list:
    """The partition of positions by equal id (the only thing the rules use of ids)."""
    return sorted(sorted(np.nonzero(ids == v)[0].tolist()) for v in np.unique(ids))


def test_ascii_units_equal_the_regex_units():
    """The NumPy tokenizer of ASCII batches gives the regular expression's units: the same kinds,
    values, lengths, and ids equal exactly where the units are equal."""
    texts = _ascii_texts(5)
    for lo in range(0, len(texts), 40):
        batch = texts[lo:lo + 40]
        fast = taxonomy._ascii_units(batch)
        slow = taxonomy._units_arrow(batch, "\ue000")
        for got, want in zip(fast[1:], slow[1:]):             # kind, vals, lens
            assert np.array_equal(got, want, equal_nan=True)
        keep = fast[1] != 3                                   # separators: the caller numbers them
        assert _partition(fast[0][keep]) == _partition(slow[0][keep])


@pytest.mark.parametrize("batch_units", [1, 40, 65_536])
def test_predictable_many_ascii_equals_one_at_a_time(batch_units, monkeypatch):
    texts = _ascii_texts(batch_units)
    want = np.array([taxonomy.is_predictable(t) for t in texts])
    monkeypatch.setattr(taxonomy, "BATCH_UNITS", batch_units)
    assert np.array_equal(taxonomy.predictable_many(texts), want)
    assert 0 < want.sum() < len(texts)


def test_union_added_equals_the_interval_loop():
    """union_added / union_total (arrays) against union_length (the loop over sorted intervals),
    with touching, nested, empty and negative intervals, single and compound keys; intervals that
    end before they start fall back to the loop."""
    from reports.spans import union_added, union_length, union_total
    rng = np.random.default_rng(4)
    for trial in range(60):
        n = int(rng.integers(0, 300))
        k1 = rng.integers(0, 1 + trial % 7, n)
        k2 = rng.integers(-2, 3, n)
        st = rng.integers(-50, 200, n) * (10 ** int(rng.integers(0, 12)))
        en = st + rng.integers(0, 40, n) * (1 if trial % 5 else 0)
        for keys in (k1, (k1, k2)):
            want = union_length(keys, st, en)
            assert union_total(keys, st, en) == sum(want.values())
            added = union_added(keys, st, en)
            got: dict = {}
            for i, a in enumerate(added.tolist()):
                key = (int(keys[0][i]), int(keys[1][i])) if isinstance(keys, tuple) else int(keys[i])
                got[key] = got.get(key, 0) + a
            assert got == {k: v for k, v in want.items()}
    st, en = np.array([0, 10]), np.array([5, 3])                  # damaged: an end before its start
    assert union_added(np.zeros(2, np.int64), st, en) is None
    assert union_total(np.zeros(2, np.int64), st, en) == sum(union_length(np.zeros(2, np.int64), st, en).values())


def test_occurs_twice_by_counting():
    from collections import Counter

    from reports.repeats import occurs_twice
    rng = np.random.default_rng(2)
    for n, hi in ((0, 5), (1, 5), (2, 1), (50, 10), (500, 10_000), (300, 2 ** 63), (5000, 100), (5000, 19_999),
                  (5000, 20_001), (64, 255), (64, 256)):
        for dtype in (np.int64, np.uint64):
            for base in (0, 2 ** 62, -(2 ** 62)):          # the counted range far from 0, negative for int64
                if base < 0 and dtype == np.uint64:
                    continue
                x = (rng.integers(0, hi, n, dtype=np.uint64).astype(np.int64) + base).astype(dtype)
                c = Counter(x.tolist())
                assert occurs_twice(x).tolist() == [c[v] >= 2 for v in x.tolist()]


def _coverable_before(ids, vals, valued, kind):
    """taxonomy._coverable_units as it was (index arrays per partner distance), the reference."""
    P = taxonomy.MAX_PERIOD
    m = len(ids)
    order = np.argsort(ids, kind="stable")
    same = (ids[order][1:] == ids[order][:-1]) & (np.diff(order) <= P)
    near = np.zeros(m, dtype=bool)
    near[order[1:][same]] = True
    near[order[:-1][same]] = True
    out = (near & ~valued) | (kind == 2)
    pos = np.nonzero(kind == 1)[0]
    if len(pos) < 3:
        return out
    dense = np.full(m + 2 * P + 1, np.nan)
    dense[pos] = vals[pos]
    v = vals[pos]
    hit = np.zeros(m + 2 * P + 1, dtype=bool)
    for j in range(1, len(pos)):
        d = pos[j:] - pos[:-j]
        close = d <= P
        if not close.any():
            break
        a = np.nonzero(close)[0]
        b = a + j
        third = pos[b] + d[a]
        with np.errstate(invalid="ignore"):
            ok = dense[third] - v[b] == v[b] - v[a]
        hit[pos[a[ok]]] = True
        hit[pos[b[ok]]] = True
        hit[third[ok]] = True
    return out | (hit[:m] & (kind == 1))


def test_coverable_units_equal_the_former_loop():
    """The number-triple bound by slices equals the former index-array loop on random units: dense
    and sparse numbers (partners up to and past MAX_PERIOD), small values (many constant steps),
    NaN values (numbers of > 15 digits), numbers near the end (third copy past the last unit)."""
    rng = np.random.default_rng(3)
    for trial in range(60):
        m = int(rng.integers(1, 1500))
        p_num = [0.05, 0.3, 0.9][trial % 3]
        kind = rng.choice([0, 1, 2, 4], size=m, p=[(1 - p_num) / 3, p_num, (1 - p_num) / 3, (1 - p_num) / 3])
        kind = kind.astype(np.int8)
        vals = np.where(kind == 1, rng.integers(0, [3, 50, 10**6][trial % 3 // 1 % 3], size=m).astype(float), np.nan)
        vals[(kind == 1) & (rng.random(m) < 0.05)] = np.nan
        # ids as the tokenizers give them: one for all numbers, one for all lone letters, one for all
        # whitespace runs, other units their own (a few distinct ones: many repeats within MAX_PERIOD)
        ids = np.select([kind == 1, kind == 2, kind == 4], [-1, -2, -3], rng.integers(0, 30, size=m))
        valued = (kind == 1) | (kind == 2)
        want = _coverable_before(ids, vals, valued, kind)
        got = taxonomy._coverable_units(ids, vals, valued, kind)
        assert np.array_equal(got[kind != 4], want[kind != 4]), trial     # whitespace runs: not judged
        assert not got[kind == 4].any()


def test_coverable_units_with_fifteen_digit_values_equal_the_former_loop():
    """Values up to 10^15 - 1 (the largest a number gets) stepping by constants, near misses by one,
    numbers dense and sparse: the comparison 2 v[b] - v[a] == v[c] stays exact there."""
    rng = np.random.default_rng(21)
    top = 10 ** 15 - 1
    found = 0
    for trial in range(40):
        m = int(rng.integers(3, 900))
        kind = np.where(rng.random(m) < [0.9, 0.4, 0.1][trial % 3], 1, 0).astype(np.int8)
        step = int(rng.integers(-10 ** 14, 10 ** 14))
        base = top - abs(step) * m if step > 0 else top
        vals = np.array([float(base + step * i + int(rng.integers(-1, 2)) * (rng.random() < 0.3))
                         for i in range(m)])
        vals = np.where(kind == 1, np.clip(vals, 0, top), np.nan)
        ids = np.where(kind == 1, -1, rng.integers(0, 30, size=m))
        valued = kind == 1
        want = _coverable_before(ids, vals, valued, kind)
        got = taxonomy._coverable_units(ids, vals, valued, kind)
        assert np.array_equal(got, want), trial
        found += bool(want.any()) + bool((~want & valued).any())
    assert found > 40                     # triples found, and numbers in none, in most trials


def test_coverable_units_of_tokenized_texts_equal_the_former_loop():
    """On the units of real ASCII batches (separators numbered as the callers do) the bound equals
    the former loop's for every unit that holds characters."""
    texts = _ascii_texts(8) + ["w%d " % (i * 7 % 13) * 30 for i in range(5)] + [", ".join(map(str, range(90)))]
    for lo in range(0, len(texts), 50):
        ids, kind, vals, lens = taxonomy._ascii_units(texts[lo:lo + 50])
        seps = np.nonzero(kind == 3)[0]
        ids[seps] = -4 * taxonomy.MAX_PERIOD - np.arange(len(seps))
        valued = (kind == 1) | (kind == 2)
        want = _coverable_before(ids, vals, valued, kind)
        got = taxonomy._coverable_units(ids, vals, valued, kind)
        assert np.array_equal(got[lens > 0], want[lens > 0])
        assert want[kind == 1].any() and not want[kind == 1].all()


def _fingerprint_of(b: bytes) -> int:
    """repeats.fingerprints' definition for one completion, in plain Python integers."""
    M = (1 << 64) - 1
    fp = len(b) * 0x9E3779B97F4A7C15 & M
    span = max(len(b) - 8, 0)
    for k in range(8):
        at = span * k // 7
        fp = ((fp ^ int.from_bytes(b[at:at + 8].ljust(8, b"\0"), "little")) * 0xBF58476D1CE4E5B9) & M
        fp ^= fp >> 31
    return fp


def test_fingerprints_equal_the_plain_definition():
    """Fingerprints read through the 8-byte view equal the definition computed row by row: short
    rows (bytes past their end are 0, whatever follows in the buffer), rows at the buffer's end,
    nulls (as empty), sliced columns, binary/large_binary/string, any subset of rows."""
    import pyarrow as pa

    from reports.repeats import fingerprints
    rng = random.Random(4)
    for trial in range(120):
        vals = [None if rng.random() < 0.1 else
                bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 7, 8, 9, 15, 16, 40])))
                for _ in range(rng.randint(1, 30))]
        typ = (pa.binary(), pa.large_binary())[trial % 2]
        arr = pa.array(vals, typ)
        if trial % 3 == 0:
            arr = pa.array([v.decode("latin-1") if v is not None else None for v in vals], pa.string())
            vals = [v.decode("latin-1").encode() if v is not None else None for v in vals]
        cut = rng.randint(0, len(vals) - 1) if trial % 4 == 0 else 0
        arr, vals = arr.slice(cut), vals[cut:]
        rows = np.array(sorted(rng.sample(range(len(vals)), rng.randint(0, len(vals)))), dtype=np.int64)
        got = fingerprints(arr, rows).tolist()
        assert got == [_fingerprint_of(vals[r] or b"") for r in rows.tolist()], trial


@pytest.mark.parametrize("lead", range(9))
def test_eight_bytes_from_aligned_words_equal_the_unaligned_reads(lead):
    """The 8-byte reads composed of two aligned words equal the reads through the unaligned view:
    buffers starting at every alignment, every offset including the first and last 16 bytes (the
    unaligned path), offsets past the end (zeros), and short buffers."""
    from reports.inputs import eight_bytes as _eight_bytes, eight_bytes_unaligned as _eight_bytes_unaligned
    rng = np.random.default_rng(lead)
    ar8 = np.arange(8)
    for n in (1, 7, 8, 9, 15, 16, 17, 23, 24, 40, 1000):      # (fingerprints never passes an empty buffer)
        raw = rng.integers(0, 256, n + 16, dtype=np.uint8)
        data = raw[lead % 8:lead % 8 + n]
        at = np.concatenate([np.arange(n + 3), rng.integers(0, max(n, 1), 200)]).astype(np.int64)
        got = _eight_bytes(data, at, ar8)
        assert got.dtype == np.uint64
        assert got.tolist() == _eight_bytes_unaligned(data, at, ar8).tolist(), n
        assert got.tolist() == [int.from_bytes(data[i:i + 8].tobytes().ljust(8, b"\0"), "little")
                                for i in at.tolist()], n


def test_fingerprint_candidates_stay_few_on_shared_prefixes_and_suffixes():
    """Adversarial completions for a sampled-bytes fingerprint: one long shared prefix and suffix,
    the same length, different only in a middle band. The fingerprint reads 8 bytes at 8 evenly
    spaced places (gaps of (len - 8) / 7 bytes), so a band of at least a gap's width always covers
    one: no false candidate among 600 such rows, only the true copies; equal completions always
    share a fingerprint, so a repeat can never be missed (the candidates are compared in full)."""
    import pyarrow as pa

    from reports.repeats import fingerprints, occurs_twice
    rng = random.Random(13)
    n_len = 1400
    for band_at in (0, 100, 600, n_len - 250):
        prefix = bytes(rng.randrange(97, 123) for _ in range(band_at))
        band = (n_len - 8) // 7 + 1
        suffix = bytes(rng.randrange(97, 123) for _ in range(n_len - band_at - band))
        rows = [prefix + bytes(rng.randrange(97, 123) for _ in range(band)) + suffix for _ in range(600)]
        rows += rows[:5]                                   # five true copies
        fp = fingerprints(pa.array(rows, pa.binary()), np.arange(len(rows)))
        cand = np.nonzero(occurs_twice(fp))[0]
        assert sorted(cand.tolist()) == [0, 1, 2, 3, 4, 600, 601, 602, 603, 604], band_at


def test_params_and_extra_parsed_once_per_distinct_value():
    """Greedy mask and n_choice computed per distinct params/extra string equal the per-row
    extraction on every row (repeated values, absent keys, odd spacing, invalid UTF-8, empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reports import repeats
    rng = random.Random(6)
    pool = [b"{}", b'{"temperature": 0}', b'{"temperature":1.0,"top_k": 1}', b'{"top_k" :40, "temperature": 0.7}',
            b'{"temperature": -0.0}', b"\xff\xfe", b"", b'{"n_choice": 3}',
            b'{"diverged": true, "n_choice":12}', b'{"n_choice": "x"}']
    for trial in range(20):
        arr = pa.array([rng.choice(pool) for _ in range(rng.randint(0, 60))], pa.binary())
        got = pc.extract_regex(arr, r'"temperature"\s*:\s*(?P<v>-?[0-9.eE+]+)')
        t = pc.cast(pc.struct_field(got, "v"), pa.float64()).to_numpy(zero_copy_only=False)
        got = pc.extract_regex(arr, r'"top_k"\s*:\s*(?P<v>-?[0-9.eE+]+)')
        k = pc.cast(pc.struct_field(got, "v"), pa.float64()).to_numpy(zero_copy_only=False)
        assert repeats._sampled_mask(arr).tolist() == (~((t == 0) | (k == 1))).tolist()
        got = pc.extract_regex(arr, r'"n_choice"\s*:\s*(?P<k>[0-9]+)')
        nch = pc.fill_null(pc.cast(pc.struct_field(got, "k"), pa.int64()), -1).to_pylist()
        assert repeats._n_choice(arr).tolist() == nch


def test_greedy_check_reads_every_json_number():
    """params' temperature and top_k as JSON writes them (a negative exponent, an exponent sign, -0.0) decide
    greedy vs sampled as json.loads would; a damaged params text is never a traceback."""
    import json

    import pyarrow as pa

    from reports.repeats import _sampled_mask

    texts = ['{"temperature": 1e-3}', '{"temperature": 0}', '{"temperature": 0.0, "top_k": 40}',
             '{"temperature": 0e+5}', '{"temperature": -0.0}', '{"temperature": 1E-7, "top_k": 1}',
             '{"temperature": 2.5e10}', '{"top_k": 1}', '{}', '{"temperature": 1e999}', '{"temperature":0.7}']
    expected = []
    for t in texts:
        d = json.loads(t)
        expected.append(not (d.get("temperature", float("nan")) == 0 or d.get("top_k") == 1))
    assert _sampled_mask(pa.array(texts, pa.binary())).tolist() == expected
    for bad in ['{"temperature": 1.2.3}', '{"temperature": e5}', '{"temperature": -}', '{"temperature": 1e}']:
        assert _sampled_mask(pa.array([bad], pa.binary())).shape == (1,)


def _windows_cases():
    """(hashes, non-decreasing generations) pairs: random with repeats, all equal, one window,
    a window repeated inside one generation, hashes near 2^62."""
    rng = np.random.default_rng(16)
    out = []
    for n, distinct in ((1, 1), (2, 1), (50, 3), (3_000, 40), (20_000, 5_000), (20_000, 20_000)):
        h = rng.integers(0, 1 << 62, distinct, dtype=np.int64).astype(np.uint64)[rng.integers(0, distinct, n)]
        gen = np.sort(rng.integers(0, max(1, n // 7), n))
        out.append((h, gen))
    out.append((np.full(40, (1 << 62) - 1, np.uint64), np.repeat(np.arange(8), 5)))    # all equal, 5 per gen
    out.append((np.tile(np.array([5, 3, 5, 9], np.uint64), 6), np.repeat(np.arange(3), 8)))
    return out


def test_window_incidences_stable_sort_equal_the_two_sorts():
    """windows_pass's one stable sort (windows in stream order) gives the ranks and (window,
    generation) incidences of np.unique + the sort of the packed pairs."""
    from reports.passes import _incidences_sorted, _incidences_stable
    for h, gen in _windows_cases():
        want = _incidences_sorted(h, gen, int(gen.max()) + 1)
        got = _incidences_stable(h, gen)
        assert got[0] == want[0]
        for a, b in zip(got[1:], want[1:]):
            assert a.dtype.kind == "i" and np.array_equal(a, b)
        # brute force: ranks of the distinct values, distinct (rank, gen) pairs in order
        uniq = sorted(set(h.tolist()))
        assert got[1].tolist() == [uniq.index(x) for x in h.tolist()]
        pairs = sorted({(uniq.index(x), g) for x, g in zip(h.tolist(), gen.tolist())})
        assert list(zip(got[2].tolist(), got[3].tolist())) == pairs


@pytest.mark.parametrize("nkeys", [1, 3, 200, (1 << 15) + 5])
def test_per_key_frequencies_with_sorted_hashes_equal_the_general_sort(nkeys):
    """The radix path of uniques_and_freq_per_key (hashes ascending, keys < 2^15) and its fallback
    for larger keys equal the packed-key sort and a dict count."""
    from collections import Counter

    from reports.passes import uniques_and_freq_per_key
    rng = np.random.default_rng(nkeys)
    hashes = np.sort(rng.integers(0, 3_000, 20_000))
    keys = rng.integers(0, nkeys, 20_000)
    keys[:5] = nkeys - 1
    got = uniques_and_freq_per_key(keys, hashes, hashes_sorted=True)
    assert got == uniques_and_freq_per_key(keys, hashes)
    runs = Counter(zip(keys.tolist(), hashes.tolist()))
    uniq, freq = Counter(k for k, _ in runs), {}
    for (k, _h), c in runs.items():
        freq.setdefault(k, Counter())[c] += 1
    assert got == (dict(uniq), {k: dict(v) for k, v in freq.items()})


@pytest.mark.parametrize("repeat_rid", [False, True])
def test_span_pool_window_counts_with_the_run_order_equal_the_sort(repeat_rid):
    """SpanPool's window frequency counts of any subset of spans are the same with windows_pass's
    order (filtered, no sort) as with the sort of the subset's pairs; a request id coming back
    after others (generations not ascending in the pool) falls back to the sort."""
    from reports.passes import _incidences_stable
    from reports.taxonomy_figures import SpanPool
    rng = np.random.default_rng(9)
    records, w = [], 0
    rids = [f"r{i:03d}" for i in range(60)]
    if repeat_rid:
        rids.append("r005")       # the same id again, later
    for rid in rids:
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(0, 30))
            records.append({"request_id": rid, "raw": b"t%d" % rng.integers(0, 20), "tokens": 60, "bytes": 9,
                            "doc_id": 1, "doc_offset": 0, "tok_range": (0, 60), "wins": (w, w + n)})
            w += n
    win_hash = rng.integers(0, 40, w).astype(np.uint64)          # many windows repeat, within and across rows
    gen_of_win = np.repeat(np.arange(len(records)), [r["wins"][1] - r["wins"][0] for r in records])
    _n, win_id, _iw, _ig, order = _incidences_stable(win_hash, gen_of_win)
    fast, plain = SpanPool(records, win_id, win_hash, order), SpanPool(records, win_id, win_hash)
    assert (fast.order is None) == repeat_rid and plain.order is None
    subsets = [np.arange(len(records)), np.zeros(0, np.int64), np.array([3]), np.arange(0, len(records), 3)]
    subsets += [np.sort(rng.choice(len(records), k, replace=False)) for k in (5, 40, len(records) // 2)]
    for idx in subsets:
        want = plain._window_freq(idx)
        assert fast._window_freq(idx) == want
        # brute force: distinct (window, generation) pairs, then per window its generations
        pairs = {(int(win_id[p]), fast.gen[i]) for i in idx for p in range(*records[i]["wins"])}
        per = {}
        for wid, _g in pairs:
            per[wid] = per.get(wid, 0) + 1
        fk = {}
        for c in per.values():
            fk[c] = fk.get(c, 0) + 1
        assert want == fk


@pytest.mark.parametrize("packed", [True, False])
def test_group_digests_equal_hashing_every_joined_row(packed, monkeypatch):
    """Group digests per distinct combination of dictionary codes equal the BLAKE2b of every row's
    values joined by NUL bytes: NUL bytes and invalid UTF-8 inside values, empty values, one value
    per column, rows a subset in any order, and the combinations too many to pack (np.unique of rows)."""
    import hashlib

    import pyarrow as pa

    from reports import repeats
    if not packed:
        monkeypatch.setattr(repeats, "_PACKED_LIMIT", 1.0)
    rng = random.Random(5 + packed)
    pool = [b"", b"\x00", b"a\x00", b"\x00b", b"\xff\xfe", "\u00e9t\u00e9".encode(), b"x" * 300, b"poem", b"{}"]
    for trial in range(30):
        n = rng.randrange(1, 200)
        cols = [[rng.choice(pool[:rng.randrange(1, len(pool) + 1)]) for _ in range(n)] for _ in range(4)]
        rows = np.array(sorted(rng.sample(range(n), rng.randrange(1, n + 1))) if trial % 3 else
                        [rng.randrange(n) for _ in range(n)], dtype=np.int64)
        counts = {7: 1} if trial % 2 else {}       # added to what the dict held (the batches before)
        got = repeats.group_digests([pa.array(c, pa.binary()) for c in cols], rows, counts).tolist()
        want = [int.from_bytes(hashlib.blake2b(b"\x00".join(c[r] for c in cols), digest_size=8).digest(), "little")
                for r in rows.tolist()]
        assert got == want, trial
        u, c = np.unique(np.array(want, np.uint64), return_counts=True)     # what result() took from all rows
        assert counts == {**dict(zip(u.tolist(), c.tolist())), **({7: 1} if trial % 2 else {})}


def _group_counts_by_aggregation(acc, batch, names, attack, variant, extra):
    """passes._group_counts before it summed with np.bincount: one Arrow group_by per batch, the
    groups created in the order of its rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reports.passes import DIVERGENCE_ATTACKS
    from reports.repeats import per_distinct
    n = batch.num_rows
    ctoks = pc.fill_null(batch.column("completion_tokens"), 0)
    cost = pc.fill_null(batch.column("cost_usd"), 0.0)
    said = per_distinct(extra, lambda v: pc.match_substring_regex(v, r'"diverged"\s*:\s*true')
                        .to_numpy(zero_copy_only=False))
    diverged = pc.cast(pc.and_(pa.array(said), pc.is_in(attack, value_set=pa.array([b"divergence"], pa.binary()))),
                       pa.int64())
    tbl = pa.table({"attack": attack, "variant": variant, "ct": pc.cast(ctoks, pa.int64()),
                    "cost": pc.cast(cost, pa.float64()), "div": diverged})
    agg = tbl.group_by(["attack", "variant"], use_threads=False).aggregate(
        [("ct", "sum"), ("cost", "sum"), ("div", "sum"), ("ct", "count")])
    for a, v, cts, cs, dv, cnt in zip(*(agg.column(c).to_pylist() for c in
                                       ("attack", "variant", "ct_sum", "cost_sum", "div_sum", "ct_count"))):
        grp = acc.groups[acc.group(a.decode("utf-8", "replace"), v.decode("utf-8", "replace"))]
        grp.generations += cnt
        grp.generated_tokens += cts or 0
        grp.cost_usd += cs or 0.0
        grp.diverged += dv or 0
        if grp.attack in DIVERGENCE_ATTACKS:
            grp.divergence_rows += cnt
    assert n == sum(agg.column("ct_count").to_pylist())


def test_group_counts_equal_the_grouped_aggregation(monkeypatch):
    """Per-group generations, tokens, cost (float sums to the last bit) and diverged rows summed by
    np.bincount equal Arrow's group_by, the groups numbered alike: batches whose groups all exist
    (np.bincount) and batches bringing new groups or names that decode alike (invalid UTF-8: the
    group_by again), nulls, empty names, costs over 16 orders of magnitude, null token counts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reports import passes
    grouped = []
    real = passes._grouped_sums
    monkeypatch.setattr(passes, "_grouped_sums", lambda *a: grouped.append(1) or real(*a))
    rng = np.random.default_rng(11)
    clean = ([b"divergence", b"special_chars", b"", None, "\u00e9".encode()], [b"poem", None, b"", b"company"])
    odd = ([b"divergence", b"\xff", b"\xfe", b"discoverable", None], [b"poem", b"\xffx", b"\xfex", b""])
    batches = 0
    for trial in range(16):
        names, variants = clean if trial % 2 else odd
        fast, slow = passes.RunAccumulator(), passes.RunAccumulator()
        for b in range(5):
            n = int(rng.integers(1, 400))
            k = min(len(names), 2 + b) if trial % 4 == 1 else len(names)     # groups first seen late
            att = [names[i] for i in rng.integers(0, k, n)]
            var = [variants[i] for i in rng.integers(0, len(variants), n)]
            cost = (rng.random(n) * 10.0 ** rng.integers(-8, 8, n)).tolist()
            ct = [None if x < 0.05 else int(x * 300) for x in rng.random(n)]
            extra = [str(rng.choice(['{"diverged": true}', '{"diverged":false}', "{}", '{"diverged" :true}']))
                     for _ in range(n)]
            batch = pa.record_batch({"attack": pa.array(att, pa.binary()), "variant": pa.array(var, pa.binary()),
                                     "completion_tokens": pa.array(ct, pa.int32()), "cost_usd": pa.array(cost),
                                     "extra": pa.array(extra)})
            attack = pc.fill_null(batch.column("attack"), b"")
            variant = pc.fill_null(batch.column("variant"), b"")
            ex = pc.fill_null(batch.column("extra"), "")
            _group_counts_by_aggregation(slow, batch, batch.schema.names, attack, variant, ex)
            key, key_names = passes._row_keys(attack, variant)
            slow_gid = [slow.gid_of[key_names[k]] for k in key.tolist()]
            assert passes._group_counts(fast, batch, batch.schema.names, attack, variant, ex).tolist() == slow_gid
            batches += 1
        assert fast.groups == slow.groups and fast.gid_of == slow.gid_of, trial
        assert all(type(g.cost_usd) is float and type(g.generated_tokens) is int for g in fast.groups)
    assert 16 <= len(grouped) < batches - 20          # both paths taken, the sums mostly by np.bincount


def _row_keys_joined(attack, variant):
    """passes._row_keys as it was before the dictionary codes: a length-prefixed join of the two
    byte strings per row, numbered in the order the rows bring them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    keys = pc.binary_join_element_wise(pc.cast(pc.cast(pc.binary_length(attack), pa.string()), pa.binary()),
                                       attack, variant, b"\x00")
    uniq = pc.unique(keys)
    first = pc.index_in(uniq, value_set=keys).to_numpy(zero_copy_only=False)
    fa, fv = attack.take(pa.array(first)).to_pylist(), variant.take(pa.array(first)).to_pylist()
    return (pc.index_in(keys, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64),
            [(a.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for a, v in zip(fa, fv)])


@pytest.mark.parametrize("dense", [True, False])
def test_row_keys_by_dictionary_codes_equal_the_joined_keys(dense, monkeypatch):
    """Every row gets the same names from the dictionary codes as from the joined byte strings, and
    rows share a key exactly when they did: random names, pairs that join alike without the length
    prefix ("a" + "bc", "ab" + "c"), NUL bytes, invalid UTF-8 decoding alike, empty names; both the
    dense count and np.unique for many pairs."""
    import pyarrow as pa

    from reports import passes
    if not dense:
        monkeypatch.setattr(passes, "_DENSE_KEYS", 0)
    rng = random.Random(5)
    pool_a = [b"a", b"ab", b"", b"a\x00", b"\xff", b"\xfe", b"divergence", "\u00e9".encode()]
    pool_v = [b"bc", b"c", b"", b"\x00c", b"\xffx", b"\xfex", b"poem"] + [str(i).encode() for i in range(40)]
    for trial in range(30):
        n = rng.randint(1, 300)
        att = pa.array([rng.choice(pool_a[:rng.randint(1, len(pool_a))]) for _ in range(n)], pa.binary())
        var = pa.array([rng.choice(pool_v) for _ in range(n)], pa.binary())
        key, names = passes._row_keys(att, var)
        key2, names2 = _row_keys_joined(att, var)
        assert [names[k] for k in key.tolist()] == [names2[k] for k in key2.tolist()]
        assert sorted(names) == sorted(names2) and len(names) == len(set(zip(att.to_pylist(), var.to_pylist())))
        same = key[:, None] == key[None, :]
        assert np.array_equal(same, key2[:, None] == key2[None, :])
        assert sorted(set(key.tolist())) == list(range(len(names)))


@pytest.mark.parametrize("case", ["repeated_ids", "ids_once", "null_id", "one_batch"])
def test_merge_per_request_equals_group_by_and_join(case):
    """The per-request table merged on arrays equals Arrow's group_by + left join (rows compared by
    request id): ids spread over batches (summed), each id once, a null id (Arrow's path), one
    batch; spans tied on tokens, bytes and start (the first in file order wins: another doc_id),
    requests whose spans are all untokenized (no longest span: nulls)."""
    import pyarrow as pa

    from reports import spans
    rng = random.Random(sum(map(ord, case)))
    small, longest = [], []
    for b in range(1 if case == "one_batch" else 6):
        n = rng.randint(1, 400)
        if case == "ids_once":
            ids = [f"b{b}-{i}" for i in range(n)]
        else:
            ids = [f"r{rng.randrange(300)}\u00e9" for _ in range(n)]
        if case == "null_id":
            ids[0] = None
        tok = np.array([-1 if rng.random() < 0.1 else rng.choice([10, 20, 35, 50, 64]) for _ in range(n)])
        ss = np.array([rng.choice([0, 5, 9]) for _ in range(n)])
        batch = pa.record_batch({"request_id": pa.array(ids, pa.string()), "span_start": pa.array(ss),
                                 "span_end": pa.array(ss + np.array([rng.choice([30, 40]) for _ in range(n)])),
                                 "tokens": pa.array(tok), "doc_id": pa.array(range(b * 1000, b * 1000 + n)),
                                 "doc_offset": pa.array([0] * n), "source": pa.array([f"s{b}"] * n)})
        rids = batch.column("request_id")
        small.append(spans._threshold_counts(rids, tok))
        keep = np.nonzero(tok >= 0)[0]
        if len(keep):
            longest.append(spans.longest_per(spans.span_table(batch, rids, tok, keep), "request_id"))
    got = spans._merge_per_request(small, longest)
    want = spans._merge_per_request_arrow(small, longest)
    key = [("request_id", "ascending")]
    assert got.schema == want.schema
    assert got.sort_by(key).to_pylist() == want.sort_by(key).to_pylist()
    assert got.num_rows == len({r for t in small for r in t.column("request_id").to_pylist()})
    assert any(r["mt"] is None for r in got.to_pylist())
    no_longest = spans._merge_per_request_arrow(small, []).sort_by(key)
    assert spans._merge_per_request(small, []).sort_by(key).equals(no_longest)


@pytest.mark.parametrize("kind", ["spread", "few_values", "small", "top_bits_equal", "zeros", "uint32", "short"])
def test_stable_argsort_spread_equals_the_stable_argsort(kind):
    """The two-pass sort (top 16 bits by radix, then timsort) gives exactly the stable argsort:
    62-bit hashes with repeats, few distinct values (long runs of ties), values below 2^16, values
    sharing their top bits, all zero, another unsigned width, and arrays too short for the two passes."""
    from reports.passes import stable_argsort_spread
    rng = np.random.default_rng(len(kind))
    n = 50 if kind == "short" else 20_000
    if kind == "spread":
        v = rng.integers(0, 1 << 62, n // 2, dtype=np.uint64)[rng.integers(0, n // 2, n)]
    elif kind == "few_values":
        v = rng.integers(0, 1 << 63, 7, dtype=np.uint64)[rng.integers(0, 7, n)]
    elif kind == "small":
        v = rng.integers(0, 3000, n).astype(np.uint64)
    elif kind == "top_bits_equal":
        v = (np.uint64(0xABCD) << np.uint64(48)) | rng.integers(0, 40, n).astype(np.uint64)
    elif kind == "zeros":
        v = np.zeros(n, np.uint64)
    elif kind == "uint32":
        v = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    else:
        v = rng.integers(0, 1 << 62, n, dtype=np.uint64)
    assert np.array_equal(stable_argsort_spread(v), np.argsort(v, kind="stable"))


def test_value_counts_and_sorted_small_equal_unique_and_sort():
    """Counting instead of sorting gives np.unique's values, counts and dtype, and np.sort's array:
    dense small ranges (counted), sparse or large or negative values (sorted), empty arrays."""
    from reports.passes import sorted_small, value_counts
    rng = np.random.default_rng(4)
    for n, lo, hi in ((0, 0, 1), (1, 0, 1), (1000, 0, 5), (1000, 0, 4000), (1000, 0, 10 ** 6), (1000, -3, 5),
                      (5000, 2 ** 22 - 10, 2 ** 22 + 10), (300, 7, 8)):
        for dtype in (np.int64, np.uint32, np.int32):
            if lo < 0 and dtype == np.uint32:
                continue
            x = rng.integers(lo, hi, n).astype(dtype)
            got, want = value_counts(x), np.unique(x, return_counts=True)
            assert got[0].dtype == want[0].dtype and got[0].tolist() == want[0].tolist()
            assert got[1].tolist() == want[1].tolist()
        x = rng.integers(max(lo, 0), hi, n).astype(np.int64)
        for bound in (hi, hi + 1, 10 ** 7):
            assert np.array_equal(sorted_small(x, bound), np.sort(x)) and sorted_small(x, bound).dtype == np.int64


def test_encoded_columns_hold_the_rows_values():
    """inputs.encoded: a dictionary array of each row's bytes (null: the fill value), from a dense
    column or from a dictionary array whose dictionary repeats a value, holds unused values or
    invalid UTF-8, and whose codes are null; per_distinct and _row_keys read it as the dense column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reports import passes
    from reports.inputs import decoded, encoded
    from reports.repeats import per_distinct
    vals = [b"a", b"\xffx", b"", b"a", None, b'{"diverged": true}']
    dense = pa.array(vals, pa.binary())
    cases = [dense, pa.array([None if v is None else v.decode("utf-8", "replace") for v in vals], pa.string()),
             pc.dictionary_encode(dense),
             pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 3, None, 5], pa.int32()),
                                            pa.array([b"a", b"\xffx", b"", b"a", b"unused", b'{"diverged": true}'])),
             pa.DictionaryArray.from_arrays(pa.array([1, 2, 3, 1, 0, 4], pa.int8()),
                                            pa.array([None, "a", "\ufffdx", "", '{"diverged": true}']))]
    regex = lambda v: pc.match_substring_regex(v, r'"diverged"\s*:\s*true').to_numpy(zero_copy_only=False)  # noqa: E731
    for k, col in enumerate(cases):
        enc = encoded(col, b"FILL")
        assert pa.types.is_dictionary(enc.type) and enc.null_count == 0 and enc.dictionary.type == pa.binary()
        want = [(v if v is not None else b"FILL") for v in vals]
        if k in (1, 4):                            # the string forms hold U+FFFD for the invalid byte
            want = [w.decode("utf-8", "replace").encode() for w in want]
        assert decoded(enc).to_pylist() == want, k
        assert per_distinct(enc, regex).tolist() == [b'"diverged": true' in w for w in want]
        key, names = passes._row_keys(enc, encoded(dense, b""))
        key2, names2 = passes._row_keys(pa.array(want, pa.binary()), encoded(dense, b""))
        assert [names[i] for i in key.tolist()] == [names2[i] for i in key2.tolist()]
        assert len(names) == len(set(names)) == len(names2)


def test_shared_encodings_give_the_same_report(tmp_path, monkeypatch):
    """The generations pass encoding its text columns once per batch for the group counts and the
    repeated-draws check gives the report each column's own encoding gives: nulls, invalid UTF-8,
    names decoding alike, greedy and sampled params, divergence and discoverable rows."""
    import glob

    import pyarrow as pa
    import pyarrow.parquet as pq

    from reports import compute_metrics, passes
    from synthetic_runs import write_planted_run
    run = tmp_path / "run"
    write_planted_run(str(run), 1500, memorized_rate=0.06, short_rate=0.1, corpus_docs=30, part_rows=500,
                      row_group_rows=200)
    rng = random.Random(8)
    choices = {"attack": (pa.string(), ["divergence", "special_chars", "discoverable", None, "prefix"]),
               "variant": (pa.binary(), [b"poem", b"\xffx", b"\xfex", b"", None, b"company"]),
               "extra": (pa.string(), ['{"diverged": true}', '{"n_choice": 1}', None, '{"exact": true}',
                                       '{"edit_distance_ratio": 0.05, "target": "x"}', "{}"]),
               "prompt": (pa.string(), ["p1", "p2", None, ""]),
               "params": (pa.string(), ['{"temperature": 1.0}', '{"temperature": 0}', None, '{"top_k": 1}']),
               "seed": (pa.int64(), [1, 2, None])}
    for k, path in enumerate(sorted(glob.glob(str(run / "generations" / "part-*.parquet")))):
        t = pq.read_table(path)
        for name, (typ, pool) in choices.items():
            pool = pool[:2 + k] if name in ("attack", "variant") else pool       # new values in later parts
            arr = pa.array([rng.choice(pool) for _ in range(t.num_rows)], typ)
            t = (t.set_column(t.column_names.index(name), name, arr) if name in t.column_names
                 else t.append_column(name, arr))
        pq.write_table(t, path, row_group_size=130)
    fast = compute_metrics(str(run))
    monkeypatch.setattr(passes, "SHARED_ENCODINGS", ())
    slow = compute_metrics(str(run))
    _assert_same_report(fast, slow)
    assert fast["metrics"]["memorized_generations"] > 20 and sum(map(len, fast["per_variant"].values())) > 6
    assert fast["repeated_draws"]["same_draw_rows"] > 0 and fast["repeated_draws"]["greedy_rows_exempt"] > 0


@pytest.mark.parametrize("typ", ["list32", "large64"])
def test_list_rows_equal_take_and_flatten(typ):
    """inputs.list_rows gives the lengths and values that take + list_flatten + fill_null give: null
    lists (empty), null values (0), empty lists, sliced columns, rows in any order or repeated."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reports.inputs import list_rows
    rng = random.Random(len(typ))
    t = pa.list_(pa.int32()) if typ == "list32" else pa.large_list(pa.int64())
    for trial in range(60):
        lists = [None if rng.random() < 0.1 else
                 [None if rng.random() < 0.05 else rng.randrange(1000) for _ in range(rng.choice([0, 1, 3, 40]))]
                 for _ in range(rng.randint(1, 50))]
        col = pa.array(lists, t)
        cut = rng.randint(0, len(lists) - 1) if trial % 3 == 0 else 0
        col, lists = col.slice(cut), lists[cut:]
        rows = np.array(sorted(rng.sample(range(len(lists)), rng.randint(0, len(lists)))) if trial % 2 else
                        [rng.randrange(len(lists)) for _ in range(rng.randint(0, 30))], dtype=np.int64)
        n, vals = list_rows(col, rows)
        taken = col.take(pa.array(rows, pa.int64()))
        assert n.tolist() == pc.fill_null(pc.list_value_length(taken), 0).to_pylist()
        assert vals.tolist() == pc.fill_null(pc.list_flatten(taken), 0).to_pylist()
        assert vals.dtype == (np.int32 if typ == "list32" else np.int64)


@pytest.mark.parametrize("ties", ["few", "many"])
def test_longest_rows_equal_the_sorted_longest(ties):
    """spans.longest_rows picks, per key and run-wide, the row longest_per's sort keeps: most tokens,
    then bytes, then request id (bytes; a null id last, invalid UTF-8), span start, then row order;
    tables where everything ties but the request id or the start, and negative and huge values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from reports import spans
    rng = random.Random(len(ties))
    for trial in range(40):
        n = rng.randint(1, 300)
        span = 3 if ties == "many" else 10 ** 6
        tbl = pa.table({"request_id": pa.array([None if rng.random() < 0.05 else rng.choice(["a", "b", "\u00e9", "ab"])
                                                if ties == "many" else f"r{rng.randrange(10 ** 6)}" for _ in range(n)]),
                        "mt": pa.array([rng.randrange(span) * (-1 if trial % 7 == 0 else 1) for _ in range(n)],
                                       pa.int64()),
                        "mb": pa.array([rng.randrange(span) + (2 ** 62 if trial % 5 == 0 else 0) for _ in range(n)],
                                       pa.int64()),
                        "ss": pa.array([rng.randrange(3) for _ in range(n)], pa.int64()),
                        "doc": pa.array(range(n)), "gid": pa.array([rng.randrange(4) for _ in range(n)], pa.int64())})
        got = spans.longest_rows(tbl, tbl.column("gid").to_numpy())
        assert tbl.take(pa.array(got)).to_pylist() == spans.longest_per(tbl, "gid").to_pylist(), trial
        one = spans.longest_rows(tbl)
        want = int(pc.sort_indices(tbl, sort_keys=spans._LONGEST_ORDER)[0].as_py())
        assert one.tolist() == [want], trial
    with_null = pa.table({"request_id": ["a"], "mt": [1], "mb": pa.array([None], pa.int64()), "ss": [0]})
    assert spans.longest_rows(with_null) is None


def test_read_ahead_yields_the_items_in_order_and_their_errors_in_place():
    """read_ahead gives exactly the iterator's items, in order; an exception raised by the iterator
    reaches the caller after the items before it (as reading without it); a caller stopping early
    stops the helper thread, which never runs more than one item ahead."""
    import threading

    from reports.errors import ReportError
    from reports.inputs import read_ahead
    produced = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ReportError(f"part {i}: damaged")
            produced.append(i)
            yield i
    assert list(read_ahead(items(0))) == []
    assert list(read_ahead(items(50))) == list(range(50))
    got = []
    with pytest.raises(ReportError, match="part 7: damaged"):
        for x in read_ahead(items(20, fail_at=7)):
            got.append(x)
    assert got == list(range(7))
    produced.clear()
    for x in read_ahead(items(1000)):
        assert len(produced) <= x + 2          # the caller's item and at most one ready ahead
        if x == 3:
            break
    assert len(produced) <= 5 and not any(t.name == "trawl-report-read-ahead" for t in threading.enumerate())


def _long_ascii_texts(seed: int) -> list[str]:
    """Texts past PREFIX_MIN_CHARS: random units, patterns (predictable), patterns after or before a
    random stretch, coverage near the threshold, a number sequence whose third copies lie just past
    the prefix, a long word cut by the prefix."""
    rng = random.Random(seed)
    pieces = ["1", "22", "007", "10", "a", "b", "Z", "ab", "abcdefghijk", ",", ", ", " ", "  ", "\n", "\x1c", "-", ".",
              "poem ", "x1"]

    def noise(n):
        return "".join(rng.choice(pieces) for _ in range(n))
    def prose(n):        # mostly distinct words: ruled out by the prefix
        return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                        for _ in range(n))
    texts = [noise(rng.randint(300, 900)) for _ in range(20)] + [prose(rng.randint(110, 400)) for _ in range(20)]
    texts += [prose(rng.randint(20, 60)) + "poem " * rng.randint(130, 300) for _ in range(5)]
    texts += ["poem " * rng.randint(130, 400) for _ in range(4)]
    texts += [", ".join(str(3 * i + 1) for i in range(rng.randint(160, 400))) for _ in range(4)]
    texts += [noise(rng.randint(5, 120)) + "poem " * rng.randint(130, 500) for _ in range(10)]
    texts += ["poem " * rng.randint(60, 200) + noise(rng.randint(5, 400)) for _ in range(10)]
    for share in (0.7, 0.78, 0.8, 0.82, 0.9):                # repeated units mixed with unique words
        words = [f"w{i}q" if rng.random() > share else "ab" for i in range(700)]
        texts.append(" ".join(words))
    n = taxonomy._LOOKAHEAD
    texts.append("x " * (taxonomy._prefix_chars(2 * n + 1400) // 2 - n) + ", ".join(str(i) for i in range(400)))
    texts.append("a " * 300 + "b" * 2000)
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("batch_units", [1, 700, 65_536])
def test_prefix_rule_out_equals_one_at_a_time(batch_units, monkeypatch):
    """predictable_many with the prefix pre-check equals is_predictable text by text, and the prefix
    rules out texts (and leaves predictable ones and others to the whole-text path)."""
    texts = _long_ascii_texts(batch_units) + _ascii_texts(3)[:50]
    want = np.array([taxonomy.is_predictable(t) for t in texts])
    monkeypatch.setattr(taxonomy, "BATCH_UNITS", batch_units)
    ruled = taxonomy._ruled_out_by_prefix(texts)
    assert not (ruled & want).any()
    assert np.array_equal(taxonomy.predictable_many(texts), want)
    long_ = np.array([len(t) > taxonomy.PREFIX_MIN_CHARS for t in texts])
    assert 0 < ruled.sum() < long_.sum() and 0 < want[long_].sum()     # every path taken


def test_prefix_keeps_units_whose_partners_lie_past_the_cut(monkeypatch):
    """Texts that are predictable only through partners past the prefix: a 30-word cycle (each word's
    copy 60 units on) and 12-digit numbers stepping by a constant from one 15-number cycle to the next
    (third copies 90 units on). The prefix keeps them for the whole-text path; with a lookahead shorter
    than the partners' distance it would wrongly rule them out (what this test guards)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(10)) for _ in range(30)]
    cycle_words = " ".join(words[i % 30] for i in range(63))
    base = [rng.randrange(10 ** 11, 10 ** 12 - 10 ** 6) for _ in range(15)]
    step = [rng.randrange(1, 1000) for _ in range(15)]
    stepping = ", ".join(str(base[i] + c * step[i]) for c in range(3) for i in range(15))
    for text, short in ((cycle_words, 30), (stepping, 63)):
        assert len(text) > taxonomy.PREFIX_MIN_CHARS and taxonomy.is_predictable(text)
        assert not taxonomy._ruled_out_by_prefix([text])[0] and taxonomy.predictable_many([text, "x"]).tolist() == \
            [True, False]
        monkeypatch.setattr(taxonomy, "_LOOKAHEAD", short)
        assert taxonomy._ruled_out_by_prefix([text])[0]
        monkeypatch.undo()


def test_char_counts_equal_alnum_share_text_by_text(monkeypatch):
    """The counts of ASCII texts laid out together give alnum_share and the non-whitespace count of
    each text alone: empty and whitespace-only texts, whitespace at either end, every ASCII
    whitespace character, non-ASCII texts (left to the caller), blocks cut after any text."""
    rng = random.Random(12)
    spaces = [chr(c) for c in range(128) if chr(c).isspace()]
    pieces = ["a", "Z", "7", "42", "_", ".", "\x00", "\x7f", "-"] + spaces + ["  ", "\t\n"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))) for _ in range(400)]
    texts += ["", " ", "\x1c", "a", " a ", "\u00e9t\u00e9 1", "\u2003x", "x" * 5000, " \t" * 700]
    rng.shuffle(texts)
    for block in (1, 37, 1 << 20):
        monkeypatch.setattr(taxonomy, "COUNT_CHARS", block)
        alnum, total, nonspace = taxonomy._char_counts(texts)
        for t, a, n, ns in zip(texts, alnum.tolist(), total.tolist(), nonspace.tolist()):
            if not t.isascii():
                assert a == n == ns == -1
                continue
            assert (a / n if n else 0.0) == taxonomy.alnum_share(t)
            assert ns == len(t) - sum(c.isspace() for c in t)


def test_parse_digits_equals_int():
    """Digit runs of 1..16 digits (leading zeros, at the buffer's start and end, next to other
    digits' runs) read as int() reads them."""
    rng = random.Random(13)
    runs = ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 16))) for _ in range(3000)]
    runs += ["0", "9" * 16, "0" * 16, "1" + "0" * 15, "00000001", "123456789"]
    seps = [rng.choice([" ", "x", ", "]) for _ in runs]
    raw = "".join(r + s for r, s in zip(runs, seps))[:-1].encode("ascii")     # the last run ends the buffer
    lens = np.array([len(r) for r in runs], dtype=np.int64)
    starts = np.cumsum(lens + np.array([len(s) for s in seps])) - lens - np.array([len(s) for s in seps])
    assert taxonomy._parse_digits(raw, starts, lens).tolist() == [int(r) for r in runs]


def test_batches_equal_the_item_by_item_loop():
    """taxonomy._batches cuts where the former loop over items cut: each batch from i takes items
    while those taken (from i) stay below the limit, at least one; sizes of 0, items above the limit."""
    rng = random.Random(14)
    for trial in range(200):
        sizes = [rng.choice([0, 1, 5, 40, 700, rng.randint(0, 100)]) for _ in range(rng.randint(0, 40))]
        limit = rng.choice([1, 10, 64, 700, 10_000])
        want, i = [], 0
        while i < len(sizes):
            j, size = i, 0
            while j < len(sizes) and (j == i or size < limit):
                size += sizes[j]
                j += 1
            want.append((i, j))
            i = j
        assert taxonomy._batches(np.array(sizes, dtype=np.int64), limit) == want, (sizes, limit)


def test_classify_many_at_the_low_information_boundary():
    """Alnum shares exactly at, just below and just above LOW_INFORMATION_MAX_ALNUM (whitespace
    runs counted once, non-ASCII texts counted one by one) get classify_both's classes."""
    texts = ["ab,,,", "ab.,;", "ab   ,,,", "a" * 40 + "," * 60, "a" * 40 + "," * 61, "a" * 41 + "," * 60,
             "ab\t\n ,.,", "\u00e9b,,,", "\u00e9\u00e9\u00e9,,", "", "   ", ",", "1, 2, 3, 4, 5", "x, x, x, x"]
    for occ in (0, 6):
        want = [taxonomy.classify_both(t, occ) for t in texts]
        assert taxonomy.classify_many(texts, [occ] * len(texts)) == want
        assert {w[0] for w in want} >= {"low_information"} and len({w[0] for w in want}) >= 2
