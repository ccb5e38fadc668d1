"""Generation rows (docs/CONTRACTS.md §3) from the server's choices, and usage recounted from stored rows.

Guarantees: a row holds every column of :data:`corpora.storage.GENERATIONS_SCHEMA` plus
``_extra`` (the ``extra`` dict, serialised when the row is recorded); a prompt list's
billed prompt tokens are split into integer shares that sum to the billed total;
:func:`recount` gives the billed totals of the stored rows (a request with ``n``
samples billed its prompt once), whatever ``run.json`` says.
"""
from __future__ import annotations

import json
from typing import NamedTuple

from corpora.storage import utcnow
from extractor.attacks import Job
from extractor.backends import Choice
from extractor.backends.openai import clean_text
from extractor.sampling.budget import Usage
from extractor.sampling.run_folder import RunDir


class Pending(NamedTuple):
    """A finished completion before its token boundaries are known (one row once they are)."""

    job: Job
    choice: Choice
    prompt_tokens: int
    params: dict        # the parameters as sent
    seed: int | None    # as sent (None: the server ignores seeds)
    latency: float
    t0: float           # wall clock when the request was sent
    extra: dict
    endpoint: str


def prompt_token_shares(total: int, prompts: list[str]) -> list[int]:
    """A request's billed prompt tokens per prompt: servers report one total for a prompt list,
    so it is split in proportion to the prompts' UTF-8 lengths (integers summing to ``total``;
    rows say ``prompt_tokens_estimated``). One prompt: the total itself."""
    if len(prompts) == 1:
        return [int(total)]
    weights = [max(1, len(p.encode("utf-8"))) for p in prompts]
    exact = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(out)), key=lambda i: out[i] - exact[i])[: int(total) - sum(out)]:
        out[i] += 1
    return out


def merge_choices(choices: list[Choice], finish: str, can_tokenize) -> Choice:
    """One choice for the chained calls of a multi-call generation: their texts joined, their
    token boundaries and log-probs concatenated when every call returned them; otherwise the
    boundaries of the whole text are left ``pending`` (``none`` without a tokenize endpoint)."""
    text = "".join(c.text for c in choices)
    if all(c.token_source == "logprobs" for c in choices):
        offsets, logprobs, base = [], [], 0
        for c in choices:
            offsets.extend(base + o for o in c.token_offsets)
            logprobs.extend(c.token_logprobs or [])
            base += len(c.text.encode("utf-8"))
        return Choice(text=text, token_offsets=offsets,
                      token_logprobs=logprobs if len(logprobs) == len(offsets) else None,
                      completion_tokens=len(offsets), finish_reason=finish, token_source="logprobs")
    return Choice(text=text, token_offsets=None, token_logprobs=None, completion_tokens=0,
                  finish_reason=finish, token_source="pending" if can_tokenize else "none")


def make_row(p: Pending, *, run_id: str, model: str, endpoint: str, created_at: str | None = None,
             params_json: str | None = None) -> dict:
    """The row of a completion whose token boundaries are filled (``endpoint``: when the
    completion names none; ``created_at``: now unless given, e.g. once for a request's rows;
    ``params_json``: ``p.params`` as the row stores it, when the caller encoded it already)."""
    ch = p.choice
    extra = {**p.extra, "token_source": ch.token_source}
    if ch.token_error:
        extra["token_error"] = ch.token_error
    ntok = len(ch.token_offsets) if ch.token_offsets is not None else ch.completion_tokens
    return {
        "run_id": run_id, "request_id": p.job.request_id, "attack": p.job.attack, "variant": p.job.variant,
        "prompt": clean_text(p.job.prompt), "completion": ch.text, "token_offsets": ch.token_offsets,
        "token_logprobs": ch.token_logprobs, "prompt_tokens": int(p.prompt_tokens),
        "completion_tokens": int(ntok), "finish_reason": ch.finish_reason, "model": model,
        "endpoint": p.endpoint or endpoint, "params": params_json if params_json is not None else json.dumps(p.params, sort_keys=True),
        "seed": p.seed, "latency_s": float(p.latency), "cost_usd": 0.0,
        "created_at": created_at or utcnow(precise=True), "_extra": {**p.job.extra, **extra},
    }


def recount(rd: RunDir, usage: Usage) -> None:
    """Billed tokens and cost of the stored rows (a request with n samples billed its prompt once)."""
    t = rd.read_generations(columns=["prompt_tokens", "completion_tokens", "cost_usd", "extra"])
    prompt = completion = 0.0
    for pt, ct, extra in zip(t.column("prompt_tokens").to_pylist(), t.column("completion_tokens").to_pylist(),
                             t.column("extra").to_pylist()):
        e = json.loads(extra) if extra else {}
        prompt += e.get("billed_prompt_tokens", pt or 0)
        completion += e.get("billed_completion_tokens", ct or 0)
    usage.prompt_tokens = int(round(prompt))
    usage.completion_tokens = int(round(completion))
    usage.cost_usd = float(sum(x or 0 for x in t.column("cost_usd").to_pylist()))
