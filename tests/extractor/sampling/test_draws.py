"""Every stored sample is its own draw (issue "Every sample its own draw").

Against tests/draw_server.py, a server whose answer is a pure function of (prompt, sampling
parameters, seed + choice index) exactly as vLLM draws, two stored samples with the same text
are the same draw. So for every attack, with default and large ``samples``, with ``n`` and
prompt lists on and off, through the replica pool, and across a kill -9 and ``--resume``, the
stored completions must be pairwise distinct, and each must be what the server drew for its
prompt.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from draw_server import DrawServer, expected_text
from extractor.attacks import AttackSpec
from extractor.attacks.base import draw_seed
from extractor.sampling.budget import Budget
from extractor.sampling.run_folder import RunDir
from extractor.sampling import run_attacks
from sampler_helpers import stored_count, write_corpus
from repo import REPO

QUIET = dict(api_key_env=None, progress=False, log=lambda m: None, timeout=5.0, backoff_base=0.01,
             backoff_max=0.05, max_retries=8)


def _rows(run_dir) -> list[dict]:
    return sorted(RunDir(str(run_dir)).read_generations().to_pylist(), key=lambda r: r["request_id"])


def _assert_own_draws(rows: list[dict], planned: int, payloads: list[dict]) -> None:
    """Every planned generation stored once, pairwise distinct, each one the server's draw for its prompt."""
    assert len(rows) == planned and len({r["request_id"] for r in rows}) == planned
    copies = [t for t, c in Counter(r["completion"] for r in rows).items() if c > 1]
    assert not copies, f"{len(copies)} completions stored more than once, e.g. {copies[0]!r}"
    answered = set()
    for p in payloads:
        if p.get("seed") is None and float(p.get("temperature", 1.0)) > 0:
            continue  # the capability probe's unseeded requests
        prompts = p["prompt"] if isinstance(p["prompt"], list) else [p["prompt"]]
        for q in prompts:
            for k in range(int(p.get("n", 1) or 1)):
                answered.add((q, expected_text(q, p, p.get("seed"), k)))
    for r in rows:
        if json.loads(r["extra"]).get("calls"):   # chained calls (temperature decay): text of several draws
            continue
        assert (r["prompt"], r["completion"]) in answered, "a stored completion is not its prompt's draw"


def _corpus(tmp_path) -> str:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    docs = [" ".join(words[(i * 7 + j) % len(words)] + str(i * 100 + j) for j in range(120)) for i in range(12)]
    return write_corpus(str(tmp_path / "corpus"), docs=docs, shards=2)


def _attacks(tmp_path, large: bool) -> list[AttackSpec]:
    """Every attack with its default plan (short outputs); ``large``: many samples per prompt."""
    corpus = _corpus(tmp_path)
    if not large:
        # default samples per prompt (divergence 30, special_chars 5, unconditional 100, prefix 1,
        # discoverable 1), on fewer prompts than the defaults to keep the test short
        return [AttackSpec("divergence", {"words": ["poem", "company", "a", "{"], "max_tokens": 4,
                                          "repetitions": 50}),
                AttackSpec("special_chars", {"max_tokens": 4, "lengths": [10], "structural": ["{", "["],
                                             "special": ["@", "#"]}),
                AttackSpec("unconditional", {"max_tokens": 30}),
                AttackSpec("prefix", {"source": corpus, "max_tokens": 4, "prompts": 40}),
                AttackSpec("discoverable", {"corpus": corpus, "documents": 10, "prefix_tokens": 8,
                                            "suffix_tokens": 6}),
                AttackSpec("discoverable", {"corpus": corpus, "documents": 4, "prefix_tokens": 8,
                                            "suffix_tokens": 6, "samples": 40, "temperature": 1.0,
                                            "offset_tokens": 1})]
    return [AttackSpec("divergence", {"words": ["poem", "company", "a"], "samples": 100, "max_tokens": 4,
                                      "repetitions": 20}),
            AttackSpec("special_chars", {"strategies": ["repeat"], "structural": ["{"], "special": ["@"],
                                         "lengths": [10], "samples": 70, "max_tokens": 4}),
            AttackSpec("unconditional", {"samples": 150, "max_tokens": 24, "decay_tokens": 8}),
            AttackSpec("prefix", {"source": corpus, "prompts": 3, "samples": 50, "max_tokens": 4}),
            AttackSpec("discoverable", {"corpus": corpus, "documents": 2, "prefix_tokens": 8,
                                        "suffix_tokens": 6, "samples": 100, "temperature": 1.0})]


