"""The discoverable attack's exact (n,p) step on the embedded model: greedy p_z = 1 for a passage it
continues verbatim; exact p_z under a sampled scheme against a large Monte Carlo estimate from
llama.cpp's own sampler; the HTTP (echo) scorer against the in-process one."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from extractor.attacks import AttackSpec
from extractor.attacks.discoverable_np import FILE, _split, document_pz, maybe_score, sampling_order, token_hits
from extractor.sampling import run_attacks
from reports.extraction_np import Scheme
from tests.sampler_helpers import write_corpus

PREAMBLE = ("We the People of the United States, in Order to form a more perfect Union, establish Justice, insure "
            "domestic Tranquility, provide for the common defence, promote the general Welfare, and secure the "
            "Blessings of Liberty to ourselves and our Posterity.")


def test_sampling_order_by_server():
    assert sampling_order("llama_cpp")[0] == "llama.cpp"
    assert sampling_order("llama_cpp_inprocess")[0] == "llama.cpp"
    assert sampling_order("vllm")[0] == "vllm"
    assert "assumed" in sampling_order(None)[1]


def test_token_hits_count_only_the_targets_own_tokens():
    """p_z is the probability of the target's tokens as the scorer split them; a sample whose text starts with
    the target through another split, or whose last target token runs past it (',"' for ','), is a text hit
    and not a token hit. Offsets are bytes: "é" is two."""
    target = " a perfect Union,"
    own = [0, 2, 10, 16]                                    # " a", " perfect", " Union", ","
    d = {"splits": {}, "unsplit": 0}
    for text, offsets in ((" a perfect Union, establish", own + [17]),      # the target's tokens, then more
                          (" a perfect Union,", own),                        # the target's tokens, nothing after
                          (' a perfect Union,"', own),                       # ',"': runs past the target
                          (" a perfect Union, x", [0, 2, 10, 13, 16, 17]),   # " Un" + "ion": another split
                          (" a perfect", [0, 2])):                           # not a text hit at all
        split = _split(text, offsets, target)
        d["splits"][split] = d["splits"].get(split, 0) + 1
    assert token_hits(d, own) == 2
    assert token_hits(d, [0, 2, 10]) == 0 and token_hits(d, None) is None
    assert _split("é ab", [0, 2], "é a") == ((0, 2), True)          # " ab" starts at byte 2, ends past "é a"
    assert _split("é a", [0, 2], "é a") == ((0, 2), False)
    assert _split(" a perfect", None, " a") is None
    d["unsplit"] = 1                                         # one hit without offsets: the count is unknown
    assert token_hits(d, own) is None


def test_greedy_runs_are_not_scored_unless_asked():
    class Caps:
        score, full_distribution, server = "echo", False, "llama_cpp"

    calls = []
    resolved = [{"name": "discoverable", "params": {"temperature": 0.0, "exact_np": "auto"}}]
    assert maybe_score("/nonexistent", resolved, None, Caps(), None, calls.append) is None
    resolved = [{"name": "discoverable", "params": {"temperature": 1.0, "exact_np": "off"}}]
    assert maybe_score("/nonexistent", resolved, None, Caps(), None, calls.append) is None
    assert calls == []


def test_chat_runs_keep_the_monte_carlo_figure():
    """A chat run (or raw-template mode) drew its samples inside a chat template that the scorer does not
    apply: scoring prefix + target as plain text would be the probability of another context."""
    class Caps:
        score, full_distribution, server = "in_process", True, "llama_cpp"
        api = "completions"

    class Scorer:   # would be used if the step went ahead
        def __getattr__(self, name):
            raise AssertionError(f"scorer used: {name}")

    sampled = {"name": "discoverable", "params": {"temperature": 1.0, "exact_np": "on"}}
    for caps_api, template in (("chat", None), ("completions", "/models/x.gguf")):
        Caps.api = caps_api
        resolved = [dict(sampled, params=dict(sampled["params"], chat_template=template))]
        log = []
        assert maybe_score("/nonexistent", resolved, Scorer(), Caps(), None, log.append) is None
        assert len(log) == 1 and "chat template" in log[0] and "Monte Carlo" in log[0]


@pytest.mark.slow
def test_run_writes_exact_pz_greedy_verbatim_is_one(local_server, tmp_path):
    """Greedy on the embedded llama.cpp server, a passage it continues verbatim: p_z = 1, observed."""
    corpus = write_corpus(tmp_path / "corpus", [PREAMBLE], shards=1)
    run = tmp_path / "run"
    spec = AttackSpec("discoverable", {"corpus": corpus, "documents": 1, "prefix_tokens": 14, "suffix_tokens": 10,
                                       "exact_np": "on"})
    run_attacks(str(run), endpoint=local_server.base_url, model=local_server.model, attacks=[spec],
                tokenizer_file=str(local_server.model_path), progress=False)
    out = json.loads((run / FILE).read_text())
    (doc,) = out["documents"]
    assert doc["monte_carlo"] == {"samples": 1, "hits": 1, "p_z": 1.0, "token_hits": 1, "p_z_tokens": 1.0}     # the greedy generation was verbatim
    # a llama.cpp server's batch split (prompt-cache reuse) can flip an argmax, so the scorer's path is not the
    # evidence: p_z = 1 observed, the same figure as the Monte Carlo row; the scorer's value beside it
    assert doc["kind"] == "exact" and doc["p_z"] == 1.0 and doc["basis"] == "observed"
    assert doc["p_z_as_generated"] == 1.0 and "disagree" not in doc["note"]
    assert out["rows"]["sampler_rows"] is False and out["rows"]["check"] is None
    assert out["full_distribution"] is True and out["order"] == "llama.cpp"
    assert out["summary"]["mean_curve"][0] == [1, 1.0]


def _sampled_hits(model_path, prompt: str, target_ids: list[int], scheme: Scheme, n: int) -> int:
    """Samples (of ``n``, seeds 1000..) in which llama.cpp's own sampler (llama-cpp-python's chain
    top-k, typical, top-p, min-p, temperature, dist) emits exactly ``target_ids`` after ``prompt``:
    the event p_z measures. The state is reset before each sample so every sample evaluates the
    prompt in one batch and then one token at a time (no prefix reuse from the previous sample)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=128, verbose=False, seed=1)
    hits = 0
    try:
        prompt_ids = llm.tokenize(prompt.encode("utf-8"))
        for i in range(n):
            llm.reset()
            llm.set_seed(1000 + i)
            j = 0
            for tok in llm.generate(prompt_ids, top_k=scheme.top_k, top_p=scheme.top_p, min_p=0.0, typical_p=1.0,
                                    temp=scheme.temperature, repeat_penalty=1.0):
                if tok != target_ids[j]:
                    break
                j += 1
                if j == len(target_ids):
                    hits += 1
                    break
    finally:
        llm.close()
    return hits


