"""Sending one request (a :class:`~extractor.sampling.plan.Unit`) and turning its answer into rows.

Guarantees: :meth:`Sender.execute` sends the unit's leader's prompt(s), parameters and
seed whether or not the leader is stored (so a resumed unit draws what it drew before),
and returns a :class:`Done` with one :class:`~extractor.sampling.rows.Pending` per
generation the unit stores, in plan order; choice ``k`` of prompt ``i`` of a prompt list
is ``choices[i * n + k]`` (OpenAI's order). Token boundaries that need the tokenize
endpoint are left pending so that a worker can send its next request at once;
:meth:`Sender.build_rows` fills them and builds the rows. Exceptions propagate to the
caller (the engine's worker threads report them to the main thread).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from corpora.storage import utcnow
from extractor.attacks import Job
from extractor.backends import CompletionResult
from extractor.sampling.plan import Unit
from extractor.sampling.rows import Pending, make_row, merge_choices, prompt_token_shares


@dataclass
class Done:
    unit: Unit
    result: list[dict] | None = None   # rows (without cost, extra finished)
    error: BaseException | None = None
    billed_prompt: int = 0
    billed_completion: int = 0
    finished_at: float = 0.0
    pending: list[Pending] | None = None   # completions before token boundaries are filled
    freed: bool = False                # its generation slot was released earlier (a "freed" message)
    cost_usd: float | None = None      # set with the rows made final in the worker (Engine._prefinish)
    journal: list | None = None        # then also: the rows' journal record (journal.journal_record)
    table: object = None               # and the rows as an Arrow table (run_folder.rows_to_table)
    extras: list | None = None         # each row's extra as a dict where its JSON reads back to it, else None


class Sender:
    """Sends units through backend ``be`` and builds the rows of run ``run_id``."""

    def __init__(self, be, *, run_id: str, model: str):
        self.be, self.run_id, self.model = be, run_id, model
        self.defer = be.capabilities.deferred_tokens   # boundaries through a tokenizer: fill them later

    def execute(self, unit: Unit) -> Done:
        """Send the unit's request(s). Token boundaries that need the tokenize endpoint are left
        pending (filled by :meth:`build_rows` in a post-processing thread), so that the worker can
        send its next generation at once."""
        j = unit.parts[0][0]  # the request's leader: its prompt, parameters and seed (stored or not)
        d = Done(unit=unit)
        seed = j.seed if self.be.capabilities.seed else None
        if j.steps:
            d.pending = [self._execute_steps(j, d)]
            d.finished_at = time.monotonic()
            return d
        t0 = time.time()
        parts = unit.parts
        n = len(parts[0])
        prompts = [p[0].prompt for p in parts]
        sent_prompt = j.messages if j.messages is not None else prompts if len(parts) > 1 else j.prompt
        res: CompletionResult = self.complete(sent_prompt, j.params, n=n, seed=j.seed)
        d.billed_prompt, d.billed_completion = res.prompt_tokens, res.completion_tokens
        sent = dict(j.params)
        if not self.be.capabilities.top_k:
            sent.pop("top_k", None)
        if n > 1:
            sent["n"] = n
        shares = prompt_token_shares(res.prompt_tokens, prompts)
        d.pending = []
        for i, part in enumerate(parts):
            for k, job in enumerate(part):
                if job.request_id in unit.skip:
                    continue
                extra = {"sample": job.sample, "attempts": res.attempts}
                if n > 1:
                    extra["n_choice"] = k
                    extra["n"] = n
                if len(parts) > 1:
                    extra["prompt_list"] = len(parts)
                    extra["prompt_index"] = i
                    extra["prompt_tokens_estimated"] = True
                d.pending.append(Pending(job, res.choices[i * n + k], shares[i], sent, seed, res.latency_s, t0,
                                         extra, res.endpoint))
        d.finished_at = time.monotonic()
        return d

    def _execute_steps(self, job: Job, d: Done) -> Pending:
        """Multi-call generation (temperature decay): leading calls, then the final one, text chained."""
        t0 = time.time()
        texts, choices = [], []
        latency = 0.0
        first_prompt_tokens = None
        attempts = 0
        calls = list(job.steps) + [job.params]
        finish = "length"
        served = self.be.endpoint
        for idx, params in enumerate(calls):
            seed = (job.seed + idx) & 0x7FFFFFFF if job.seed is not None else None
            res = self.complete(job.prompt + "".join(texts), params, n=1, seed=seed)
            ch = res.choices[0]
            latency += res.latency_s
            attempts += res.attempts
            d.billed_prompt += res.prompt_tokens
            d.billed_completion += res.completion_tokens
            if first_prompt_tokens is None:
                first_prompt_tokens = res.prompt_tokens
            texts.append(ch.text)
            choices.append(ch)
            served = res.endpoint or served
            finish = ch.finish_reason
            if ch.finish_reason == "stop":
                break
        merged = merge_choices(choices, finish, self.be.capabilities.tokenize)
        extra = {"sample": job.sample, "attempts": attempts, "calls": [dict(c) for c in calls]}
        return Pending(job, merged, first_prompt_tokens or 0, dict(job.params),
                       job.seed if self.be.capabilities.seed else None, latency, t0, extra, served)

    def complete(self, prompt, params, *, n, seed) -> CompletionResult:
        """One completion call; token boundaries that need a tokenizer are deferred (filled later by
        :meth:`build_rows`) when the backend's capabilities say ``deferred_tokens``."""
        if self.defer:
            res = self.be.complete(prompt, params, n=n, seed=seed, defer_tokens=True)
        else:
            res = self.be.complete(prompt, params, n=n, seed=seed)
        if not res.endpoint:
            res.endpoint = self.be.endpoint  # the pool's endpoint is the member that served this thread
        return res

    def fill_many(self, choices) -> None:
        if not choices:
            return
        self.be.fill_tokens_many(choices)

    def build_rows(self, d: Done, tokens_done: bool = False) -> None:
        """Fill the pending token boundaries (unless ``tokens_done``) and set ``d.result``."""
        if not tokens_done and self.defer:
            self.fill_many([p.choice for p in d.pending if p.choice.token_source == "pending"])
        rows = []
        now = utcnow(precise=True)   # the request's rows are made together
        encoded: dict[int, tuple[dict, str]] = {}   # the request's rows share one parameters dict: encoded once
        for p in d.pending:
            if p.choice.token_source == "pending":
                self.be.fill_tokens(p.choice)
            hit = encoded.get(id(p.params))
            if hit is None or hit[0] is not p.params:
                hit = encoded[id(p.params)] = (p.params, json.dumps(p.params, sort_keys=True))
            rows.append(make_row(p, run_id=self.run_id, model=self.model, endpoint=self.be.endpoint, created_at=now,
                                 params_json=hit[1]))
        d.result = rows
        d.pending = None