@pytest.mark.parametrize("large,use_n,lists", [
    (False, True, True), (False, False, True),
    (True, True, True), (True, True, False), (True, False, True), (True, False, False)],
    ids=["default-samples-n+lists", "default-samples-lists", "large-n+lists", "large-n", "large-lists", "large-plain"])
def test_every_attack_stores_distinct_draws(tmp_path, large, use_n, lists):
    specs = _attacks(tmp_path, large)
    with DrawServer() as srv:
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, attacks=specs,
                        concurrency=4, use_n=use_n, use_prompt_lists=lists, **QUIET)
        payloads = list(srv.payloads)
    assert s.status == "finished", s.line()
    rows = _rows(tmp_path / "run")
    assert {r["attack"] for r in rows} == {"divergence", "special_chars", "unconditional", "prefix", "discoverable"}
    _assert_own_draws(rows, s.planned, payloads)
    sent = [p for p in payloads if int(p.get("n", 1) or 1) > 1 or isinstance(p["prompt"], list)]
    if use_n or lists:
        assert sent, "the grouped paths (n, prompt lists) were not exercised"
    for p in payloads:  # no request carries one prompt twice
        if isinstance(p["prompt"], list):
            assert len(set(p["prompt"])) == len(p["prompt"])


def test_the_reported_command_stores_100_distinct_completions(tmp_path):
    """The issue's reproduction: unconditional top_k, 100 samples of the empty prompt (the defect:
    six copies of the prompt in one list under one seed stored only 20 distinct completions)."""
    with DrawServer() as srv:
        r = subprocess.run([sys.executable, "-m", "extractor.cli", "sample", "--endpoint", srv.base_url,
                            "--model", srv.model, "--attack", "unconditional", "--param", "variants=top_k",
                            "--param", "samples=100", "--param", "max_tokens=300", "--out", str(tmp_path / "run"),
                            "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": REPO})
        payloads = list(srv.payloads)
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "run")
    _assert_own_draws(rows, 100, payloads)
    gen = [p for p in payloads if p.get("max_tokens") == 300]
    assert sorted(int(p.get("n", 1)) for p in gen) == [4] + [16] * 6   # n groups: own requests, own seeds
    assert all(not isinstance(p["prompt"], list) for p in gen)


def test_seeds_are_consecutive_in_plan_order_so_n_choices_land_on_their_own_seeds(tmp_path):
    """Scheme 2: generation g of the plan has seed base + g; a request with n choices is sent with
    its first generation's seed, so choice k (seed + k under vLLM) is generation g + k's seed."""
    with DrawServer() as srv:
        run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model=srv.model, concurrency=2,
                    attacks=[AttackSpec("divergence", {"words": ["poem", "data"], "samples": 20, "max_tokens": 4,
                                                       "repetitions": 3})], max_prompts=1, **QUIET)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["seed_scheme"] == 3
    rows = _rows(tmp_path / "run")
    own = sorted(r["seed"] + json.loads(r["extra"]).get("n_choice", 0) for r in rows)
    base = draw_seed(cfg["run_id"], 0)
    assert own == list(range(base, base + 40))


def _plan(prompts_samples: list[tuple[str, int, dict]], base: int = 1000) -> list:
    """Jobs as plan_jobs makes them: consecutive samples per prompt, seed base + plan index."""
    from extractor.attacks import Job

    jobs = []
    for prompt, samples, params in prompts_samples:
        for k in range(samples):
            jobs.append(Job(attack="a", variant="", prompt=prompt, sample=k, params=dict(params),
                            request_id=f"{len(jobs):08d}", seed=base + len(jobs)))
    return jobs