@pytest.mark.slow
def test_exact_pz_agrees_with_llama_cpp_sampler(local_server):
    """Temperature 1.5, top-k 40, top-p 0.9 (llama.cpp order): exact p_z of a
    4-token target from one in-process scoring pass against 300 seeded samples from llama.cpp's own
    sampler, within a 99.9% normal interval (3.29 binomial standard errors, 0.095 at p_z 0.5).
    With top-p 0.9 this failed before the scorer evaluated the target as llama.cpp generates it
    (one token at a time after the batched prompt): the all-batched rows gave 0.652, the sampler
    ~0.49 (the sampler math itself matched llama.cpp's chain on the same rows)."""
    from extractor.backends.llama_inprocess import LlamaScorer

    prompt, target = "We the People of the United States, in Order to form a more perfect", " Union, establish Justice"
    scheme = Scheme(temperature=1.5, top_k=40, top_p=0.9, order="llama.cpp")
    scorer = LlamaScorer(local_server.model_path)
    try:
        pz = document_pz(scorer, prompt, target, scheme)
        ids = scorer.score([target], contexts=[prompt])[0].token_ids
    finally:
        scorer.close()
    assert pz.kind == "exact" and pz.tokens == 4 == len(ids)
    exact = pz.pz
    assert 0.05 < exact < 0.95
    n = 300
    hits = _sampled_hits(local_server.model_path, prompt, ids, scheme, n)
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(hits / n - exact) < 3.29 * se, (hits, n, exact)


