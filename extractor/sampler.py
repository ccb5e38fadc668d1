"""The sampler: turns attack plans into stored generations as fast as the server allows.

Python entry point (used by ``trawl sample`` and ``trawl demo``)::

    from extractor.sampler import run_attacks
    from extractor.attacks import AttackSpec
    from extractor.budget import Budget, Pricing

    summary = run_attacks(
        "runs/demo", endpoint="http://127.0.0.1:8080", model="gemma-3-270m",
        attacks=[AttackSpec("divergence", {"words": ["poem", "company"], "repetitions": 50,
                                           "samples": 2, "max_tokens": 256}),
                 AttackSpec("discoverable", {"corpus": "corpus/", "documents": 20,
                                             "prefix_tokens": 32, "suffix_tokens": 50})],
        budget=Budget(max_seconds=180), concurrency=4, resume=True, progress=True)
    summary.status, summary.stop_reason, summary.finished, summary.tokens_per_s

How it works
    1. Attack parameters are checked (unknown attack/parameter: TrawlError).
    2. The server is probed (:meth:`OpenAIBackend.probe`); an unreachable server or
       one with no token information is a TrawlError.
    3. The run folder's config is frozen (or, with ``resume``, compared with the
       frozen one); :meth:`RunDir.recover` returns the request ids already stored.
    4. The attacks' plans are expanded in a fixed order with deterministic request
       ids (``sha1(run_id, attack, variant, prompt, sample)[:16]``) and per-request
       seeds derived from them; ids already stored are skipped.
    5. ``concurrency`` daemon worker threads send requests; the main thread keeps at
       most ``concurrency`` requests in flight, records each finished generation in
       the journal at once, enforces the budget, and rolls parts.
    Samples of one prompt share a request with ``n`` when the server honours ``n``
    (and ``use_n`` is on); otherwise they are separate requests. Consecutive prompts
    with the same parameters (and the same ``n``) share one request as a prompt list
    when the server honours lists (vLLM; ``use_prompt_lists``, up to ``max_prompts``);
    ``concurrency`` counts requests, so a list puts up to ``max_prompts`` x ``n``
    sequences in flight per request. The grouping is a function of the plan, so a
    resumed run sends what an uninterrupted one would. A list's billed prompt tokens
    are one total; rows get shares in proportion to prompt length
    (``extra.prompt_tokens_estimated``).

The run id defaults to a hash of the frozen plan (model + resolved attacks +
seed), so the same campaign on the same model gets the same request ids in any
folder: an uninterrupted run and a killed-and-resumed one can be compared row
for row.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from extractor.attacks import ATTACKS, AttackSpec, Job, PlanContext, get_attack, request_id, seed_for
from extractor.attacks.base import SEED_SCHEME, apply_common, draw_seed
from extractor.backends import BackendError, Choice, CompletionResult, OpenAIBackend, make_backend
from extractor.backends.openai import api_key_hint, clean_text
from extractor.budget import Budget, Pricing, Usage, stop_reason
from extractor.errors import TrawlError
from corpora.storage import utcnow
from extractor.runs import RunDir, RunLock

FORMAT = "trawl-run"
FORMAT_VERSION = 1


@dataclass
class RunSummary:
    run_dir: str
    run_id: str
    status: str                 # "finished", "stopped" (a budget cap), "interrupted", "failed"
    stop_reason: str | None     # None when every planned generation is stored
    planned: int
    finished: int               # generations stored (all sessions)
    new_generations: int        # stored by this call
    failed_requests: int        # requests that failed for good in this call (retried on --resume)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    elapsed_s: float            # this call
    tokens_per_s: float         # completion tokens per second in this call
    capabilities: dict = field(default_factory=dict)
    attacks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        why = f" ({self.stop_reason})" if self.stop_reason else ""
        return (f"{self.status}{why}: {self.finished}/{self.planned} generations, "
                f"{self.completion_tokens} completion tokens, ${self.cost_usd:.4f}, "
                f"{self.tokens_per_s:.1f} tokens/s, {self.failed_requests} failed requests -> {self.run_dir}")


@dataclass
class _Unit:
    """One request: ``parts`` holds one list of jobs per prompt (a prompt list when there are
    several, all of the same size ``n``; the jobs of a part are the ``n`` samples of its prompt)."""

    parts: list[list[Job]]
    reserve_tokens: int
    reserve_dollars: float
    skip: frozenset = frozenset()   # request ids sent but not stored (stored before, or past a cap)
    jobs: list[Job] = field(init=False)  # the generations this request stores

    def __post_init__(self) -> None:
        self.jobs = [j for p in self.parts for j in p if j.request_id not in self.skip]


@dataclass
class _Done:
    unit: _Unit
    result: list[dict] | None = None   # rows (without cost, extra finished)
    error: BaseException | None = None
    billed_prompt: int = 0
    billed_completion: int = 0
    finished_at: float = 0.0
    pending: list | None = None        # (job, choice, ...) before token boundaries are filled
    freed: bool = False                # its generation slot was released earlier (a "freed" message)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def run_attacks(
    run_dir: str,
    *,
    endpoint: str | list[str],
    model: str,
    attacks: list[AttackSpec],
    budget: Budget | None = None,
    pricing: Pricing | None = None,
    concurrency: int = 64,
    resume: bool = False,
    progress: bool = True,
    api_key_env: str | None = "OPENAI_API_KEY",
    timeout: float = 300.0,
    max_retries: int = 6,
    backoff_base: float = 0.5,
    backoff_max: float = 30.0,
    run_id: str | None = None,
    seed: int = 0,
    use_n: bool = True,
    max_n: int = 16,
    use_prompt_lists: bool = True,
    max_prompts: int = 8,
    flush_rows: int = 256,
    flush_seconds: float = 30.0,
    drain_seconds: float = 60.0,
    max_consecutive_failures: int | None = None,
    backend: str = "openai",
    token_info: str = "auto",
    tokenizer_file: str | None = None,
    log: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run ``attacks`` against the model server and store generations in ``run_dir``.

    Returns a :class:`RunSummary` (also written to ``run_dir/run.json``). Raises
    :class:`extractor.errors.TrawlError` for bad input, an unreachable or unusable
    server, a folder holding another run (without ``resume``), or a resumed run
    whose attacks/model differ from the frozen config. ``KeyboardInterrupt`` stops
    cleanly (everything finished is stored; ``run.json`` says ``interrupted``) and
    is re-raised. Holds the run folder's lock (``RUN/.lock``) throughout: a second
    process on the same folder gets :class:`extractor.runs.RunLocked` (exit code 75)
    and writes nothing.

    ``tokenizer_file``: the GGUF file a llama.cpp server loaded; token boundaries are then
    computed in this process with that file's tokenizer (checked against the server's at the
    start; see extractor/backends/gguf_tokenizer.py) instead of one tokenize request per batch
    of completions on the server.
    """
    args = dict(locals())
    _validate_settings(concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                       drain_seconds=drain_seconds, max_n=max_n, flush_rows=flush_rows,
                       flush_seconds=flush_seconds, max_prompts=max_prompts)
    with RunLock(run_dir):
        return _run_attacks_locked(**args)