def _draws_by_vllm_rule(units) -> list[tuple[str, int]]:
    """The (prompt, seed) draw of every generation when each request is sent with its leader's
    seed and choice k of every prompt of a list draws with seed + k (vLLM's server and engine)."""
    draws = []
    for unit in units:
        seed = unit[0][0].seed
        for part in unit:
            draws.extend((part[0].prompt, seed + k) for k in range(len(part)))
    return draws


def _check_units(units, jobs) -> None:
    """Every planned job in exactly one request; a list holds distinct prompts with one ``n`` and
    one set of parameters; every generation its own draw (no (prompt, seed) twice)."""
    got = [j.request_id for u in units for p in u for j in p]
    assert sorted(got) == sorted(j.request_id for j in jobs)
    for u in units:
        assert len({p[0].prompt for p in u}) == len(u)
        assert len({len(p) for p in u}) == 1
        assert len({json.dumps(p[0].params, sort_keys=True) for p in u}) == 1
        for p in u:   # an n-group: consecutive generations of one prompt
            assert [j.seed for j in p] == list(range(p[0].seed, p[0].seed + len(p)))
            assert {j.prompt for j in p} == {p[0].prompt}
    draws = _draws_by_vllm_rule(units)
    assert len(draws) == len(set(draws)) == len(jobs)


def test_scheme_3_lists_hold_the_kth_n_groups_of_different_prompts():
    """8 words x 1,250 samples at n = 16: the k-th n-groups of the 8 words share a request (79
    requests: 78 with n = 16, one with the 2 left of each word), where scheme 2's consecutive
    grouping sent 632; the seeds stay disjoint under vLLM's seed + k rule."""
    from extractor.sampling.plan import Grouping

    words = ["poem", "company", "book", "work", "data", "time", "year", "life"]
    jobs = _plan([(w, 1250, {"temperature": 1.0, "max_tokens": 8}) for w in words])
    units = list(Grouping(use_n=True, max_n=16, max_prompts=8, by_ordinal=True).units(jobs))
    assert len(units) == 79
    assert sorted(len(u[0]) for u in units) == [2] + [16] * 78
    assert all([p[0].prompt for p in u] == words for u in units)
    _check_units(units, jobs)
    old = list(Grouping(use_n=True, max_n=16, max_prompts=8, by_ordinal=False).units(jobs))
    assert len(old) == 632
    _check_units(old, jobs)


def test_scheme_3_grouping_keeps_draws_disjoint_on_random_plans():
    """Brute force over random plans: prompts repeated across attacks and parameters, uneven
    sample counts, greedy single samples, every n and list size: each generation its own draw."""
    import random

    from extractor.sampling.plan import Grouping

    rng = random.Random(16)
    for _ in range(300):
        spec = []
        for _ in range(rng.randint(1, 12)):
            prompt = rng.choice("abcdefg")
            params = rng.choice([{"temperature": 1.0}, {"temperature": 0.7, "top_k": 40}, {"temperature": 0}])
            spec.append((prompt, 1 if params["temperature"] == 0 else rng.randint(1, 40), params))
        jobs = _plan(spec, base=rng.randint(0, 10**6))
        g = Grouping(use_n=rng.random() < 0.8, max_n=rng.randint(1, 9), max_prompts=rng.randint(1, 9),
                     by_ordinal=True)
        units = list(g.units(jobs))
        _check_units(units, jobs)
        assert [u[0][0].seed for u in units] == sorted(u[0][0].seed for u in units)   # first n-group order