@pytest.mark.slow
def test_http_echo_scorer_against_in_process(local_server):
    """Over HTTP (echoed top-20 logprobs): temperature 1 is exact from the server's own logprobs and
    equals the in-process value where the two engines agree (the first two tokens after this prefix:
    further on, the embedded server's echo and llama.cpp in process differ, see the README); at
    temperature 1.5 the bounds hold the in-process exact value; greedy is exact."""
    from extractor.backends import make_backend
    from extractor.backends.llama_inprocess import LlamaScorer

    prompt, target = "We the People of the United States, in Order to form a more perfect", " Union,"
    be = make_backend("openai", endpoint=local_server.base_url, model=local_server.model)
    be.probe()
    http = document_pz(be, prompt, target, Scheme(temperature=1.0))
    hot = document_pz(be, prompt, target, Scheme(temperature=1.5))
    greedy = document_pz(be, prompt, target, Scheme(temperature=0.0))
    scorer = LlamaScorer(local_server.model_path)
    try:
        local = document_pz(scorer, prompt, target, Scheme(temperature=1.0))
        local_hot = document_pz(scorer, prompt, target, Scheme(temperature=1.5))
    finally:
        scorer.close()
    assert http.kind == "exact" and local.kind == "exact" and http.tokens == local.tokens == 2
    assert http.log_pz == pytest.approx(local.log_pz, abs=1e-2)     # llama.cpp runs differ by ~2e-3 (threads)
    assert hot.kind == "bounds" and hot.log_lower - 1e-2 <= local_hot.log_pz <= hot.log_upper + 1e-2
    assert greedy.kind == "exact" and greedy.pz == 1.0


class _BatchSensitiveLlama:
    """A stand-in for llama_cpp.Llama over the vocabulary "abcd" whose logits for a position depend on
    the size of the batch it was evaluated in (as llama.cpp's CPU logits do): row = (batch size, 0, 0, 0)."""

    def __init__(self):
        self.calls, self.n = [], 0
        self.scores = np.zeros((16, 4), dtype=np.float32)

    def reset(self):
        self.n = 0

    def eval(self, toks):
        self.calls.append(list(toks))
        for j in range(len(toks)):
            self.scores[self.n + j] = (len(toks), 0, 0, 0)
        self.n += len(toks)

    def tokenize(self, b, add_bos=False, special=True):
        return ["abcd".index(c) for c in b.decode()]

    def detokenize(self, ids, special=True):
        return "".join("abcd"[i] for i in ids).encode()

    def token_bos(self):
        return -1

    def n_vocab(self):
        return 4


def test_as_generated_scores_the_target_one_token_at_a_time():
    """``as_generated``: the context in one batch, then each target token alone (the rows the sampler
    drew from); the default evaluates everything in one batch. Known answers from the stand-in's rows."""
    from extractor.backends.llama_inprocess import LlamaScorer

    sc = LlamaScorer.__new__(LlamaScorer)
    sc._llm, sc.n_ctx, sc._pieces = _BatchSensitiveLlama(), 16, {}
    sc._lock = __import__("threading").Lock()
    gen = sc.score(["cd"], contexts=["ab"], as_generated=True, full=True)[0]
    assert sc._llm.calls == [[0, 1], [2], [3]]
    # "c" is predicted by the row of "b" (batch of 2), "d" by the row of "c" (alone)
    assert gen.logprobs == pytest.approx([-math.log(math.e ** 2 + 3), -math.log(math.e + 3)])
    sc._llm.calls.clear()
    batched = sc.score(["cd"], contexts=["ab"])[0]
    assert sc._llm.calls == [[0, 1, 2, 3]]
    assert batched.logprobs == pytest.approx([-math.log(math.e ** 4 + 3)] * 2)
    assert gen.token_ids == batched.token_ids == [2, 3]


