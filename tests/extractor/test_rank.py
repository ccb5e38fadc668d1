"""``trawl rank``: scores.parquet against hand computation over a server with known logprobs
(tests/echo_server.py), resume, budget and price, bad answers, and the embedded model in process."""
from __future__ import annotations

import json
import math
import os
import random
import zlib

import pyarrow.parquet as pq
import pytest

from reports import ranking
from tests.echo_server import EchoServer, echo_tokens, known_logprob
from tests.repo import one_line_error, trawl
from tests.synthetic_runs import Corpus, Gen, write_run

MEMBERS = [
    "We the People of the United States, in Order to form a more perfect Union, establish Justice, insure "
    "domestic Tranquility, provide for the common defence, promote the general Welfare, and secure the "
    "Blessings of Liberty to ourselves and our Posterity, do ordain and establish this Constitution for the "
    "United States of America.",
    "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me "
    "beside the still waters. He restoreth my soul: he leadeth me in the paths of righteousness for his "
    "name's sake.",
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal.",
]


def _words(t):
    w = t.split(" ")
    return [w[0]] + [" " + x for x in w[1:]]


def make_run(path, shuffled=True, extra_texts=()):
    """Members (in the corpus) and word-shuffled non-members; returns the texts by request order."""
    rng = random.Random(3)
    gens, texts = [], []
    for t in MEMBERS:
        gens.append(Gen(_words(t)))
        texts.append(t)
        if shuffled:
            w = t.split(" ")
            rng.shuffle(w)
            gens.append(Gen(_words(" ".join(w))))
            texts.append(" ".join(w))
    for t in extra_texts:
        gens.append(Gen(_words(t)))
        texts.append(t)
    write_run(str(path), Corpus(MEMBERS), gens, min_tokens=10)
    return texts


def read_scores(run):
    t = pq.read_table(os.path.join(run, "scores.parquet"))
    return {r["request_id"]: r for r in t.to_pylist()}, {k.decode(): v.decode() for k, v in t.schema.metadata.items()
                                                       if not k.startswith(b"ARROW:")}


def _completions(run):
    t = pq.read_table(os.path.join(run, "generations"))
    return {r["request_id"]: r["completion"] for r in t.to_pylist()}


def hand_signals(text, k=0.2, window=50):
    toks = echo_tokens(text)
    lps = [known_logprob(t) for t in toks][1:]                 # the server leaves the first one null
    lower = [known_logprob(t) for t in echo_tokens(text.lower())][1:]
    logp = -sum(lps) / len(lps)
    w = min(window, len(lps))
    best = max(sum(lps[i:i + w]) / w for i in range(len(lps) - w + 1))
    low = sorted(lps)[:max(1, int(len(lps) * k))]
    # min-k%++ from the top-2 (the token and " alt" at -4) renormalised
    z = []
    for v in lps:
        ws = [math.exp(v), math.exp(-4.0)]
        ws = [x / sum(ws) for x in ws]
        mu = ws[0] * v + ws[1] * -4.0
        var = ws[0] * (v - mu) ** 2 + ws[1] * (-4.0 - mu) ** 2
        if var > 0:
            z.append((v - mu) / math.sqrt(var))
    zl = sorted(z)[:max(1, int(len(z) * k))]
    return {"perplexity": math.exp(logp), "zlib_ratio": len(zlib.compress(text.encode())) / logp,
            "lower_ratio": (-sum(lower) / len(lower)) / logp, "window_ppl": math.exp(-best),
            "min_k": sum(low) / len(low), "min_k_pp": sum(zl) / len(zl) if zl else float("nan"),
            "scored_tokens": len(lps)}