def test_runs_frozen_with_scheme_2_keep_consecutive_lists():
    """A run folder frozen with seed scheme 2 resumes with scheme 2's grouping (lists of
    consecutive n-groups), so it sends the very requests it began with."""
    from extractor.sampling.plan import Grouping
    from extractor.sampling.settings import SamplerSettings

    class Caps:
        n = prompt_list = True

    assert not Grouping.for_server(SamplerSettings(), Caps(), 2).by_ordinal
    assert Grouping.for_server(SamplerSettings(), Caps(), 3).by_ordinal
    jobs = _plan([(w, 16, {"temperature": 1.0}) for w in "abc"])
    units = list(Grouping.for_server(SamplerSettings(max_n=8), Caps(), 2).units(jobs))
    assert [[p[0].prompt for p in u] for u in units] == [["a"], ["a", "b"], ["b", "c"], ["c"]]
    units = list(Grouping.for_server(SamplerSettings(max_n=8), Caps(), 3).units(jobs))
    assert [[p[0].prompt for p in u] for u in units] == [["a", "b", "c"], ["a", "b", "c"]]


def test_a_run_frozen_with_the_old_seed_scheme_resumes_with_its_own_seeds(tmp_path):
    """A run folder written before scheme 2 (no seed_scheme in config.json) keeps its hashed seeds
    when resumed, so its stored and new generations come from one scheme."""
    from extractor.attacks.base import seed_for

    spec = [AttackSpec("divergence", {"words": ["poem"], "samples": 6, "max_tokens": 4, "repetitions": 3})]
    run = tmp_path / "run"
    with DrawServer() as srv:
        run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=spec, budget=Budget(max_generations=2),
                    use_n=False, **QUIET)
        first = {r["request_id"] for r in _rows(run)}
        cfg_path = run / "config.json"
        cfg = json.loads(cfg_path.read_text())
        del cfg["seed_scheme"]
        cfg_path.write_text(json.dumps(cfg))
        run_attacks(str(run), endpoint=srv.base_url, model=srv.model, attacks=spec, resume=True, use_n=False,
                    **QUIET)
    rows = _rows(run)
    new = [r for r in rows if r["request_id"] not in first]
    assert len(first) == 2 and len(rows) == 6 and len(new) == 4
    assert all(r["seed"] == seed_for(r["request_id"]) for r in new)
    assert all(r["seed"] != seed_for(r["request_id"]) for r in rows if r["request_id"] in first)


def test_greedy_attacks_refuse_more_than_one_sample():
    from extractor.errors import TrawlError

    for spec in (AttackSpec("divergence", {"temperature": 0, "samples": 2}),
                 AttackSpec("prefix", {"source": "x", "temperature": 0, "samples": 3}),
                 AttackSpec("discoverable", {"corpus": "x", "samples": 2})):
        with pytest.raises(TrawlError, match="greedy decoding is deterministic"):
            spec.resolve()
    AttackSpec("divergence", {"temperature": 0, "samples": 1}).resolve()


def test_replica_pool_gives_every_sample_its_own_draw(tmp_path):
    with DrawServer(delay=0.01) as a, DrawServer(delay=0.01) as b:
        s = run_attacks(str(tmp_path / "run"), endpoint=[a.base_url, b.base_url], model=a.model, concurrency=4,
                        attacks=[AttackSpec("unconditional", {"samples": 60, "max_tokens": 24, "decay_tokens": 8}),
                                 AttackSpec("divergence", {"words": ["poem", "x"], "samples": 40, "max_tokens": 4,
                                                           "repetitions": 5})], **QUIET)
        payloads = a.payloads + b.payloads
    assert s.status == "finished"
    rows = _rows(tmp_path / "run")
    assert len({r["endpoint"] for r in rows}) == 2
    _assert_own_draws(rows, 200, payloads)