# -- whose rows: the rows check and the labels where the scorer's rows are not the sampler's ----------------
ROW = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float64))     # each target token: id 0, p 0.5 at T = 1


class _WordScorer:
    """Full rows for any text: one token per space-led word, each token id 0 with p = 0.5 (ROW)."""
    from extractor.backends.base import Capabilities as _C
    capabilities = _C(score="in_process", full_distribution=True)

    def describe(self):
        return {"backend": "word-rows"}

    def score(self, texts, *, contexts=None, top_k=0, vocab_stats=False, full=False, timeout=None):
        from extractor.backends.base import TextScore
        out = []
        for t in texts:
            offs = [i for i, c in enumerate(t) if c == " "] or [0]
            n = len(offs)
            out.append(TextScore(token_ids=[0] * n, token_offsets=offs, logprobs=[float(ROW[0])] * n,
                                 top_logprobs=None, vocab_mean=None, vocab_var=None, exact_vocab_stats=True,
                                 full_logprobs=np.stack([ROW] * n)))
        return out


class _Sampler:
    """A backend whose greedy continuation is " a b c" with the given logprobs (and token offsets)."""

    def __init__(self, logprobs, offsets=(0, 2, 4)):
        self.lps, self.offs, self.want_logprobs, self.calls = list(logprobs), list(offsets), False, []

    def complete(self, prompt, params, *, n=1, seed=None, timeout=None, defer_tokens=False):
        from extractor.backends.base import Choice, CompletionResult
        self.calls.append((prompt, dict(params), self.want_logprobs))
        ch = Choice(text=" a b c", token_offsets=self.offs, token_logprobs=self.lps if self.want_logprobs else None,
                    completion_tokens=3, finish_reason="length", token_source="ids")
        return CompletionResult(choices=[ch], prompt_tokens=1, completion_tokens=3, latency_s=0.0, attempts=1,
                                endpoint="stub")


def test_rows_check_measures_the_largest_difference():
    from extractor.attacks.discoverable_np import ROWS_TOLERANCE, rows_check

    lp = float(ROW[0])
    s = _Sampler([lp, lp + 0.1, lp - 0.03])
    c = rows_check(s, _WordScorer(), "prefix")
    assert c["tokens"] == 3 and c["max_abs_diff"] == pytest.approx(0.1) and c["agree"] is False
    assert (c["prompt_tokens"], c["completion_tokens"]) == (1, 3)      # the check's own request, said
    assert s.calls == [("prefix", {"temperature": 0.0, "max_tokens": 8}, True)] and s.want_logprobs is False
    assert rows_check(_Sampler([lp, lp + ROWS_TOLERANCE / 2, lp]), _WordScorer(), "p")["agree"] is True
    # the sampler split the text otherwise from the third token on: only the first two are compared
    c = rows_check(_Sampler([lp, lp, lp + 1.0], offsets=(0, 2, 3)), _WordScorer(), "p")
    assert c["tokens"] == 2 and c["max_abs_diff"] == 0.0
    # nothing comparable: no logprobs from the backend, or a single token
    assert rows_check(object(), _WordScorer(), "p") is None
    assert rows_check(_Sampler([lp, lp, lp], offsets=(0, 1, 3)), _WordScorer(), "p") is None


