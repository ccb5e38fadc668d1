"""The per-text work of the report done batch by batch during the generations pass
(:class:`reports.texts.TextWork`, the ``after_batch`` hook of ``read_generations``) against the
all-at-once computations it replaces: the same distinct texts (first record's fields, generation
counts), the same class per (text, occurrences), the same content findings in the same order (and
so the same 10,000-value cap), the same MinHash signatures of the same first ``max_texts`` texts
(and so the same clusters), whatever the slices; and compute_metrics' whole output identical with
tiny batches, a tiny ``max_texts`` and work on every slice."""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest

from reports import taxonomy
from reports.categories import find_all_many
from reports.neardup import cluster_signatures, cluster_texts, signatures
from reports.texts import TextWork, content_categories, distinct_texts
from synthetic_runs import Corpus, Gen, write_run

W = 50


def _corpus(rng: random.Random):
    """Documents with e-mails, URLs, IP addresses, code lines and non-ASCII words; doc 1 is doc 0
    with a few words changed (near duplicates); doc 5 repeats a passage of doc 2 (occurrences 2)."""
    vocab = ([" w%d" % i for i in range(300)] + [" caf\u00e9", " \u65e5\u672c", " na\u00efve"]
             + [" mail%d@ex%d.org" % (i, i % 7) for i in range(40)] + [" https://site%d.example/p" % i for i in range(40)]
             + ["\n    x%d = f(y)" % i for i in range(40)] + [" 10.0.%d.1" % i for i in range(40)])
    docs = [[rng.choice(vocab) for _ in range(220)] for _ in range(4)]
    docs.insert(1, [(" changed%d" % i) if i % 37 == 5 else t for i, t in enumerate(docs[0])])
    docs.append([rng.choice(vocab) for _ in range(20)] + docs[2][30:120] + [rng.choice(vocab) for _ in range(20)])
    return docs


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    rng = random.Random(16)
    docs = _corpus(rng)
    corpus = Corpus(["".join(d) for d in docs], sources=[f"src/{i}.txt" for i in range(len(docs))])
    filler = [" z%d" % i for i in range(400)]
    passages = [(d, s, n) for d in range(len(docs)) for s, n in ((0, 60), (40, 55), (100, 70), (150, 52))
                if s + n <= len(docs[d])]
    gens = []
    for i in range(48):
        toks = [rng.choice(filler) for _ in range(12)]
        for _ in range(1 + (i % 3 == 0)):            # some generations hold two memorized spans
            d, s, n = passages[rng.randrange(len(passages))] if i % 4 else passages[i % 3]   # repeats
            toks += docs[d][s:s + n] + [rng.choice(filler) for _ in range(6)]
        gens.append(Gen(toks, "divergence", ("poem", "company")[i % 2], cost_usd=0.001))
    run = tmp_path_factory.mktemp("textwork") / "run"
    write_run(str(run), corpus, gens, parts=2)
    return str(run)


def _records(run: str, batch_rows: int = 5) -> list[dict]:
    from reports.inputs import generation_parts
    from reports.passes import read_generations
    from reports.spans import read_matches
    parts = generation_parts(run)
    mi = read_matches(run, parts, W, batch_rows, [])
    return read_generations(parts, mi, W, batch_rows, 20).span_records


def _slices(n: int, rng: random.Random):
    at = 0
    while at < n:
        step = rng.choice([0, 1, 1, 2, 3, 7])
        at = min(n, at + step)
        yield at


def _all_at_once(records: list[dict], max_texts: int, rmin: int = 6):
    uniq = distinct_texts(records)
    keys = list(dict.fromkeys((r["text"], r["occurrences"]) for r in records))
    classes = dict(zip(keys, taxonomy.classify_many([k[0] for k in keys], [k[1] for k in keys], rmin)))
    return uniq, classes, find_all_many(list(uniq)), cluster_texts(list(uniq), max_texts=max_texts)


