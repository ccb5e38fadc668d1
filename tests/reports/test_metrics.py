"""Every metric of reports.compute_metrics against a brute-force computation on
synthetic runs whose answer is known.

The brute force does not look at matches.parquet for the window figures: it
enumerates every window of W consecutive tokens of every generation and checks
it with Python's ``in`` against each corpus document.
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest

from reports import compute_metrics
from synthetic_runs import Corpus, Gen, token_offsets, write_run
from repo import ROOT

W = 50


def _doc_tokens(rng, vocab, n):
    return [rng.choice(vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    """A run with: several attacks and variants; memorized passages repeated across
    generations (so f2 > 0); overlapping maximal spans inside one generation; a span
    repeated inside one generation; multi-byte characters and a character split across
    two tokens inside a memorized passage; short (10-49 token) spans; costs."""
    rng = random.Random(7)
    vocab = [" w%d" % i for i in range(400)] + [" caf\u00e9", " \u65e5\u672c", " na\u00efve", " \U0001f600"]
    docs_t = [_doc_tokens(rng, vocab, 260) for _ in range(6)]
    # doc 6 starts with the last 20 tokens of doc0[100:160] and continues: overlapping spans
    docs_t.append(docs_t[0][140:160] + _doc_tokens(rng, vocab, 120))
    # doc 7 holds a split multi-byte character between two tokens
    split_doc = _doc_tokens(rng, vocab, 40) + [" \u6f22\u5b57"] + _doc_tokens(rng, vocab, 80)
    docs_t.append(split_doc)
    # doc 8 duplicates a passage of doc 1 (occurrences > 1; canonical occurrence is doc 1)
    docs_t.append(_doc_tokens(rng, vocab, 30) + docs_t[1][50:120] + _doc_tokens(rng, vocab, 30))
    docs = ["".join(d) for d in docs_t]
    corpus = Corpus(docs, sources=[f"src/{i}.txt" for i in range(len(docs))])
    filler = [" z%d" % i for i in range(500)]   # never in the corpus ("z" is not in the vocabulary)

    def fill(n):
        return [rng.choice(filler) for _ in range(n)]

    gens: list[Gen] = []
    # divergence / poem: 6 generations; the same passage doc0[0:70] in three of them (repeat)
    for i in range(6):
        t = fill(30)
        if i < 3:
            t += docs_t[0][0:70]
        elif i == 3:
            t += docs_t[0][100:160] + docs_t[6][20:70]        # overlapping spans (doc0 / doc6)
        elif i == 4:
            t += docs_t[2][10:65] + fill(5) + docs_t[2][10:65]  # same passage twice in one generation
        t += fill(30)
        gens.append(Gen(t, "divergence", "poem", cost_usd=0.01))
    # divergence / company: short spans only, plus one long one from the duplicated passage
    for i in range(5):
        t = fill(20) + docs_t[3][i * 10:i * 10 + 12 + 7 * i] + fill(20)   # 12..40 tokens
        if i == 4:
            t += docs_t[8][30:100]                                           # 70 tokens, 2 occurrences
        gens.append(Gen(t, "divergence", "company", cost_usd=0.01))
    # special_chars / "{": the split character passage, tokens split mid-character
    enc = "".join(split_doc[30:110]).encode("utf-8")
    cut = enc.index("\u6f22".encode("utf-8")) + 1 + len(b"")
    head, tail = enc[:cut], enc[cut:]
    # token list: the passage tokens before the split token, then two byte tokens
    toks = []
    pos = 0
    for tk in split_doc[30:110]:
        b = tk.encode("utf-8")
        if pos <= cut < pos + len(b) and cut != pos:
            toks.append(b[:cut - pos])
            toks.append(b[cut - pos:])
        else:
            toks.append(b)
        pos += len(b)
    assert b"".join(toks) == head + tail
    gens.append(Gen(fill(10) + toks + fill(10), "special_chars", "{", cost_usd=0.02))
    gens.append(Gen(fill(60), "special_chars", "{", cost_usd=0.02))
    # unconditional: again doc0[0:70] (a fourth incidence) and a new passage doc4
    gens.append(Gen(fill(15) + docs_t[0][5:75] + fill(15), "unconditional", "", cost_usd=0.005))
    gens.append(Gen(fill(15) + docs_t[4][0:90] + fill(15), "unconditional", "", cost_usd=0.005))
    # discoverable rows: one exact, one approximate (ratio 0.05), one not (ratio 0.5)
    gens.append(Gen(docs_t[5][0:60], "discoverable", "src/5.txt", cost_usd=0.001,
                    extra={"doc_id": 5, "prefix_tokens": 10, "exact": True, "edit_distance_ratio": 0.0}))
    gens.append(Gen(fill(60), "discoverable", "src/5.txt", cost_usd=0.001,
                    extra={"doc_id": 5, "prefix_tokens": 10, "exact": False, "edit_distance_ratio": 0.05,
                           "target": "tgt"}))
    gens.append(Gen(fill(60), "discoverable", "src/4.txt", cost_usd=0.001,
                    extra={"doc_id": 4, "prefix_tokens": 10, "exact": False, "edit_distance_ratio": 0.5}))
    run = tmp_path_factory.mktemp("known") / "run"
    matches = write_run(str(run), corpus, gens, min_tokens=10, parts=3)
    return {"run": str(run), "corpus": corpus, "gens": gens, "matches": matches, "docs": [d.encode() for d in docs]}


def brute_force(gens, docs: list[bytes], matches, window: int = W, select=lambda g: True):
    """The figures by enumeration: every window checked with `in` against every document."""
    windows_per_gen = []
    mem_gens = mem_tokens = total_tokens = 0
    gens_ge = Counter()
    longest = 0
    for g in gens:
        if not select(g):
            continue
        comp, offs = token_offsets(g.tokens)
        ends = offs[1:] + [len(comp)]
        n = len(offs)
        total_tokens += n
        in_corpus = lambda i, j: any(comp[offs[i]:ends[j]] in d for d in docs)  # noqa: E731
        ws = set()
        mem = [False] * n
        for i in range(n - window + 1):
            w = comp[offs[i]:ends[i + window - 1]]
            if any(w in d for d in docs):
                ws.add(w)
                for k in range(i, i + window):
                    mem[k] = True
        windows_per_gen.append(ws)
        mem_tokens += sum(mem)
        mem_gens += bool(ws)
        # longest run of consecutive tokens whose text occurs in the corpus
        best, j = 0, 0
        for i in range(n):
            j = max(j, i)
            while j < n and in_corpus(i, j):
                j += 1
            best = max(best, j - i)
        longest = max(longest, best)
        for t in (10, 20, 30, 40, 50):
            if best >= t:
                gens_ge[t] += 1
    freq = Counter()
    for ws in windows_per_gen:
        for w in ws:
            freq[w] += 1
    fk = Counter(freq.values())
    return {"memorized_generations": mem_gens, "memorized_tokens": mem_tokens, "generated_tokens": total_tokens,
            "unique_memorized_windows": len(freq), "frequency_counts": dict(sorted(fk.items())),
            "longest_run_tokens": longest, "generations_ge": dict(gens_ge)}


def brute_unique_bytes(matches, docs_len, rid_select=None, window=W):
    cells = set()
    for m in matches:
        if m["tokens"] >= window and (rid_select is None or m["request_id"] in rid_select):
            for p in range(m["doc_offset"], m["doc_offset"] + m["span_end"] - m["span_start"]):
                cells.add((m["doc_id"], p))
    return len(cells)


def test_totals_match_brute_force(known_run):
    m = compute_metrics(known_run["run"])
    t = m["metrics"]
    bf = brute_force(known_run["gens"], known_run["docs"], known_run["matches"])
    assert t["generations"] == len(known_run["gens"])
    assert t["generated_tokens"] == bf["generated_tokens"]
    assert t["memorized_generations"] == bf["memorized_generations"] == 10
    assert t["memorized_tokens"] == bf["memorized_tokens"]
    assert t["memorized_token_fraction"] == pytest.approx(bf["memorized_tokens"] / bf["generated_tokens"])
    assert t["memorized_generation_fraction"] == pytest.approx(10 / len(known_run["gens"]))
    assert t["unique_memorized_windows"] == bf["unique_memorized_windows"]
    assert {int(k): v for k, v in m["extrapolation"]["frequency_counts"].items()} == bf["frequency_counts"]
    assert t["longest_run_tokens"] == bf["longest_run_tokens"]
    for th in (10, 20, 30, 40, 50):
        assert t[f"generations_ge_{th}"] == bf["generations_ge"].get(th, 0), th
        assert t[f"spans_ge_{th}"] == sum(1 for x in known_run["matches"] if x["tokens"] >= th), th
    assert t["unique_memorized_bytes"] == brute_unique_bytes(known_run["matches"], None)


def test_longest_run_is_one_span_of_the_matches(known_run):
    """longest_run, longest_run_tokens and longest_run_bytes (run-wide, per attack, per variant) all
    describe one span: the matches row with the most tokens, then bytes, then the first request id."""
    m = compute_metrics(known_run["run"])
    key = lambda x: (-x["tokens"], -(x["span_end"] - x["span_start"]), x["request_id"], x["span_start"])  # noqa: E731
    best = min(known_run["matches"], key=key)
    lr = m["longest_run"]
    assert (lr["tokens"], lr["bytes"]) == (best["tokens"], best["span_end"] - best["span_start"])
    assert (lr["request_id"], lr["doc_id"], lr["doc_offset"], lr["source"], lr["occurrences"], lr["text"]) == \
        (best["request_id"], best["doc_id"], best["doc_offset"], best["source"], best["occurrences"], best["text"])
    assert known_run["docs"][lr["doc_id"]][lr["doc_offset"]:lr["doc_offset"] + lr["bytes"]] == lr["text"].encode()
    assert (m["metrics"]["longest_run_tokens"], m["metrics"]["longest_run_bytes"]) == (lr["tokens"], lr["bytes"])
    rid_group = {}
    for i, g in enumerate(known_run["gens"]):
        rid_group[write_run_rid(i)] = (g.attack, g.variant)
    for attack, variants in m["per_variant"].items():
        for variant, f in variants.items():
            rows = [x for x in known_run["matches"] if rid_group[x["request_id"]] == (attack, variant)]
            want = (0, 0) if not rows else (min(rows, key=key)["tokens"],
                                            min(rows, key=key)["span_end"] - min(rows, key=key)["span_start"])
            assert (f["longest_run_tokens"], f["longest_run_bytes"]) == want, (attack, variant)
        rows = [x for x in known_run["matches"] if rid_group[x["request_id"]][0] == attack]
        want = (0, 0) if not rows else (min(rows, key=key)["tokens"],
                                        min(rows, key=key)["span_end"] - min(rows, key=key)["span_start"])
        f = m["per_attack"][attack]
        assert (f["longest_run_tokens"], f["longest_run_bytes"]) == want, attack


def write_run_rid(i: int, run_id: str = "run-test") -> str:
    """The request id synthetic_runs.write_run gives the i-th generation."""
    import hashlib
    return hashlib.sha1(f"{run_id}/{i}".encode()).hexdigest()[:16]


def test_known_answer_values(known_run):
    """Figures worked out by hand from how the run was built."""
    t = compute_metrics(known_run["run"])["metrics"]
    # overlapping spans doc0[100:160] + doc6[20:70]: the generation's memorized tokens are the 110
    # passage tokens, not 60 + 70 (the 20 shared tokens counted once)
    ov = next(x for x in known_run["matches"] if x["doc_id"] == 6)
    assert ov["tokens"] == 70
    # the 70-token passage found in doc 1 and doc 8 is reported at its canonical occurrence (doc 1)
    dup = [x for x in known_run["matches"] if x["occurrences"] == 2 and x["tokens"] >= 50]
    assert dup and all(x["doc_id"] == 1 for x in dup)
    assert t["total_cost_usd"] == pytest.approx(6 * 0.01 + 5 * 0.01 + 2 * 0.02 + 2 * 0.005 + 3 * 0.001)
    assert t["exact_discoverable_hits"] == 1
    assert t["approximate_memorization_hits"] == 1
    assert t["mb_per_dollar"] == pytest.approx(t["unique_memorized_bytes"] / 1e6 / t["total_cost_usd"])
    assert t["usd_per_unique_window"] == pytest.approx(t["total_cost_usd"] / t["unique_memorized_windows"])


def test_frequency_counts_good_turing_chao1(known_run):
    m = compute_metrics(known_run["run"])
    fq = {int(k): v for k, v in m["extrapolation"]["frequency_counts"].items()}
    # doc0[5:70] windows appear in four generations (three poem + one unconditional)
    assert max(fq) == 4
    f1, f2 = fq.get(1, 0), fq.get(2, 0)
    n_obs = sum(fq.values())
    N = sum(k * v for k, v in fq.items())
    assert m["metrics"]["good_turing_new_probability"] == pytest.approx(f1 / N)
    expect = n_obs + f1 * f1 / (2 * f2) if f2 else n_obs + f1 * (f1 - 1) / 2
    assert m["metrics"]["chao1_total_windows"] == pytest.approx(expect)


def test_per_attack_and_variant_match_brute_force(known_run):
    m = compute_metrics(known_run["run"])
    rid_of = {}
    for x in known_run["matches"]:
        rid_of.setdefault(x["request_id"], []).append(x)
    import hashlib
    rids = [hashlib.sha1(f"run-test/{i}".encode()).hexdigest()[:16] for i in range(len(known_run["gens"]))]
    by_attack = defaultdict(set)
    by_variant = defaultdict(set)
    for g, r in zip(known_run["gens"], rids):
        by_attack[g.attack].add(r)
        by_variant[(g.attack, g.variant)].add(r)
    for attack, f in m["per_attack"].items():
        bf = brute_force(known_run["gens"], known_run["docs"], None, select=lambda g: g.attack == attack)
        assert f["memorized_generations"] == bf["memorized_generations"], attack
        assert f["memorized_tokens"] == bf["memorized_tokens"], attack
        assert f["unique_memorized_windows"] == bf["unique_memorized_windows"], attack
        assert f["longest_run_tokens"] == bf["longest_run_tokens"], attack
        assert f["unique_memorized_bytes"] == brute_unique_bytes(known_run["matches"], None, by_attack[attack])
        fq = Counter()
    for attack, vs in m["per_variant"].items():
        for variant, f in vs.items():
            sel = lambda g: g.attack == attack and g.variant == variant  # noqa: E731
            bf = brute_force(known_run["gens"], known_run["docs"], None, select=sel)
            assert f["generations"] == sum(1 for g in known_run["gens"] if sel(g))
            assert f["memorized_generations"] == bf["memorized_generations"], (attack, variant)
            assert f["memorized_tokens"] == bf["memorized_tokens"]
            assert f["unique_memorized_windows"] == bf["unique_memorized_windows"]
            assert f["unique_memorized_bytes"] == brute_unique_bytes(known_run["matches"], None,
                                                                     by_variant[(attack, variant)])
            fq = bf["frequency_counts"]
            n_inc = sum(k * v for k, v in fq.items())
            assert f["good_turing_new_probability"] == (pytest.approx(fq.get(1, 0) / n_inc) if n_inc else None)
            if fq:
                f1, f2, n_obs = fq.get(1, 0), fq.get(2, 0), sum(fq.values())
                assert f["chao1_total_windows"] == pytest.approx(
                    n_obs + f1 * f1 / (2 * f2) if f2 else n_obs + f1 * (f1 - 1) / 2)
            for th in (10, 20, 30, 40, 50):
                assert f[f"generations_ge_{th}"] == bf["generations_ge"].get(th, 0)
    assert m["per_attack"]["divergence"]["memorized_generations"] == 6   # 3 repeats + overlap + double + company
    assert set(m["per_variant"]["divergence"]) == {"poem", "company"}


@pytest.mark.parametrize("window", [10, 30])
def test_other_window_sizes(known_run, window):
    m = compute_metrics(known_run["run"], window_tokens=window)
    bf = brute_force(known_run["gens"], known_run["docs"], None, window=window)
    t = m["metrics"]
    assert t["memorized_generations"] == bf["memorized_generations"]
    assert t["memorized_tokens"] == bf["memorized_tokens"]
    assert t["unique_memorized_windows"] == bf["unique_memorized_windows"]
    assert t["unique_memorized_bytes"] == brute_unique_bytes(known_run["matches"], None, window=window)


def test_json_serialisable_and_versioned(known_run):
    m = compute_metrics(known_run["run"])
    s = json.dumps(m, allow_nan=False)
    assert json.loads(s)["schema_version"] == m["schema_version"]
    assert m["schema"] == "trawl-report-metrics"
    assert m["parameters"]["matcher_min_tokens"] == 10
    for k in ("memorized_token_fraction", "unique_memorized_windows"):
        assert k in m["definitions"]
    # the split-character passage: windows are exact byte strings, shown text is valid
    assert any("\u6f22" in s["text"] or "\ufffd" in s["text"] for s in m["top_spans"])


def test_observed_curve_is_cumulative_unique(known_run):
    m = compute_metrics(known_run["run"])
    curve = m["extrapolation"]["observed_curve"]
    assert curve[-1] == [len(known_run["gens"]), m["metrics"]["unique_memorized_windows"]]
    ys = [y for _, y in curve]
    assert ys == sorted(ys)
    ext = m["extrapolation"]["extrapolated_curve"]
    assert ext[0][1] == pytest.approx(m["metrics"]["unique_memorized_windows"])
    assert ext[-1][1] <= m["metrics"]["chao1_total_windows"] + 1e-9


def test_small_batches_give_the_same_figures(known_run, monkeypatch):
    """Streaming: per-batch partial aggregates (groups, threshold counts) merge exactly."""
    import reports.metrics as rm
    ref = compute_metrics(known_run["run"])
    monkeypatch.setattr(rm, "BATCH_ROWS", 2)
    got = compute_metrics(known_run["run"])
    for k in ("metrics", "per_attack", "per_variant", "extrapolation", "run_lengths", "categories"):
        assert got[k] == pytest.approx(ref[k]) if k == "metrics" else _approx_tree(got[k], ref[k]), k


def _approx_tree(a, b):
    """Equal trees, floats compared to 1e-12 relative (sums in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        return all(_approx_tree(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        return all(_approx_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12)
        return True
    assert a == b
    return True


def test_planted_run_figures(tmp_path):
    """The benchmark's planted runs: known spans, so known answers."""
    import pyarrow.parquet as pq

    from synthetic_runs import write_planted_run
    info = write_planted_run(str(tmp_path / "run"), 3000, part_rows=1000, row_group_rows=256, seed=3)
    m = compute_metrics(str(tmp_path / "run"))["metrics"]
    spans = pq.read_table(tmp_path / "run" / "matches.parquet").to_pylist()
    long_ = [s for s in spans if s["tokens"] >= W]
    assert m["generations"] == 3000 and m["generated_tokens"] == 3000 * 256
    assert m["memorized_generations"] == info["planted_memorized"] == len(long_)
    assert m["memorized_tokens"] == sum(s["tokens"] for s in long_)
    assert m["spans_ge_10"] == info["spans"] and m["spans_ge_50"] == len(long_)
    # windows: the planted passages are " wNNN" tokens, so windows are runs of 50 words
    per_gen = [set() for _ in long_]
    for ws, s in zip(per_gen, long_):
        toks = s["text"].split(" ")[1:]
        for i in range(len(toks) - W + 1):
            ws.add(" " + " ".join(toks[i:i + W]))
    assert m["unique_memorized_windows"] == len(set().union(*per_gen))
    cells = {(s["doc_id"], p) for s in long_ for p in range(s["doc_offset"], s["doc_offset"] + len(s["text"]))}
    assert m["unique_memorized_bytes"] == len(cells)


def test_reports_never_imports_extractor():
    import re as _re
    root = ROOT / "reports"
    for p in root.glob("*.py"):
        src = p.read_text()
        assert not _re.search(r"^\s*(from|import)\s+extractor\b", src, _re.M), p


def test_near_duplicate_clusters_against_exact_jaccard(known_run):
    """unique_memorized_documents (MinHash LSH) equals connected components of the
    exact-Jaccard >= 0.5 graph on the same shingles, on data whose pairs are far from 0.5."""
    from reports.neardup import _shingles
    m = compute_metrics(known_run["run"])
    texts = sorted({t.decode("utf-8", "replace") for t in _memorized_texts(known_run)})
    sh = [_shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for i in range(len(texts)):
        for j in range(i):
            jac = len(sh[i] & sh[j]) / len(sh[i] | sh[j])
            assert not 0.3 < jac < 0.7            # the data is unambiguous
            if jac >= 0.5:
                parent[find(i)] = find(j)
    expect = len({find(i) for i in range(len(texts))})
    assert m["near_duplicates"]["distinct_texts"] == len(texts)
    assert m["metrics"]["unique_memorized_documents"] == expect < len(texts)


def _memorized_texts(known_run):
    import hashlib
    comps = {}
    for i, g in enumerate(known_run["gens"]):
        comps[hashlib.sha1(f"run-test/{i}".encode()).hexdigest()[:16]] = token_offsets(g.tokens)[0]
    return [comps[x["request_id"]][x["span_start"]:x["span_end"]] for x in known_run["matches"] if x["tokens"] >= W]


def test_every_metric_is_defined(known_run):
    """An auditor signs what the report says: each figure has its definition in the report."""
    import re as _re
    m = compute_metrics(known_run["run"])
    defs = m["definitions"]
    names = set(m["metrics"])
    for f in m["per_attack"].values():
        names |= set(f)
    for name in names:
        generic = _re.sub(r"_ge_\d+$", "_ge_T", name)
        generic = _re.sub(r"^category_.*", "category_<name>", generic)
        assert generic in defs, name


def test_span_table_counts_generations_not_repeats(known_run):
    """The passage emitted twice inside one generation is one text from one generation; the
    passage doc0[0:70] comes from three generations."""
    m = compute_metrics(known_run["run"])
    by_text = {}
    for s in m["top_spans"]:
        by_text[s["text"]] = s
    twice = [s for s in m["top_spans"] if s["tokens"] == 55]
    assert twice and twice[0]["generations"] == 1 and len(twice[0]["request_ids"]) == 1
    three = [s for s in m["top_spans"] if s["tokens"] == 70 and s["doc_id"] == 0 and s["doc_offset"] == 0]
    assert three and three[0]["generations"] == 3


def test_remaining_figures_by_brute_force(known_run):
    """Observed accumulation curve, distinct source documents, run-length histogram."""
    m = compute_metrics(known_run["run"])
    # the observed curve: unique windows among the first g generations, recomputed for every g
    seen, curve = set(), {}
    for g_no, g in enumerate(known_run["gens"], start=1):
        comp, offs = token_offsets(g.tokens)
        ends = offs[1:] + [len(comp)]
        for i in range(len(offs) - W + 1):
            w = comp[offs[i]:ends[i + W - 1]]
            if any(w in d for d in known_run["docs"]):
                seen.add(w)
        curve[g_no] = len(seen)
    for x, y in m["extrapolation"]["observed_curve"]:
        assert curve[x] == y, x
    long_ = [x for x in known_run["matches"] if x["tokens"] >= W]
    assert m["metrics"]["unique_source_documents"] == len({x["doc_id"] for x in long_})
    hist = Counter(x["tokens"] for x in known_run["matches"])
    assert {int(k): v for k, v in m["run_lengths"]["counts_by_tokens"].items()} == dict(hist)
    assert m["metrics"]["memorized_spans"] == len(long_)


def test_divergence_rate(tmp_path):
    rng = random.Random(4)
    doc = "".join(" w%d" % rng.randrange(100) for _ in range(100))
    corpus = Corpus([doc])
    gens = [Gen([" z%d" % i for i in range(60)], "divergence", "poem" if i < 4 else "work",
                extra={"word": "poem", "diverged": i % 2 == 0, "diverged_at": 10 if i % 2 == 0 else None})
            for i in range(7)]
    gens.append(Gen([" z"] * 60, "special_chars", "repeat:{x100", extra={"escaped": True, "escaped_at": 3}))
    gens.append(Gen([" z"] * 60, "special_chars", "repeat:{x100", extra={"escaped": False, "escaped_at": None}))
    write_run(str(tmp_path / "run"), corpus, gens)
    m = compute_metrics(str(tmp_path / "run"))
    assert m["per_variant"]["divergence"]["poem"]["diverged_generations"] == 2       # i = 0, 2
    assert m["per_variant"]["divergence"]["work"]["diverged_generations"] == 2       # i = 4, 6
    assert m["per_attack"]["divergence"]["divergence_rate"] == pytest.approx(4 / 7)
    # special_chars (Bai et al. 2024) has no divergence notion: n/a, and outside the run-wide rate
    assert m["per_attack"]["special_chars"]["divergence_rate"] is None
    assert m["per_attack"]["special_chars"]["diverged_generations"] is None
    assert m["metrics"]["diverged_generations"] == 4      # run-wide: divergence rows only
    assert m["metrics"]["divergence_rate"] == pytest.approx(4 / 7)