def _np_run(tmp_path, temperature, docs):
    """A run of discoverable rows: ``docs`` = [(doc_id, target, samples, hits)]."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from synthetic_runs import Corpus, Gen, write_run

    gens = []
    for doc, target, samples, hits in docs:
        for s in range(samples):
            gens.append(Gen(tokens=["x", " y"], attack="discoverable", variant=f"doc:{doc}",
                            extra={"doc_id": doc, "source": "s", "target": target, "exact": s < hits},
                            meta={"prompt": f"prefix {doc}", "params": json.dumps({"temperature": temperature})}))
    run = tmp_path / f"run-{temperature}"
    write_run(str(run), Corpus(["unrelated corpus text"]), gens, min_tokens=10)
    return run


def test_rows_that_are_not_the_samplers_are_labelled():
    """The sampler's logprobs differ from the scorer's by 0.1 nats (vLLM in bfloat16 measured 0.11): a
    sampled scheme's p_z is unavailable with the scorer's value beside it; greedy p_z is what the run's
    greedy generations did (1 / 0), unavailable when they disagree. Rows that agree: exact as scored."""
    import tempfile
    from pathlib import Path

    from extractor.attacks.discoverable_np import score_discoverable

    lp = float(ROW[0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = _np_run(tmp, 1.0, [(1, " a b", 4, 1)])
        d = score_discoverable(str(run), _WordScorer(), server="vllm-offline", sampler=_Sampler([lp, lp + 0.1, lp]))
        (doc,) = d["documents"]
        assert doc["kind"] == "unavailable" and doc["p_z"] is None and doc["p_z_as_generated"] == pytest.approx(0.25)
        assert "0.1 nats" in doc["note"] and d["rows"]["sampler_rows"] is False
        assert d["rows"]["check"]["max_abs_diff"] == pytest.approx(0.1) and d["order"] == "vllm"
        # the same run, rows that agree: exact 0.5^2
        d = score_discoverable(str(run), _WordScorer(), server="vllm-offline", sampler=_Sampler([lp, lp, lp]))
        assert d["documents"][0]["kind"] == "exact" and d["documents"][0]["p_z"] == pytest.approx(0.25)
        assert d["rows"]["sampler_rows"] is True and "p_z_as_generated" not in d["documents"][0]

        # greedy: every target token is the scorer's argmax (p_z 1 from the rows); what the run did decides
        run = _np_run(tmp, 0.0, [(1, " a b", 1, 1), (2, " a b c", 1, 0), (3, " a", 3, 1)])
        for server, sampler in (("vllm-offline", _Sampler([lp, lp + 0.1, lp])), ("llama_cpp", None)):
            d = score_discoverable(str(run), _WordScorer(), server=server, sampler=sampler)
            by = {doc["doc_id"]: doc for doc in d["documents"]}
            assert by[1]["kind"] == "exact" and by[1]["p_z"] == 1.0 and by[1]["basis"] == "observed"
            assert by[2]["kind"] == "exact" and by[2]["p_z"] == 0.0 and by[2]["basis"] == "observed"
            assert by[2]["p_z_as_generated"] == 1.0 and "disagree here" in by[2]["note"]
            assert by[3]["kind"] == "unavailable" and "disagree" in by[3]["note"]      # 1 of 3 greedy runs hit
            assert d["summary"]["exact_documents"] == 2 and d["summary"]["mean_curve"][0] == [1, 0.5]
            from reports.render_np import load_extraction_np, md_section
            warnings = []
            md = md_section(load_extraction_np(str(run), warnings))
            assert warnings == [] and "1 (observed greedy run)" in md and "Not the sampler's rows" in md
        # rows that agree: greedy p_z from the scorer (1 for all three)
        d = score_discoverable(str(run), _WordScorer(), server="vllm", sampler=_Sampler([lp, lp, lp]))
        assert [doc["p_z"] for doc in d["documents"]] == [1.0, 1.0, 1.0]
        assert all("basis" not in doc for doc in d["documents"])