def _extra_records() -> list[dict]:
    """Hand-made records: one text under two occurrence counts (two classes: the first record's
    sets the text's fields), a text of fewer than five words, texts whose e-mails overflow the
    categories' 10,000-value cap, a text repeated by another request later on."""
    low = "{ } { } { } { } ; ; ; ; " * 6
    out = []
    texts = [(low, 9), (low, 1), ("short text", 1), ("caf\u00e9 \u65e5\u672c na\u00efve " * 8, 2)]
    texts += [(" ".join(f"u{k}.{i}@host{k}.example.com" for i in range(260)), 1) for k in range(42)]
    texts += [(low, 1)]
    for i, (t, oc) in enumerate(texts):
        out.append({"request_id": f"x{i // 2}", "text": t, "occurrences": oc, "tokens": 60 + i, "gid": 0})
    return out


@pytest.mark.parametrize("max_texts", [1, 3, 7, 1000])
@pytest.mark.parametrize("min_pending", [1, 2, 5])
def test_text_work_in_slices_equals_all_at_once(text_run, max_texts, min_pending):
    records = _records(text_run) + _extra_records()
    texts = [r["text"] for r in records]
    assert len(set(texts)) > 7 and len(set(texts)) < len(texts)          # repeats, and more than max_texts
    ref_uniq, ref_classes, ref_found, ref_nd = _all_at_once(records, max_texts)
    rng = random.Random(max_texts * 10 + min_pending)
    work = TextWork(6, max_texts, min_pending=min_pending)
    for end in _slices(len(records) - 2, rng):
        work.add(records[:end])
    work.finish(records)
    assert list(work.uniq.items()) == list(ref_uniq.items())              # the same first records, in order
    assert work.classes == ref_classes
    assert work.found == ref_found
    sig = work.signatures()
    assert np.array_equal(sig, signatures(list(ref_uniq)[:max_texts]))
    nd = cluster_signatures(sig, len(work.uniq))
    assert nd == ref_nd
    # the categories section: same order, so the same values kept under the 10,000 cap
    totals_a, totals_b = {}, {}
    cats = content_categories(copy.deepcopy(work.uniq), totals_a, work.found)
    assert cats == content_categories(copy.deepcopy(ref_uniq), totals_b)
    assert totals_a == totals_b and cats["emails"]["unique_values"] >= 10_000


def test_findings_must_match_the_texts(text_run):
    """content_categories refuses findings that are not one per distinct text."""
    records = _records(text_run)
    work = TextWork(6, 100)
    work.add(records[:3])
    work.finish(records)
    assert len(work.found) == len(work.uniq)
    with pytest.raises(ValueError):
        content_categories(work.uniq, {}, work.found[:-1])


def _compare(run: str, monkeypatch, **kw) -> None:
    import reports.metrics as rm
    import reports.texts as rt
    from reports import compute_metrics

    def strip(m):
        d = {k: v for k, v in m.items() if k not in ("timings", "generated_at", "elapsed_s")}
        return json.dumps(d, sort_keys=False), json.dumps(m.memorized_texts)

    # batches of 3 rows in both (the cost sums' floats depend on the batches, not on the text work)
    monkeypatch.setattr(rm, "BATCH_ROWS", 3)
    with monkeypatch.context() as mp:                  # all at once: nothing during the pass
        mp.setattr(rt.TextWork, "__call__", lambda self, acc: None)
        ref = strip(compute_metrics(run, **kw))
    with monkeypatch.context() as mp:                  # a slice per batch, the work done on every one
        mp.setattr(rt, "MIN_PENDING_TEXTS", 1)
        got = strip(compute_metrics(run, **kw))
    assert got == ref


@pytest.mark.parametrize("max_texts", [2, 200_000])
def test_report_same_with_tiny_batches(text_run, monkeypatch, max_texts):
    _compare(text_run, monkeypatch, minhash_max_texts=max_texts)


def test_report_same_on_a_planted_run(tmp_path, monkeypatch):
    from synthetic_runs import write_planted_run
    write_planted_run(str(tmp_path / "run"), 1200, memorized_rate=0.2, part_rows=500, row_group_rows=64,
                      corpus_docs=6, doc_tokens=260, seed=5)   # few documents: passages repeat and overlap
    _compare(str(tmp_path / "run"), monkeypatch, minhash_max_texts=25)