def _validate_settings(*, concurrency, timeout, max_retries, drain_seconds, max_n, flush_rows,
                       flush_seconds, max_prompts) -> None:
    """Reject bad numeric settings before anything is written (a bad one used to surface mid-run)."""
    def _num(name, v, ok, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not ok(v):
            raise TrawlError(f"{name} must be {what}, got {v!r}")

    _num("concurrency", concurrency, lambda v: v >= 1 and v == int(v), "an integer >= 1")
    _num("timeout", timeout, lambda v: 0 < v < float("inf"), "a number of seconds > 0")
    _num("max_retries", max_retries, lambda v: v >= 0 and v == int(v), "an integer >= 0")
    _num("drain_seconds", drain_seconds, lambda v: v >= 0, "a number of seconds >= 0")
    _num("max_n", max_n, lambda v: v >= 1, ">= 1")
    _num("max_prompts", max_prompts, lambda v: v >= 1 and v == int(v), "an integer >= 1")
    _num("flush_rows", flush_rows, lambda v: v >= 1, ">= 1")
    _num("flush_seconds", flush_seconds, lambda v: v >= 0, ">= 0")


def _run_attacks_locked(run_dir, *, endpoint, model, attacks, budget, pricing, concurrency, resume, progress,
                        api_key_env, timeout, max_retries, backoff_base, backoff_max, run_id, seed, use_n, max_n,
                        use_prompt_lists, max_prompts, flush_rows, flush_seconds, drain_seconds, max_consecutive_failures, backend, token_info,
                        tokenizer_file,
                        log) -> RunSummary:
    log = log or (lambda msg: print(f"trawl: {msg}", file=sys.stderr))
    budget = budget or Budget()
    pricing = pricing or Pricing()
    if not attacks:
        raise TrawlError("no attacks given")
    resolved = []
    for spec in attacks:
        if isinstance(spec, str):
            spec = AttackSpec(spec)
        cls = get_attack(spec.name)
        resolved.append({"name": spec.name, "params": cls.resolve(spec.params)})
    plan_config = {"model": model, "attacks": resolved, "seed": seed}
    auto_id = hashlib.sha1(_canonical(plan_config).encode()).hexdigest()[:12]

    rd = RunDir(run_dir, flush_rows=flush_rows, flush_seconds=flush_seconds)
    if rd.has_run():
        if not resume:
            raise TrawlError(f"{rd.path} already holds a run; pass --resume to continue it, or choose another folder")
        frozen = rd.load_config()
        if frozen.get("format") != FORMAT:
            raise TrawlError(f"{rd.config_path}: not a trawl run config")
        fplan = {"model": frozen.get("model"), "attacks": frozen.get("attacks"), "seed": frozen.get("seed")}
        if _canonical(fplan) != _canonical(json.loads(_canonical(plan_config))):
            raise TrawlError(f"{rd.path}: the attacks/model/seed differ from the run's frozen config.json; "
                             f"resume with the same ones, or start a new folder")
        if run_id and run_id != frozen.get("run_id"):
            raise TrawlError(f"{rd.path}: run id {run_id!r} differs from the frozen {frozen.get('run_id')!r}")
        run_id = frozen["run_id"]
        seed_scheme = frozen.get("seed_scheme", 1)   # runs frozen before scheme 2 resume as they began
        created = False
    else:
        if rd.is_nonempty() and not os.path.isdir(rd.gen_dir):
            raise TrawlError(f"{rd.path} exists and is not a trawl run folder; choose an empty or new folder")
        run_id = run_id or auto_id
        seed_scheme = SEED_SCHEME
        created = True

    engine_box: list = []  # the replica pool logs through the engine (above the progress bar) once it exists
    pool_log = {"log": lambda msg: (engine_box[0].log if engine_box else log)(msg)} \
        if isinstance(endpoint, (list, tuple)) and len(endpoint) > 1 else {}
    be: OpenAIBackend = make_backend(backend, endpoint=endpoint, model=model, api_key_env=api_key_env,
                                     timeout=timeout, max_retries=max_retries, backoff_base=backoff_base,
                                     backoff_max=backoff_max, pool_size=max(concurrency, 4),
                                     token_info=token_info, **pool_log,
                                     **({"tokenizer_file": tokenizer_file} if tokenizer_file else {}))
    caps = be.probe()
    be.retries = 0

    # -- plan (before anything is written: a planning error leaves no half-made run) ---------------
    ctx = PlanContext(run_id=run_id, backend=be, seed=seed, log=log)
    all_jobs: list[Job] = []
    seen: set[str] = set()
    for spec in resolved:
        attack = get_attack(spec["name"])()
        if spec["params"].get("ignore_eos") and not getattr(caps, "ignore_eos", False):
            raise TrawlError(f"attack {spec['name']}: ignore_eos needs a server that honours it (vLLM); the server "
                             f"at {be.endpoint} ({caps.server or 'unknown server'}) does not")
        for job in attack.plan(spec["params"], ctx):
            apply_common(job, spec["params"])
            rid = request_id(run_id, job.attack, job.variant, job.prompt, job.sample)
            if rid in seen:
                raise TrawlError(f"two planned generations share request id {rid} ({job.attack} {job.variant!r} "
                                 f"sample {job.sample}); give repeated attacks different parameters")
            seen.add(rid)
            job.request_id = rid
            # scheme 2: one seed per generation, consecutive in plan order (see draw_seed)
            job.seed = draw_seed(run_id, len(all_jobs)) if seed_scheme >= 2 else seed_for(rid)
            all_jobs.append(job)
    planned = len(all_jobs)
    if created:
        rd.freeze_config({
            "format": FORMAT, "format_version": FORMAT_VERSION, "run_id": run_id, "model": model,
            "attacks": resolved, "seed": seed, "seed_scheme": seed_scheme, "backend": be.describe(),
            "budget": budget.to_dict(), "pricing": pricing.to_dict(), "concurrency": concurrency,
            "created_at": utcnow(precise=True),
        })
    done = rd.recover()
    prev = rd.load_status()
    usage = Usage(generations=len(done),
                  prompt_tokens=int(prev.get("prompt_tokens", 0)) if not created else 0,
                  completion_tokens=int(prev.get("completion_tokens", 0)) if not created else 0,
                  cost_usd=float(prev.get("cost_usd", 0.0)) if not created else 0.0)
    if done:
        # run.json may lag behind the stored rows after a crash: recount from the rows themselves
        _recount(rd, usage)

    pending = [j for j in all_jobs if j.request_id not in done]
    attack_objs = {spec["name"]: get_attack(spec["name"])() for spec in resolved}

    engine = _Engine(be, rd, attack_objs, usage, budget, pricing, run_id=run_id, model=model,
                     concurrency=concurrency, use_n=use_n and caps.n, max_n=max_n,
                     max_prompts=max_prompts if use_prompt_lists and caps.prompt_list else 1, progress=progress,
                     planned=planned, drain_seconds=drain_seconds,
                     max_consecutive_failures=max_consecutive_failures or max(10, 2 * concurrency), log=log)
    engine_box.append(engine)
    status = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "run_id": run_id, "status": "running",
        "stopped_early": False, "stop_reason": None, "planned": planned, "finished": len(done),
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd, "endpoint": be.endpoint, "endpoints": list(be.endpoints), "model": model,
        "capabilities": caps.to_dict(), "sessions": list(prev.get("sessions", [])),
        "updated_at": utcnow(precise=True),
    }
    session = {"started_at": utcnow(precise=True), "resumed": not created, "skipped_done": planned - len(pending)}
    status["sessions"].append(session)
    engine.status = status
    engine.resolved = resolved
    engine.session = session
    rd.write_status(status)

    if caps.tokenize == "llama_cpp" and concurrency > 8 * len(getattr(be, "endpoints", [None])):
        log(f"the server looks like llama-cpp-python, which runs one request at a time; {concurrency} in flight "
            f"only queue there and can run into the {timeout:g} s timeout (try --concurrency 2-4)")
    interrupted = False
    try:
        engine.run(engine.pending_units(all_jobs, done), len(pending))
    except KeyboardInterrupt:
        interrupted = True
        engine.stop_reason = "interrupted"
    finally:
        be.interrupt()
        rd.close()

    summary = engine.finish(interrupted)
    if interrupted:
        raise KeyboardInterrupt
    if engine.fatal is not None:
        raise engine.fatal
    return summary