def test_rank_over_http_equals_hand_computation(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    with EchoServer() as srv:
        r = trawl("rank", run, "--endpoint", srv.base_url, "--model", "m", "--window", "5", "--k", "30",
                  "--window-tokens", "10", "--json", "--price-input-per-mtok", "2", "--price-output-per-mtok", "10",
                  "--batch", "2", "--concurrency", "2")
        assert r.returncode == 0, r.stderr
        reqs = [q for q in srv.requests if q.get("echo")]
    rows, meta = read_scores(str(run))
    comps = _completions(str(run))
    assert set(rows) == set(comps)
    for rid, row in rows.items():
        want = hand_signals(comps[rid], k=0.3, window=5)
        for key, v in want.items():
            assert row[key] == pytest.approx(v, rel=1e-9, abs=1e-12), (key, comps[rid])
        assert row["ref_ratio"] is None and row["min_k_pp_exact"] is False and row["error"] is None
    out = json.loads(r.stdout)
    assert out["rows"] == 6 and out["new"] == 6 and not out["exact_vocab_stats"] and "top-20" in out["notes"][0]
    # billing: prompt tokens as the scorer counted them (echo tokens but the generated one), one generated token a text
    ptoks = sum(len(echo_tokens(q)) for req in reqs for q in ([req["prompt"]] if isinstance(req["prompt"], str) else req["prompt"]))
    assert int(meta["prompt_tokens"]) == ptoks and out["prompt_tokens"] == ptoks
    ctoks = int(meta["completion_tokens"])
    assert ctoks == len([1 for rid in rows for _ in (0, 1) if _ == 0 or comps[rid].lower() != comps[rid]])
    assert float(meta["cost_usd"]) == pytest.approx((ptoks * 2 + ctoks * 10) / 1e6)
    # evaluation: against the 3 memorized generations, every ranking's AUC equals brute force on the file
    mem = ranking.memorized_ids(str(run / "matches.parquet"), 10)
    assert len(mem) == 3
    for name, e in out["evaluation"].items():
        col, tf, _ = ranking.RANKINGS[name]
        s = [tf(rows[rid][col]) if rows[rid][col] is not None else -math.inf for rid in rows]
        lab = [rid in mem for rid in rows]
        pairs = [(a, b) for a, la in zip(s, lab) if la for b, lb in zip(s, lab) if not lb]
        assert e["auc"] == pytest.approx(sum(1 if a > b else .5 if a == b else 0 for a, b in pairs) / len(pairs))


def test_rank_resumes_after_a_budget_stop_and_a_dead_server(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    with EchoServer() as srv:
        r = trawl("rank", run, "--endpoint", srv.base_url, "--model", "m", "--batch", "1", "--concurrency", "1",
                  "--max-tokens", "250", "--no-lowercase")
        assert r.returncode == 0 and "stopped early (max_tokens)" in r.stderr, r.stderr
    rows, meta = read_scores(str(run))
    assert 0 < len(rows) < 6 and meta["complete"] == "false" and int(meta["prompt_tokens"]) <= 250
    first = dict(rows)
    with EchoServer(fail_after=1) as srv:     # one answer, then the server fails
        r = trawl("rank", run, "--endpoint", srv.base_url, "--model", "m", "--batch", "1", "--concurrency", "1",
                  "--no-lowercase", "--max-retries", "0")
        one_line_error(r, "scoring stopped")
    rows2, _ = read_scores(str(run))
    assert len(rows2) == len(first) + 1 and all(repr(rows2[k]) == repr(v) for k, v in first.items())
    with EchoServer() as srv:
        r = trawl("rank", run, "--endpoint", srv.base_url, "--model", "m", "--no-lowercase")
        assert r.returncode == 0, r.stderr
        scored_again = sum(len(q["prompt"]) if isinstance(q["prompt"], list) else 1 for q in srv.requests if q.get("echo"))
    rows3, meta3 = read_scores(str(run))
    assert len(rows3) == 6 and meta3["complete"] == "true" and scored_again == 6 - len(rows2)
    assert all(repr(rows3[k]) == repr(v) for k, v in rows2.items())
    # other settings: refused without --restart
    with EchoServer() as srv:
        one_line_error(trawl("rank", run, "--endpoint", srv.base_url, "--model", "m", "--k", "50", "--no-lowercase"),
                       "--restart")


def test_bad_answers_and_bad_files_are_one_line(tmp_path):
    run = tmp_path / "run"
    make_run(run, shuffled=False)
    for body in (b"not json", b'{"choices": [{"text": "x"}]}', b'{"choices": "x"}'):
        with EchoServer(bad_body=body) as srv:
            # the probe's completion is answered badly too: either the probe or the scoring says so in one line
            r = trawl("rank", run, "--endpoint", srv.base_url, "--model", "m", "--max-retries", "0")
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    with EchoServer() as srv:
        assert trawl("rank", run, "--endpoint", srv.base_url, "--model", "m").returncode == 0
        path = run / "scores.parquet"
        data = path.read_bytes()
        rng = random.Random(5)
        for _ in range(8):
            b = bytearray(data)
            for _ in range(3):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(b))
            r = trawl("rank", run, "--endpoint", srv.base_url, "--model", "m")
            if r.returncode != 0:
                one_line_error(r, "scores")
            else:       # damage the reader did not notice must not change a figure
                rows, _ = read_scores(str(run))
                assert len(rows) == 3
        path.write_bytes(data)
    one_line_error(trawl("rank", tmp_path / "nope"), "no such run folder")
    one_line_error(trawl("rank", run, "--k", "0"), "--k")
    one_line_error(trawl("rank", run, "--reference-model", "x"), "--reference-endpoint")


@pytest.mark.slow
def test_rank_embedded_model_in_process_and_over_its_server(tmp_path, local_server):
    """The embedded model scores members (texts it reproduces) and word-shuffled non-members, in
    process (exact) and over its llama.cpp server (echo); both give the same perplexities where the
    server scores (all tokens but the first), and the evaluation is printed. AUCs are measured,
    not asserted (tests/README.md: no research result beyond what is measured)."""
    run = tmp_path / "run"
    make_run(run)
    gguf = str(local_server.model_path)
    r = trawl("rank", run, "--model-file", gguf, "--window-tokens", "20", "--json")
    assert r.returncode == 0, r.stderr
    local = json.loads(r.stdout)
    assert local["exact_vocab_stats"] and local["rows"] == 6
    rows_local, meta = read_scores(str(run))
    assert meta["exact_vocab_stats"] == "true" and all(v["min_k_pp_exact"] for v in rows_local.values())
    comps = _completions(str(run))
    for rid, row in rows_local.items():
        lps = row["token_logprobs"]
        assert row["perplexity"] == pytest.approx(ranking.perplexity(lps), rel=1e-6)
        assert row["zlib_ratio"] == pytest.approx(len(zlib.compress(comps[rid].encode())) / math.log(row["perplexity"]))
    http_run = tmp_path / "http"
    make_run(http_run, shuffled=False)   # llama-cpp-python computes echo logprobs slowly: the members suffice
    r = trawl("rank", http_run, "--endpoint", local_server.base_url, "--model", local_server.model,
              "--window-tokens", "20", "--json", "--scorer", "http", "--no-lowercase", "--top-k", "1",
              "--concurrency", "1")
    assert r.returncode == 0, r.stderr
    rows_http, _ = read_scores(str(http_run))
    assert len(rows_http) == 3
    by_text = {comps[rid]: row for rid, row in rows_local.items()}
    http_comps = _completions(str(http_run))
    for rid, row in rows_http.items():
        a, b = row["token_logprobs"], by_text[http_comps[rid]]["token_logprobs"]
        assert math.isnan(a[0]) and len(a) == len(b)
        assert max(abs(x - y) for x, y in zip(a[1:], b[1:])) < 1e-3
    print("embedded model AUCs (in process):", {k: v["auc"] for k, v in local["evaluation"].items()})