def test_kill9_and_resume_store_exactly_what_an_uninterrupted_run_stores(tmp_path):
    """Prompt lists with n, injected 5xx and stalls, a kill -9 in the middle: the resumed run's rows
    equal an uninterrupted run's, row for row, and every one is its own draw."""
    args = ["--model", DrawServer.model, "--attack", "divergence", "--param", "words=a,b,c,d,e,f,g,h",
            "--param", "samples=20", "--param", "repetitions=3", "--param", "max_tokens=6",
            "--attack", "unconditional", "--param", "variants=top_k", "--param", "samples=40",
            "--param", "max_tokens=6", "--concurrency", "2", "--timeout", "1", "--max-retries", "8",
            "--max-prompts", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO}
    with DrawServer(faults=("500", "503", "stall"), max_failures=1, stall_s=1.5, delay=0.2) as srv:
        killed, clean = tmp_path / "killed", tmp_path / "clean"
        cmd = [sys.executable, "-m", "extractor.cli", "sample", "--endpoint", srv.base_url]
        proc = subprocess.Popen(cmd + ["--out", str(killed)] + args, env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while stored_count(killed) < 40:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sampler made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 40 <= stored_count(killed) < 200
        r = subprocess.run(cmd + ["--out", str(killed)] + args + ["--resume"], env=env, cwd=REPO,
                           capture_output=True, timeout=180)
        assert r.returncode == 0, r.stderr.decode()
        r = subprocess.run(cmd + ["--out", str(clean)] + args, env=env, cwd=REPO, capture_output=True, timeout=180)
        assert r.returncode == 0, r.stderr.decode()
        payloads = list(srv.payloads)
    a, b = _rows(killed), _rows(clean)
    key = lambda r: (r["request_id"], r["prompt"], r["completion"], r["seed"], tuple(r["token_offsets"]))  # noqa: E731
    assert [key(r) for r in a] == [key(r) for r in b]
    _assert_own_draws(a, 200, payloads)


def test_the_last_part_written_in_row_groups_stores_what_whole_parts_store(tmp_path, monkeypatch):
    """Parts written as their rows come (a row group per batch of answers, the rows converted to
    Arrow by the workers; the sampler does so for the run's last part) hold exactly the rows that
    parts written whole hold; the run's figures (kept from the parts written) equal those read
    back from the folder."""
    import pyarrow.parquet as pq

    import extractor.sampling.run_folder as rf
    from extractor.sampling.engine import Engine
    from extractor.sampling.summary import attack_summaries

    specs = [AttackSpec("divergence", {"words": ["poem", "company", "a"], "samples": 7, "max_tokens": 6}),
             AttackSpec("special_chars", {"max_tokens": 5, "lengths": [10], "structural": ["{"], "special": ["@"],
                                          "samples": 2})]
    keep = ("request_id", "attack", "variant", "prompt", "completion", "token_offsets", "token_logprobs", "seed",
            "completion_tokens", "finish_reason", "params", "extra")
    runs = {}
    with DrawServer() as srv:
        for name, group_tokens, flush_rows in (("whole", 1 << 30, 4096), ("groups", 1, 12)):
            monkeypatch.setattr(rf, "GROUP_TOKENS", group_tokens)
            # every part written as its rows come (the sampler does so for the run's last part only)
            monkeypatch.setattr(Engine, "_last_part", lambda self, fl: name == "groups")
            s = run_attacks(str(tmp_path / name), endpoint=srv.base_url, model=srv.model, attacks=specs,
                            concurrency=2, flush_rows=flush_rows, use_n=False, use_prompt_lists=False, **QUIET)
            assert s.status == "finished", s.line()
            runs[name] = ([{k: r[k] for k in keep} for r in _rows(tmp_path / name)], s.attacks)
    rows, figures = runs["groups"]
    assert rows == runs["whole"][0] and len(rows) == s.planned
    assert figures == runs["whole"][1] == attack_summaries(RunDir(str(tmp_path / "groups")))
    parts = RunDir(str(tmp_path / "groups")).part_paths()
    groups = [pq.ParquetFile(p).metadata.num_row_groups for p in parts]
    # a part holds 12 rows and a batch of answers at most 4 (one-row requests, 2 in flight, 2 waiting): each full part
    # took several batches, the ones before its last written as row groups of their own
    assert len(parts) > 1 and all(g > 1 for g in groups[:-1]), groups