def _recount(rd: RunDir, usage: Usage) -> None:
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


class _Engine:
    def __init__(self, be, rd, attacks, usage, budget, pricing, *, run_id, model, concurrency, use_n, max_n,
                 max_prompts,
                 progress, planned, drain_seconds, max_consecutive_failures, log):
        self.be, self.rd, self.attacks, self.usage = be, rd, attacks, usage
        self.budget, self.pricing = budget, pricing
        self.run_id, self.model = run_id, model
        self.concurrency, self.use_n, self.max_n = concurrency, use_n, max(1, max_n)
        self.max_prompts = max(1, int(max_prompts))
        self.progress, self.planned = progress, planned
        self.drain_seconds = drain_seconds
        self.max_consecutive_failures = max_consecutive_failures
        self.log = log
        self.stop_reason: str | None = None
        self.fatal: BaseException | None = None
        self.failed = 0
        self.new = 0
        self.errors: list[str] = []
        self.session_completion = 0
        self.t0 = time.monotonic()
        self.last_done_t = self.t0
        self.prompt_bytes_per_token = 4.0
        self._ppt_samples = [0, 0]  # prompt bytes, prompt tokens seen
        self.status: dict = {}
        self.session: dict = {}
        self.resolved: list[dict] = []
        self._defer = hasattr(be, "fill_tokens")

    # -- units ----------------------------------------------------------------------------
    def _units(self, jobs: list[Job]):
        """Requests for ``jobs`` (the whole plan, in order), as lists of parts (see :class:`_Unit`).

        Samples of one prompt share a request with ``n`` (``use_n``, temperature > 0, up to
        ``max_n``); consecutive parts with the same parameters and the same ``n`` share one with a
        prompt list (servers that honour lists, up to ``max_prompts`` prompts). The grouping is a
        function of the plan alone, so a resumed run sends the requests an uninterrupted one would.
        """
        i = 0
        parts: list[list[Job]] = []
        while i < len(jobs):
            j = jobs[i]
            group = [j]
            if self.use_n and j.steps is None and float(j.params.get("temperature", 1.0)) > 0:
                key = j.group_key()
                while (i + len(group) < len(jobs) and len(group) < self.max_n
                       and jobs[i + len(group)].group_key() == key):
                    group.append(jobs[i + len(group)])
            i += len(group)
            parts.append(group)
        unit: list[list[Job]] = []
        for part in parts:
            if unit and (len(unit) >= self.max_prompts or not self._listable(unit, part)):
                yield unit
                unit = []
            unit.append(part)
        if unit:
            yield unit

    @staticmethod
    def _listable(unit: list[list[Job]], part: list[Job]) -> bool:
        """Can ``part`` join the prompt list ``unit``? Same parameters and ``n``, no leading calls,
        and a prompt not already in the list: every prompt of a list gets the request's seed, so a
        second copy of a prompt would repeat the first one's draws choice for choice."""
        a, b = unit[0][0], part[0]
        return (a.steps is None and b.steps is None and len(unit[0]) == len(part)
                and json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
                and all(p[0].prompt != b.prompt for p in unit))

    def pending_units(self, all_jobs: list[Job], done: set[str]):
        """:meth:`_units` of the whole plan, less the generations already stored, as
        ``(parts, skip)``. A unit that is only partly stored (cut by a generation cap, or a kill
        between its rows) is sent whole again and only its missing rows are kept: the same
        request with the same seed gives the same samples, so a resumed run stores exactly what
        an uninterrupted one would (the repeated part is billed)."""
        for unit in self._units(all_jobs):
            ids = {j.request_id for p in unit for j in p}
            stored = ids & done
            if stored == ids:
                continue
            yield unit, frozenset(stored)

    def _reserve(self, parts: list[list[Job]], skip: frozenset = frozenset()) -> _Unit:
        tokens, dollars = 0, 0.0
        for group in parts:
            j = group[0]
            calls = (j.steps or []) + [j.params]
            est_prompt = int(math.ceil(len(j.prompt.encode("utf-8")) / self.prompt_bytes_per_token)) + 2
            max_new = sum(int(c.get("max_tokens", 16)) for c in calls)
            tokens += (est_prompt + max_new) * len(calls) if j.steps else est_prompt + max_new * len(group)
            dollars += 0.0 if self.pricing.hourly else self.pricing.token_cost(est_prompt * len(calls),
                                                                              max_new * len(group))
        return _Unit(parts=parts, reserve_tokens=tokens, reserve_dollars=dollars, skip=skip)

    # -- worker ---------------------------------------------------------------------------
    def _execute(self, unit: _Unit) -> _Done:
        """Send the unit's request(s). Token boundaries that need the tokenize endpoint are left
        pending (filled by :meth:`_build_rows` in a post-processing thread), so that the worker can
        send its next generation at once."""
        j = unit.parts[0][0]  # the request's leader: its prompt, parameters and seed (stored or not)
        d = _Done(unit=unit)
        seed = j.seed if self.be.capabilities.seed else None
        if j.steps:
            d.pending = [self._execute_steps(j, d)]
            d.finished_at = time.monotonic()
            return d
        t0 = time.time()
        parts = unit.parts
        n = len(parts[0])
        prompts = [p[0].prompt for p in parts]
        # a prompt list: choice k of prompt i is choices[i * n + k] (OpenAI's order)
        res: CompletionResult = self._complete(prompts if len(parts) > 1 else j.prompt, j.params, n=n, seed=j.seed)
        d.billed_prompt, d.billed_completion = res.prompt_tokens, res.completion_tokens
        sent = dict(j.params)
        if not self.be.capabilities.top_k:
            sent.pop("top_k", None)
        if n > 1:
            sent["n"] = n
        shares = _prompt_token_shares(res.prompt_tokens, prompts)
        d.pending = []
        for i, part in enumerate(parts):
            for k, job in enumerate(part):
                if job.request_id in unit.skip:
                    continue
                ch = res.choices[i * n + k]
                extra = {"sample": job.sample, "attempts": res.attempts}
                if n > 1:
                    extra["n_choice"] = k
                    extra["n"] = n
                if len(parts) > 1:
                    extra["prompt_list"] = len(parts)
                    extra["prompt_index"] = i
                    extra["prompt_tokens_estimated"] = True
                d.pending.append((job, ch, shares[i], sent, seed, res.latency_s, t0, extra, res.endpoint))
        d.finished_at = time.monotonic()
        return d

    def _execute_steps(self, job: Job, d: _Done) -> tuple:
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
            res = self._complete(job.prompt + "".join(texts), params, n=1, seed=seed)
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
        text = "".join(texts)
        if all(c.token_source == "logprobs" for c in choices):
            offsets, logprobs, base = [], [], 0
            for c in choices:
                offsets.extend(base + o for o in c.token_offsets)
                logprobs.extend(c.token_logprobs or [])
                base += len(c.text.encode("utf-8"))
            merged = Choice(text=text, token_offsets=offsets,
                            token_logprobs=logprobs if len(logprobs) == len(offsets) else None,
                            completion_tokens=len(offsets), finish_reason=finish, token_source="logprobs")
        else:  # boundaries of the whole text at once, through the tokenize endpoint
            merged = Choice(text=text, token_offsets=None, token_logprobs=None, completion_tokens=0,
                            finish_reason=finish, token_source="pending" if self.be.capabilities.tokenize else "none")
        extra = {"sample": job.sample, "attempts": attempts, "calls": [dict(c) for c in calls]}
        return (job, merged, first_prompt_tokens or 0, dict(job.params),
                job.seed if self.be.capabilities.seed else None, latency, t0, extra, served)

    def _complete(self, prompt, params, *, n, seed) -> CompletionResult:
        """One completion call; token boundaries deferred when the backend supports it (the
        replica pool of extractor/backends/pool.py computes them inline)."""
        if self._defer:
            res = self.be.complete(prompt, params, n=n, seed=seed, defer_tokens=True)
        else:
            res = self.be.complete(prompt, params, n=n, seed=seed)
        if not res.endpoint:
            res.endpoint = self.be.endpoint  # the pool's endpoint is the member that served this thread
        return res

    def _fill_many(self, choices) -> None:
        if not choices:
            return
        many = getattr(self.be, "fill_tokens_many", None)  # the replica pool has fill_tokens only
        if many is not None:
            many(choices)
        else:
            for ch in choices:
                self.be.fill_tokens(ch)

    def _build_rows(self, d: _Done, tokens_done: bool = False) -> None:
        if not tokens_done and self._defer:
            self._fill_many([p[1] for p in d.pending if p[1].token_source == "pending"])
        rows = []
        for job, ch, prompt_tokens, params, seed, latency, t0, extra, served in d.pending:
            if ch.token_source == "pending":
                self.be.fill_tokens(ch)
            extra = {**extra, "token_source": ch.token_source}
            if ch.token_error:
                extra["token_error"] = ch.token_error
            ntok = len(ch.token_offsets) if ch.token_offsets is not None else ch.completion_tokens
            rows.append(self._row(job, ch.text, ch.token_offsets, ch.token_logprobs, prompt_tokens, ntok,
                                  ch.finish_reason, params, seed, latency, t0, extra, served))
        d.result = rows
        d.pending = None

    def _row(self, job, text, offsets, logprobs, prompt_tokens, completion_tokens, finish, params, seed,
             latency, t0, extra, endpoint) -> dict:
        return {
            "run_id": self.run_id, "request_id": job.request_id, "attack": job.attack, "variant": job.variant,
            "prompt": clean_text(job.prompt), "completion": text, "token_offsets": offsets,
            "token_logprobs": logprobs, "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens), "finish_reason": finish, "model": self.model,
            "endpoint": endpoint or self.be.endpoint, "params": json.dumps(params, sort_keys=True),
            "seed": seed, "latency_s": float(latency), "cost_usd": 0.0,
            "created_at": utcnow(precise=True), "_extra": {**job.extra, **extra},
        }

    def _worker(self, work_q: queue.Queue, post_q: queue.Queue, done_q: queue.Queue) -> None:
        while True:
            unit = work_q.get()
            if unit is None:
                return
            try:
                d = self._execute(unit)
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                done_q.put(("done", _Done(unit=unit, error=exc, finished_at=time.monotonic())))
                continue
            if any(p[1].token_source == "pending" for p in d.pending):
                done_q.put(("freed", unit))   # the generation slot is free; tokens come later
                post_q.put(d)
            else:
                try:
                    self._build_rows(d)
                except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                    d.error = exc
                done_q.put(("done", d))

    def _post_worker(self, post_q: queue.Queue, done_q: queue.Queue) -> None:
        """Token boundaries for finished completions, in batches: one tokenize request serves
        every completion waiting at that moment (see OpenAIBackend.fill_tokens_many)."""
        while True:
            d = post_q.get()
            if d is None:
                return
            batch, stop = [d], False
            while len(batch) < 64:
                try:
                    more = post_q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._fill_many([p[1] for x in batch for p in x.pending if p[1].token_source == "pending"])
            except Exception:  # noqa: BLE001 - each generation is retried alone below
                pass
            for x in batch:
                try:
                    self._build_rows(x, tokens_done=True)
                except BaseException as exc:  # noqa: BLE001
                    x.error = exc
                x.freed = True
                done_q.put(("done", x))
            if stop:
                return

    # -- main loop --------------------------------------------------------------------------
    def run(self, units, pending: int) -> None:
        """Send ``units`` (from :meth:`pending_units`; ``pending`` generations in all)."""
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.planned, initial=self.planned - pending, unit="gen", dynamic_ncols=True,
                       desc="sampling", file=sys.stderr, smoothing=0.1)
        self.bar = bar
        if bar is not None:  # messages above the bar, not through it
            outer_log = self.log
            self.log = lambda msg: bar.write(f"trawl: {msg}", file=sys.stderr) if not bar.disable else outer_log(msg)
        work_q: queue.Queue = queue.Queue()
        post_q: queue.Queue = queue.Queue()
        done_q: queue.Queue = queue.Queue()
        n_workers = min(self.concurrency, max(1, pending))
        n_post = 4  # batched token-boundary requests (see _post_worker)
        threads = [threading.Thread(target=self._worker, args=(work_q, post_q, done_q), daemon=True,
                                    name=f"trawl-worker-{i}") for i in range(n_workers)]
        posts = [threading.Thread(target=self._post_worker, args=(post_q, done_q), daemon=True,
                                  name=f"trawl-tokens-{i}") for i in range(n_post)]
        for t in threads + posts:
            t.start()
        # units handed to the workers whose generation has not come back; up to `concurrency` more
        # than the workers wait in work_q, so that a worker sends its next request the moment its
        # last one returns (no round trip through this thread); the worker count bounds what is
        # actually in flight on the server
        generating: set[int] = set()
        prefetch = self.concurrency
        max_outstanding = 4 * self.concurrency + 64
        next_unit = None
        in_flight: dict[int, _Unit] = {}
        reserved = [0, 0, 0.0]  # generations, tokens, dollars
        consecutive_failures = 0
        last_flush = time.monotonic()
        last_status = time.monotonic()
        exhausted = False
        stop_at = None
        try:
            while True:
                # dispatch
                while (self.stop_reason is None and len(generating) < self.concurrency + prefetch
                       and len(in_flight) < max_outstanding and not exhausted):
                    if next_unit is None:
                        group = next(units, None)
                        if group is None:
                            exhausted = True
                            break
                        next_unit = self._reserve(*group)
                    why = stop_reason(self.budget, self.usage, reserved_generations=reserved[0] + len(next_unit.jobs),
                                      reserved_tokens=reserved[1] + next_unit.reserve_tokens,
                                      reserved_dollars=reserved[2] + next_unit.reserve_dollars,
                                      elapsed_s=time.monotonic() - self.t0, extra_dollars=self._time_cost_pending())
                    if why is not None:
                        # a request serving several generations (n, a prompt list) that does not fit a
                        # generation cap is sent whole and only its first ones are stored: cutting it
                        # would change its seed and so its samples (see pending_units)
                        if why == "max_generations" and len(next_unit.jobs) > 1:
                            room = (self.budget.max_generations or 0) - self.usage.generations - reserved[0]
                            if room >= 1:
                                beyond = frozenset(j.request_id for j in next_unit.jobs[room:])
                                next_unit = self._reserve(next_unit.parts, next_unit.skip | beyond)
                                continue
                        self.stop_reason = why
                        break
                    unit, next_unit = next_unit, None
                    in_flight[id(unit)] = unit
                    generating.add(id(unit))
                    reserved[0] += len(unit.jobs)
                    reserved[1] += unit.reserve_tokens
                    reserved[2] += unit.reserve_dollars
                    work_q.put(unit)
                if not in_flight:
                    break
                if self.stop_reason is not None and stop_at is None:
                    stop_at = time.monotonic()
                    if self.stop_reason in ("max_seconds", "errors", "crashed", "interrupted"):
                        # units still waiting for a worker are not sent (a cap on generations, tokens
                        # or dollars reserved room for them, so those go out)
                        while True:
                            try:
                                u = work_q.get_nowait()
                            except queue.Empty:
                                break
                            if u is None:
                                continue
                            in_flight.pop(id(u), None)
                            generating.discard(id(u))
                            reserved[0] -= len(u.jobs)
                            reserved[1] -= u.reserve_tokens
                            reserved[2] -= u.reserve_dollars
                        if not in_flight:
                            break
                    if self.stop_reason not in ("errors",):
                        self.log(f"budget {self.stop_reason} reached: no new requests; finishing the {len(in_flight)} "
                                 f"in flight")
                if stop_at is not None and time.monotonic() - stop_at > self.drain_seconds:
                    self.log(f"abandoning {len(in_flight)} request(s) still in flight after {self.drain_seconds:.0f} s "
                             f"(not recorded; --resume redoes them)")
                    self.be.interrupt()
                    break
                try:
                    kind, d = done_q.get(timeout=0.5)
                except queue.Empty:
                    self._tick(bar, last_status)
                    if self.budget.max_seconds is not None and self.stop_reason is None and \
                            time.monotonic() - self.t0 >= self.budget.max_seconds:
                        self.stop_reason = "max_seconds"
                    continue
                if kind == "freed":
                    generating.discard(id(d))
                    continue
                generating.discard(id(d.unit))
                unit = in_flight.pop(id(d.unit))
                reserved[0] -= len(unit.jobs)
                reserved[1] -= unit.reserve_tokens
                reserved[2] -= unit.reserve_dollars
                if d.error is not None:
                    if isinstance(d.error, BackendError) and d.error.status in (401, 403, 404):
                        self.failed += len(unit.jobs)
                        if self.fatal is None:
                            self.stop_reason = "errors"
                            self.fatal = TrawlError(f"the server refused a request: {d.error}"
                                                    + (f"; {api_key_hint(self.be.api_key_env)}"
                                                       if d.error.status in (401, 403) else ""))
                            self.log(f"stopping: {self.fatal}")
                    elif isinstance(d.error, (BackendError, TrawlError)):
                        self.failed += len(unit.jobs)
                        consecutive_failures += 1
                        msg = str(d.error)
                        if len(self.errors) < 20:
                            self.errors.append(msg)
                        if consecutive_failures >= self.max_consecutive_failures and self.stop_reason is None:
                            self.stop_reason = "errors"
                            self.fatal = TrawlError(f"{consecutive_failures} requests in a row failed; last error: {msg}")
                            self.log(f"stopping: {self.fatal}")
                    else:
                        self.stop_reason = "crashed"
                        self.fatal = d.error
                    continue
                consecutive_failures = 0
                self._record(d)
                now = time.monotonic()
                if self.rd.buffered() >= self.rd.flush_rows or now - last_flush >= self.rd.flush_seconds:
                    self.rd.flush()
                    last_flush = now
                if now - last_status >= 5.0:
                    self._write_status("running")
                    last_status = now
                self._tick(bar, 0)
        finally:
            for _ in threads:
                work_q.put(None)
            for _ in posts:
                post_q.put(None)
            if bar is not None:
                self._tick(bar, 0)
                bar.close()
        if self.fatal is not None and not isinstance(self.fatal, TrawlError):
            raise self.fatal

    def _endpoint_stats(self) -> dict:
        stats = getattr(self.be, "stats", None)  # the replica pool reports per-member figures
        return stats() if callable(stats) else {}

    def _time_cost_pending(self) -> float:
        """With an hourly price: the cost of the wall time since the last recorded generation."""
        if not self.pricing.hourly:
            return 0.0
        return self.pricing.time_cost(time.monotonic() - self.last_done_t)

    def _record(self, d: _Done) -> None:
        rows = d.result or []
        if self.pricing.hourly:
            cost_total = self.pricing.time_cost(max(0.0, d.finished_at - self.last_done_t))
            self.last_done_t = max(self.last_done_t, d.finished_at)
        else:
            cost_total = self.pricing.token_cost(d.billed_prompt, d.billed_completion)
        share = cost_total / max(1, len(rows))
        billed_p = d.billed_prompt / max(1, len(rows))
        billed_c = d.billed_completion / max(1, len(rows))
        for row in rows:
            job_attack = self.attacks[row["attack"]]
            extra = row.pop("_extra")
            job = next(j for j in d.unit.jobs if j.request_id == row["request_id"])
            try:
                extra.update(job_attack.finish(job, row["completion"], row["token_offsets"]))
            except Exception as exc:  # noqa: BLE001 - an analysis bug must not lose the generation
                extra["finish_error"] = f"{type(exc).__name__}: {exc}"
            extra["billed_prompt_tokens"] = billed_p
            extra["billed_completion_tokens"] = billed_c
            row["extra"] = json.dumps(extra, ensure_ascii=False, sort_keys=True)
            row["cost_usd"] = share
            self.rd.append(row)
            self.usage.generations += 1
            self.new += 1
            self.session_completion += row["completion_tokens"]
        self.usage.prompt_tokens += d.billed_prompt
        self.usage.completion_tokens += d.billed_completion
        self.usage.cost_usd += cost_total
        pb = sum(len(p[0].prompt.encode("utf-8")) for p in d.unit.parts)
        if d.billed_prompt > 0 and not d.unit.jobs[0].steps:
            self._ppt_samples[0] += pb
            self._ppt_samples[1] += d.billed_prompt
            self.prompt_bytes_per_token = max(1.0, self._ppt_samples[0] / self._ppt_samples[1]) * 0.9
        if self.bar is not None:
            self._tick(self.bar, 0)
            self.bar.update(len(rows))

    def _tick(self, bar, _last) -> None:
        if bar is None:
            return
        el = max(1e-6, time.monotonic() - self.t0)
        bar.set_postfix_str(f"{self.session_completion / el:.1f} tok/s, ${self.usage.cost_usd:.4f}", refresh=False)

    def _write_status(self, state: str) -> None:
        st = self.status
        el = time.monotonic() - self.t0
        st.update({
            "status": state, "finished": self.usage.generations, "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens, "cost_usd": round(self.usage.cost_usd, 8),
            "failed_requests": self.failed, "retries": self.be.retries, "updated_at": utcnow(precise=True),
            "endpoint_stats": self._endpoint_stats(),
        })
        self.session.update({"elapsed_s": round(el, 3), "new_generations": self.new,
                             "completion_tokens": self.session_completion,
                             "tokens_per_s": round(self.session_completion / max(el, 1e-6), 3),
                             "failed_requests": self.failed, "errors": self.errors[:20]})
        self.rd.write_status(st)

    def finish(self, interrupted: bool) -> RunSummary:
        el = time.monotonic() - self.t0
        if interrupted:
            state = "interrupted"
        elif self.fatal is not None:
            state = "failed"
        elif self.usage.generations >= self.planned:
            state, self.stop_reason = "finished", None
        elif self.stop_reason is not None:
            state = "stopped"
        else:
            state = "incomplete"  # some requests failed for good: --resume retries them
            self.stop_reason = "failed_requests"
        self.status["stopped_early"] = state != "finished"
        self.status["stop_reason"] = self.stop_reason
        self.session["ended_at"] = utcnow(precise=True)
        attacks = _attack_summaries(self.rd, self.resolved)
        self.status["attacks"] = attacks
        self._write_status(state)
        return RunSummary(
            run_dir=self.rd.path, run_id=self.run_id, status=state, stop_reason=self.stop_reason,
            planned=self.planned, finished=self.usage.generations, new_generations=self.new,
            failed_requests=self.failed, prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens, cost_usd=self.usage.cost_usd, elapsed_s=el,
            tokens_per_s=self.session_completion / max(el, 1e-6),
            capabilities=self.be.capabilities.to_dict(), attacks=attacks)


def _prompt_token_shares(total: int, prompts: list[str]) -> list[int]:
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


def _attack_summaries(rd: RunDir, resolved: list[dict] | None = None) -> dict:
    t = rd.read_generations(columns=["attack", "extra", "completion_tokens"])
    out: dict = {}
    by: dict = {}
    for attack, extra, ct in zip(t.column("attack").to_pylist(), t.column("extra").to_pylist(),
                                 t.column("completion_tokens").to_pylist()):
        e = json.loads(extra) if extra else {}
        by.setdefault(attack, []).append((e, ct or 0))
    for attack, items in by.items():
        s = {"generations": len(items), "completion_tokens": sum(ct for _, ct in items)}
        extras = [e for e, _ in items]
        cls = ATTACKS.get(attack)
        if cls is not None:
            params = next((a["params"] for a in resolved or [] if a["name"] == attack), {})
            s.update(cls.summarize(extras, params))
        out[attack] = s
    return out
