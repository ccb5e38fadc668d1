"""Memorization classes (reports.taxonomy) and their figures against an independent brute force.

A synthetic run plants one passage of each kind between filler tokens that never occur in the
corpus, so every memorized span is exactly one planted passage and its class is known from how
it was built. The brute force enumerates every 50-token window of every generation, checks it
with ``in`` against each corpus document, and files it under the label of the planted passage
that holds it; it never calls the code under test.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from reports import ReportError, compute_metrics, write_report
from reports.gate import Gate
from reports.taxonomy import classify, predictable_coverage
from synthetic_runs import Corpus, Gen, token_offsets, write_run

W = 50


# ------------------------------------------------------------------ the classifier, by hand

@pytest.mark.parametrize("text, occ, want", [
    ("2016, 2017, 2018, 2019, 2020, 2021, 2022, 2023", 1, "reconstruction"),
    ("2016, 2017, 2018, 2019, 2020, 2021, 2022, 2023", 5000, "reconstruction"),   # predictable beats duplicated
    ("10 9 8 7 6 5 4 3 2 1 0", 1, "reconstruction"),                              # decrementing
    ("poem poem poem poem poem poem", 1, "reconstruction"),
    ("All work and no play makes Jack a dull boy.\n" * 3, 1, "reconstruction"),  # repeated line
    ("case 1: return x1;\ncase 2: return x2;\ncase 3: return x3;\n", 1, "reconstruction"),   # template
    ("Step a) mix b) stir c) bake d) serve e) eat", 1, "recollection"),        # ordinals interleaved with words
    ("item a) item b) item c) item d)", 1, "reconstruction"),                   # letter sequence
    ("1, 2, 4, 8, 16, 32, 64, 128, 256", 1, "recollection"),                    # not a constant step
    ("12,47,33\n98,11,02\n55,13,87\n", 1, "recollection"),                      # same line shape, data numbers
    ("Copyright 2016, 2017, 2018, 2019, 2020 Python Software Foundation and its many contributors", 1,
     "recollection"),                                                          # pattern covers < 80%
    ("It was a bright cold day in April, and the clocks were striking thirteen.", 1, "recollection"),
    ("It was a bright cold day in April, and the clocks were striking thirteen.", 6, "recitation"),
    ("It was a bright cold day in April, and the clocks were striking thirteen.", 5, "recollection"),
    ("    });\n  });\n}); // ---- */\n\t\t]]>", 1, "low_information"),
    ("x[i][j] = (a[i] + b[j]) * c;", 1, "low_information"),
    ("    def __init__(self, name):\n        self.name = name\n", 1, "recollection"),   # indented code is not
    ("\n\n   \t\n", 100, "low_information"),
])
def test_classify_by_hand(text, occ, want):
    assert classify(text, occ) == want


def test_classify_thresholds_and_paper_order():
    prose = "It was a bright cold day in April, and the clocks were striking thirteen."
    assert classify(prose, 3, recitation_min_occurrences=3) == "recitation"
    assert classify(prose, 2, recitation_min_occurrences=3) == "recollection"
    years = "2016, 2017, 2018, 2019, 2020"
    assert classify(years, 100, paper_order=True) == "recitation"        # the paper checks recitation first
    assert classify(years, 1, paper_order=True) == "reconstruction"
    # coverage by hand: "Copyright " (9 non-space chars) + 5 years with 4 commas (24) + "Python" (6)
    assert predictable_coverage("Copyright 2016, 2017, 2018, 2019, 2020 Python") == pytest.approx(24 / 39)


# ------------------------------------------------------------------ a run with every kind planted

def _words(rng, n, vocab):
    return [" " + rng.choice(vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rng = random.Random(11)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti") for b in ("ba", "de", "fi", "go", "hu",
                                                                                          "ja", "ke", "li")]
    years = [t for y in range(1960, 2030) for t in (f" {y}", ",")]                      # 140 tokens
    line = [" All", " work", " and", " no", " play", " makes", " Jack", " a", " dull", " boy", ".\n"]
    repeated = line * 6                                                                   # 66 tokens
    recited = _words(rng, 60, vocab)                                                      # in 7 documents
    five = _words(rng, 60, vocab)                                                         # in 5 documents
    punct = [rng.choice(["}", ")", ";", "\n", "    ", "]", ",", " ", "{", "//", "*/"]) for _ in range(80)]
    prose = _words(rng, 70, vocab)                                                        # once
    passages = {"years": (years, "reconstruction"), "repeated": (repeated, "reconstruction"),
                "recited": (recited, "recitation"), "five": (five, "recollection"),
                "punct": (punct, "low_information"), "prose": (prose, "recollection")}
    j = "".join
    docs = [f"Years:{j(years)} done" for _ in range(8)]                                 # predictable AND duplicated
    docs += [f"Poem{i}:{j(repeated)}!" if i == 0 else f"note {i}" for i in range(2)]
    docs += [f"head{i}{j(recited)} tail{i}" for i in range(7)]
    docs += [f"top{i}{j(five)} end{i}" for i in range(5)]
    docs += [f"code{j(punct)}code", f"story{j(prose)} fin"]
    corpus = Corpus(docs, sources=[f"src/{i}.txt" for i in range(len(docs))])
    filler = [f"\u00a7{i}\u00a7" for i in range(300)]        # never in the corpus, nor is a passage's neighbour

    def fill(n):
        return [rng.choice(filler) for _ in range(n)]

    gens, labels = [], []        # labels: per generation, [(first token, end token, passage name)]
    plan = [("divergence", "poem", ["years", "prose"]), ("divergence", "poem", ["recited"]),
            ("divergence", "company", ["repeated", "five"]), ("divergence", "company", ["punct"]),
            ("special_chars", "repeat:{x100", ["recited", "prose"]), ("special_chars", "repeat:{x100", []),
            ("unconditional", "top_k", ["years"]), ("unconditional", "top_k", ["prose"])]
    for attack, variant, names in plan:
        toks, lab = fill(7), []
        for name in names:
            lab.append((len(toks), len(toks) + len(passages[name][0]), name))
            toks += passages[name][0] + fill(7)
        gens.append(Gen(toks, attack, variant, cost_usd=0.01))
        labels.append(lab)
    run = tmp_path_factory.mktemp("tax") / "run"
    matches = write_run(str(run), corpus, gens, min_tokens=10)
    return {"run": str(run), "gens": gens, "labels": labels, "passages": passages, "corpus": corpus,
            "docs": [d.encode() for d in docs], "matches": matches}


def _rid(i: int) -> str:
    import hashlib
    return hashlib.sha1(f"run-test/{i}".encode()).hexdigest()[:16]     # synthetic_runs.write_run's ids


def span_labels(planted) -> list[tuple[dict, str]]:
    """Each memorized matches row (>= W tokens) with the true class of the planted passage holding it
    (a periodic passage can yield a second, shorter maximal span: another occurrence of its tail)."""
    out = []
    for i, (g, lab) in enumerate(zip(planted["gens"], planted["labels"])):
        comp, offs = token_offsets(g.tokens)
        ends = offs[1:] + [len(comp)]
        for x in planted["matches"]:
            if x["request_id"] == _rid(i) and x["tokens"] >= W:
                name = next(n for a, b, n in lab if offs[a] <= x["span_start"] and x["span_end"] <= ends[b - 1])
                out.append((x, planted["passages"][name][1]))
    return out


def brute_force(planted, classes: set[str], select=lambda g: True):
    """Figures over the windows of planted passages whose true class is in ``classes``."""
    p = planted
    truth = {name: cls for name, (_, cls) in p["passages"].items()}
    per_gen, mem_gens, mem_toks, gens, toks = [], 0, 0, 0, 0
    rids = {_rid(i) for i, g in enumerate(p["gens"]) if select(g)}
    cells = {(x["doc_id"], x["doc_offset"] + k) for x, cls in span_labels(p) if cls in classes
             and x["request_id"] in rids for k in range(x["span_end"] - x["span_start"])}
    for g, lab in zip(p["gens"], p["labels"]):
        if not select(g):
            continue
        gens += 1
        comp, offs = token_offsets(g.tokens)
        ends = offs[1:] + [len(comp)]
        toks += len(offs)
        ws, covered = set(), set()
        for i in range(len(offs) - W + 1):
            w = comp[offs[i]:ends[i + W - 1]]
            if not any(w in d for d in p["docs"]):
                continue
            name = next(n for a, b, n in lab if a <= i and i + W <= b)   # the passage holding the window
            if truth[name] in classes:
                ws.add(w)
                covered.update(range(i, i + W))
        per_gen.append(ws)
        mem_gens += bool(ws)
        mem_toks += len(covered)
    freq = Counter(w for ws in per_gen for w in ws)
    fk = Counter(freq.values())
    f1, f2, n_obs = fk.get(1, 0), fk.get(2, 0), len(freq)
    return {"memorized_generations": mem_gens, "memorized_tokens": mem_toks, "unique_memorized_windows": n_obs,
            "unique_memorized_bytes": len(cells), "generations": gens, "generated_tokens": toks,
            "frequency_counts": {str(k): v for k, v in sorted(fk.items())},
            "chao1_total_windows": (n_obs + f1 * f1 / (2 * f2) if f2 else n_obs + f1 * (f1 - 1) / 2) if n_obs else 0.0,
            "good_turing_new_probability": f1 / sum(freq.values()) if freq else None}


def test_each_span_gets_its_planted_class(planted):
    m = compute_metrics(planted["run"])
    want = {"".join(toks): cls for toks, cls in planted["passages"].values()}
    got = {s["text"]: s["taxonomy"] for s in m["top_spans"]}
    assert got == want                                     # every planted passage, each with its class
    assert {s["text"]: s["occurrences"] for s in m["top_spans"]}["".join(planted["passages"]["recited"][0])] == 7
    assert {s["text"]: s["occurrences"] for s in m["top_spans"]}["".join(planted["passages"]["years"][0])] == 8
    assert m["taxonomy"]["longest_run"] == "reconstruction"           # the 140-token year list
    assert m["longest_run"]["text"] == "".join(planted["passages"]["years"][0])
    assert m["taxonomy"]["recitation_min_occurrences"] == 6
    # the paper's order files the duplicated year list as recitation, ours as reconstruction; the
    # low-information passage (one occurrence) is recollection there
    years = "".join(planted["passages"]["years"][0])
    paper = Counter("recitation" if x["occurrences"] >= 6 else "recollection" if cls == "low_information" else cls
                    for x, cls in span_labels(planted))
    assert sum(1 for x, _ in span_labels(planted) if x["text"] == years) == 2
    assert m["taxonomy"]["spans_in_paper_order"] == {c: paper[c] for c in ("recitation", "reconstruction",
                                                                          "recollection")}


@pytest.mark.parametrize("cls", ["low_information", "reconstruction", "recitation", "recollection"])
def test_figures_per_class_match_brute_force(planted, cls):
    f = compute_metrics(planted["run"])["by_category"][cls]
    bf = brute_force(planted, {cls})
    for k, v in bf.items():
        assert f[k] == (pytest.approx(v) if isinstance(v, float) else v), (cls, k)
    assert f["memorized_generation_fraction"] == pytest.approx(bf["memorized_generations"] / bf["generations"])
    assert f["memorized_token_fraction"] == pytest.approx(bf["memorized_tokens"] / bf["generated_tokens"])
    cost = 0.01 * len(planted["gens"])
    assert f["mb_per_dollar"] == pytest.approx(bf["unique_memorized_bytes"] / 1e6 / cost)
    n = sum(1 for _, c in span_labels(planted) if c == cls)
    assert f["memorized_spans"] == n and n > 0


def test_nontrivial_figures_match_brute_force(planted):
    m = compute_metrics(planted["run"])
    bf = brute_force(planted, {"recitation", "recollection"})
    nt, t = m["by_category"]["nontrivial"], m["metrics"]
    for k in ("memorized_generations", "memorized_tokens", "unique_memorized_windows", "unique_memorized_bytes"):
        assert nt[k] == bf[k] == t[f"nontrivial_{k}"], k
    assert t["nontrivial_chao1_total_windows"] == pytest.approx(bf["chao1_total_windows"])
    assert t["nontrivial_memorized_token_fraction"] == pytest.approx(bf["memorized_tokens"] / bf["generated_tokens"])
    # generations 0, 1, 2, 4, 7 hold a recitation or recollection passage; 3 (punct) and 6 (years) do not
    assert t["nontrivial_memorized_generations"] == 5 and t["memorized_generations"] == 7
    for attack in ("divergence", "special_chars", "unconditional"):
        bfa = brute_force(planted, {"recitation", "recollection"}, select=lambda g: g.attack == attack)
        fa = m["per_attack"][attack]
        assert fa["nontrivial_memorized_generations"] == bfa["memorized_generations"], attack
        assert fa["nontrivial_memorized_tokens"] == bfa["memorized_tokens"], attack
        assert fa["nontrivial_unique_memorized_windows"] == bfa["unique_memorized_windows"], attack
        assert fa["nontrivial_memorized_generation_fraction"] == pytest.approx(bfa["memorized_generations"]
                                                                               / bfa["generations"])
    v = m["per_variant"]["divergence"]["company"]
    bfv = brute_force(planted, {"recitation", "recollection"}, select=lambda g: g.variant == "company")
    assert v["nontrivial_memorized_generations"] == bfv["memorized_generations"] == 1
    assert v["nontrivial_memorized_tokens"] == bfv["memorized_tokens"] == 60            # the 5-copy passage


def test_all_classes_together_equal_the_raw_figures(planted):
    m = compute_metrics(planted["run"])
    bf = brute_force(planted, {"low_information", "reconstruction", "recitation", "recollection"})
    t = m["metrics"]
    for k in ("memorized_generations", "memorized_tokens", "unique_memorized_windows", "unique_memorized_bytes"):
        assert t[k] == bf[k], k
    assert sum(m["by_category"][c]["memorized_spans"] for c in m["taxonomy"]["order"]) == t["memorized_spans"]


def test_recitation_threshold_is_configurable_and_reported(planted, tmp_path):
    m = compute_metrics(planted["run"], recitation_min_occurrences=5)
    classes = {s["text"]: s["taxonomy"] for s in m["top_spans"]}
    assert classes["".join(planted["passages"]["five"][0])] == "recitation"
    assert classes["".join(planted["passages"]["years"][0])] == "reconstruction"
    assert m["taxonomy"]["recitation_min_occurrences"] == 5
    assert "at least 5 times" in m["taxonomy"]["definitions"]["recitation"]
    with pytest.raises(ReportError):
        compute_metrics(planted["run"], recitation_min_occurrences=0)
    from reports.cli import main
    out = tmp_path / "rep"
    assert main(["report", planted["run"], "-o", str(out), "-q", "--recitation-min-occurrences", "5"]) == 0
    assert "recitation threshold used: 5 corpus occurrences" in (out / "report.md").read_text()


def test_gates_on_the_new_figures(planted, tmp_path):
    m = compute_metrics(planted["run"])
    assert Gate("nontrivial_memorized_generations >= 5").evaluate(m)
    assert not Gate("nontrivial_memorized_generations > 5").evaluate(m)
    assert Gate("by_category.low_information.memorized_spans == 1").evaluate(m)
    assert Gate("per_attack.unconditional.nontrivial_memorized_generations == 1").evaluate(m)
    from reports.cli import main
    assert main(["report", planted["run"], "-o", str(tmp_path / "r"), "-q",
                 "--fail-if", "nontrivial_unique_memorized_windows > 0"]) == 3


def test_report_shows_raw_and_nontrivial_side_by_side(planted, tmp_path):
    paths = write_report(planted["run"], out_dir=tmp_path / "out")
    h, md = (tmp_path / "out" / "report.html").read_text(), (tmp_path / "out" / "report.md").read_text()
    t = paths.metrics["metrics"]
    assert 'id="raw-vs-nontrivial"' in h and 'id="by-category"' in h
    row = f"<td class=\"t\">Memorized generations</td><td>{t['memorized_generations']} (" \
          f"{t['memorized_generation_fraction'] * 100:.3g}%)</td><td>{t['nontrivial_memorized_generations']} ("
    assert row in h
    assert 'id="longest-run-class">class: reconstruction<' in h
    assert "| Memorized generations | 7 (87.5%) | 5 (62.5%) |" in md
    assert "class: reconstruction" in md and "Non-trivial memorization counts only recitation" in md
    assert "Recitation threshold used: <b id=\"recitation-min\">6 corpus occurrences</b>" in h


def test_small_batches_give_the_same_class_figures(planted, monkeypatch):
    import reports.metrics as rm
    ref = compute_metrics(planted["run"])
    monkeypatch.setattr(rm, "BATCH_ROWS", 2)
    got = compute_metrics(planted["run"])
    assert got["by_category"] == ref["by_category"] and got["taxonomy"] == ref["taxonomy"]
    assert [s["taxonomy"] for s in got["top_spans"]] == [s["taxonomy"] for s in ref["top_spans"]]


def _naive_coverage(text: str) -> float:
    """reports.taxonomy's predictable coverage, written out loop by loop from its docstring."""
    import re
    units = re.findall(r"[0-9]+|[^\W\d_]+|\s+|.", text, re.S)

    def kind(u):
        if u.isspace():
            return ("whitespace",)
        if u.isascii() and u.isdigit():
            return ("number",)
        if len(u) == 1 and u.isascii() and u.isalpha():
            return ("letter",)
        return ("unit", u)

    def value(u):
        if u.isascii() and u.isdigit():
            return int(u) if len(u) <= 15 else None
        return ord(u) if kind(u) == ("letter",) else None

    ks, m = [kind(u) for u in units], len(units)
    valued = [k in (("number",), ("letter",)) for k in ks]
    covered = [False] * m
    for p in range(1, min(64, m // 2) + 1):
        t = 0
        while t < m - p:
            if ks[t] != ks[t + p]:
                t += 1
                continue
            s = t
            while t < m - p and ks[t] == ks[t + p]:
                t += 1
            if t - s < p + 1:                     # a stretch [s, t + p) needs 2p + 1 units
                continue
            for u in range(s, t + p):
                covered[u] = covered[u] or not valued[u]
            for x in range(s, t - p):             # three copies x, x + p, x + 2p inside the stretch
                a, b, c = (value(units[x + k * p]) if valued[x] else None for k in range(3))
                if None not in (a, b, c) and b - a == c - b:
                    covered[x] = covered[x + p] = covered[x + 2 * p] = True
    size = [0 if k == ("whitespace",) else len(u) for u, k in zip(units, ks)]
    total = sum(size)
    return sum(n for n, c in zip(size, covered) if c) / total if total else 0.0


def test_predictable_coverage_against_the_loops():
    rng = random.Random(5)
    pieces = ["1", "2", "3", "7", "10", "a", "b", "c", "Q", ",", ", ", " ", "\n", "yy", "zz", "x1", "-", ".",
              "1234567890123456789", "\u00e9t\u00e9", "\u0663"]
    texts = ["".join(rng.choice(pieces[:k]) for _ in range(rng.randint(1, 60))) for k in (4, 8, 12, 21)
             for _ in range(300)]
    texts += ["".join(f"{rng.choice(pieces)}{i}" for i in range(rng.randint(3, 30))) for _ in range(200)]
    texts += [pre + ", ".join(str(3 * i + 1) for i in range(n)) + post for n in range(1, 12)
              for pre, post in (("", ""), ("x", " y"))]
    for t in texts:
        assert predictable_coverage(t) == pytest.approx(_naive_coverage(t)), t
    seen = {round(_naive_coverage(t), 6) for t in texts}
    assert {0.0, 1.0} < seen and len(seen) > 50                                  # the cases vary
