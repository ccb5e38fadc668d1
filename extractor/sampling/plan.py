"""What a run sends, decided before anything is sent: resolved attacks, the run id, the
planned generations with their request ids and seeds, and their grouping into requests.

Guarantees:

* :func:`resolve_attacks` checks every attack's parameters (unknown attack or parameter:
  :class:`TrawlError`) and returns them with their defaults filled in;
* the automatic run id is a hash of the plan config (model + resolved attacks + seed), so
  the same campaign on the same model gets the same request ids in any folder;
* :func:`plan_jobs` expands the attacks in a fixed order; request ids are
  ``sha1(run_id, attack, variant, prompt, sample)[:16]`` and unique within the plan; seeds
  follow the run's seed scheme (:func:`extractor.attacks.base.draw_seed`: consecutive in plan
  order, so the plan order must never change);
* :class:`Grouping` turns the plan into requests as a function of the plan alone, so a
  resumed run sends exactly the requests an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from extractor.attacks import AttackSpec, Job, PlanContext, get_attack, seed_for
from extractor.attacks.base import SEED_SCHEME, RequestIds, apply_common, draw_seed
from extractor.backends.chat import as_messages, messages_id, messages_key
from extractor.errors import TrawlError
from extractor.sampling.budget import Pricing
from extractor.sampling.run_folder import FORMAT, RunDir
from extractor.sampling.settings import SamplerSettings


def canonical(obj) -> str:
    """The JSON text that plan configs are compared and hashed as (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def resolve_attacks(attacks: list[AttackSpec | str]) -> list[dict]:
    """``[{"name", "params"}]`` with every attack's parameters checked and defaulted."""
    if not attacks:
        raise TrawlError("no attacks given")
    resolved = []
    for spec in attacks:
        if isinstance(spec, str):
            spec = AttackSpec(spec)
        resolved.append({"name": spec.name, "params": get_attack(spec.name).resolve(spec.params)})
    return resolved


def plan_config(model: str, resolved: list[dict], seed: int) -> dict:
    """What fixes a run's generations: compared on resume, hashed into the automatic run id."""
    return {"model": model, "attacks": resolved, "seed": seed}


def auto_run_id(config: dict) -> str:
    return hashlib.sha1(canonical(config).encode()).hexdigest()[:12]


def open_run(rd: RunDir, config: dict, settings: SamplerSettings) -> tuple[str, int, bool]:
    """``(run_id, seed_scheme, created)`` for the run folder: a new run, or (with ``resume``)
    the frozen one, refused when its plan config or run id differs from ``config``."""
    if not rd.has_run():
        if rd.is_nonempty() and not os.path.isdir(rd.gen_dir):
            raise TrawlError(f"{rd.path} exists and is not a trawl run folder; choose an empty or new folder")
        return settings.run_id or auto_run_id(config), SEED_SCHEME, True
    if not settings.resume:
        raise TrawlError(f"{rd.path} already holds a run; pass --resume to continue it, or choose another folder")
    frozen = rd.load_config()
    if frozen.get("format") != FORMAT:
        raise TrawlError(f"{rd.config_path}: not a trawl run config")
    fplan = {"model": frozen.get("model"), "attacks": frozen.get("attacks"), "seed": frozen.get("seed")}
    if canonical(fplan) != canonical(json.loads(canonical(config))):
        raise TrawlError(f"{rd.path}: the attacks/model/seed differ from the run's frozen config.json; "
                         f"resume with the same ones, or start a new folder")
    if settings.run_id and settings.run_id != frozen.get("run_id"):
        raise TrawlError(f"{rd.path}: run id {settings.run_id!r} differs from the frozen {frozen.get('run_id')!r}")
    # runs frozen before scheme 2 resume as they began
    return frozen["run_id"], frozen.get("seed_scheme", 1), False


def plan_jobs(resolved: list[dict], ctx: PlanContext, caps, endpoint: str, seed_scheme: int) -> list[Job]:
    """Every planned generation, in plan order, with its request id and seed."""
    jobs: list[Job] = []
    seen: set[str] = set()
    ids = RequestIds()
    for spec in resolved:
        attack = get_attack(spec["name"])()
        if spec["params"].get("ignore_eos") and not getattr(caps, "ignore_eos", False):
            raise TrawlError(f"attack {spec['name']}: ignore_eos needs a server that honours it (vLLM); the server "
                             f"at {endpoint} ({caps.server or 'unknown server'}) does not")
        for job in attack.plan(spec["params"], ctx):
            apply_common(job, spec["params"])
            chat_job(job, caps, endpoint)
            rid = ids(ctx.run_id, job.attack, job.variant,
                             job.prompt if job.messages is None else messages_key(job.messages), job.sample)
            if rid in seen:
                raise TrawlError(f"two planned generations share request id {rid} ({job.attack} {job.variant!r} "
                                 f"sample {job.sample}); give repeated attacks different parameters")
            seen.add(rid)
            job.request_id = rid
            # scheme 2: one seed per generation, consecutive in plan order (see draw_seed)
            job.seed = draw_seed(ctx.run_id, len(jobs)) if seed_scheme >= 2 else seed_for(rid)
            jobs.append(job)
    return jobs


def chat_job(job: Job, caps, endpoint: str) -> None:
    """Check (and, for the chat API, complete) a planned job's conversation: on a chat server every
    job has ``messages`` (a prompt alone becomes one user turn) and ``extra.messages_id``; a job
    with messages needs the chat API; multi-call plans (temperature decay) need completions. The
    request id of a chat job hashes its whole conversation (so two system prompts are two draws)."""
    if getattr(caps, "api", "completions") != "chat":
        if job.messages is not None:
            raise TrawlError(f"attack {job.attack} ({job.variant!r}) plans a chat conversation, but the server at "
                             f"{endpoint} is used through the completions API; pass --api chat")
        return
    if job.steps:
        raise TrawlError(f"attack {job.attack} ({job.variant!r}): temperature decay chains completion calls, "
                         f"which the chat API cannot continue; use --api completions (or decay_tokens=0)")
    job.messages = as_messages(job.prompt if job.messages is None else job.messages)
    job.extra["messages_id"] = messages_id(job.messages)


def chat_record(jobs: list[Job], caps) -> dict:
    """``run.json``'s ``chat``: the API, the chat template's identity where the server exposes it,
    and each distinct conversation of the plan as sent, once, by ``messages_id``."""
    convs: dict[str, list] = {}
    for j in jobs:
        if j.messages is not None:
            convs.setdefault(j.extra.get("messages_id") or messages_id(j.messages), j.messages)
    return {"api": "chat", "template": getattr(caps, "chat_template", None),
            "max_tokens_field": getattr(caps, "chat_max_field", "max_tokens"), "messages": convs}


def prompt_bytes(job: Job) -> int:
    """UTF-8 bytes of what a job sends (the conversation's turns for a chat job)."""
    if job.messages is not None:
        return sum(len(m["content"].encode("utf-8", "surrogatepass")) + 8 for m in job.messages)
    return len(job.prompt.encode("utf-8", "surrogatepass"))


@dataclass
class Unit:
    """One request: ``parts`` holds one list of jobs per prompt (a prompt list when there are
    several, all of the same size ``n``; the jobs of a part are the ``n`` samples of its prompt)."""

    parts: list[list[Job]]
    reserve_tokens: int
    reserve_dollars: float
    skip: frozenset = frozenset()   # request ids sent but not stored (stored before, or past a cap)
    jobs: list[Job] = field(init=False)  # the generations this request stores

    def __post_init__(self) -> None:
        self.jobs = [j for p in self.parts for j in p if j.request_id not in self.skip]

    @classmethod
    def reserve(cls, parts: list[list[Job]], skip: frozenset, *, bytes_per_token: float, pricing: Pricing) -> "Unit":
        """The unit with its worst case reserved against the budget: every call's ``max_tokens``
        and the prompt estimated at ``bytes_per_token``."""
        tokens, dollars = 0, 0.0
        for group in parts:
            j = group[0]
            calls = (j.steps or []) + [j.params]
            est_prompt = int(math.ceil(prompt_bytes(j) / bytes_per_token)) + 2
            max_new = sum(int(c.get("max_tokens", 16)) for c in calls)
            tokens += (est_prompt + max_new) * len(calls) if j.steps else est_prompt + max_new * len(group)
            dollars += 0.0 if pricing.hourly else pricing.token_cost(est_prompt * len(calls), max_new * len(group))
        return cls(parts=parts, reserve_tokens=tokens, reserve_dollars=dollars, skip=skip)


@dataclass(frozen=True)
class Grouping:
    """How planned generations share requests on this server."""

    use_n: bool        # samples of one prompt share a request with ``n``
    max_n: int
    max_prompts: int   # 1: no prompt lists
    by_ordinal: bool = True   # seed scheme 3: a list holds the k-th n-groups of different prompts

    @classmethod
    def for_server(cls, settings: SamplerSettings, caps, seed_scheme: int = SEED_SCHEME) -> "Grouping":
        return cls(use_n=bool(settings.use_n and caps.n), max_n=max(1, settings.max_n),
                   max_prompts=max(1, int(settings.max_prompts if settings.use_prompt_lists and caps.prompt_list
                                          else 1)),
                   by_ordinal=seed_scheme >= 3)

    def units(self, jobs: list[Job]):
        """Requests for ``jobs`` (the whole plan, in order), as lists of parts (see :class:`Unit`).

        Samples of one prompt share a request with ``n`` (``use_n``, temperature > 0, up to
        ``max_n``): the plan's consecutive samples of a prompt make its n-groups. On servers that
        honour prompt lists, up to ``max_prompts`` n-groups of *different* prompts with the same
        parameters and the same ``n`` share a request: under seed scheme 3 the k-th n-group of each
        prompt joins the list of k-th n-groups (so 8 words x 1,250 samples at n = 16 are 79
        requests, not 632); runs frozen with an older scheme keep their grouping (consecutive
        n-groups only), so that they resume sending the requests they began with.

        Every request is sent with its first n-group's seeds (``seed + k`` for choice ``k``, see
        :func:`extractor.attacks.base.draw_seed`): an n-group is a run of consecutive generations
        of the plan and leads at most one request, so requests use disjoint seed ranges, and a
        list never holds one prompt twice; so no prompt is drawn twice with one seed.

        The grouping is a function of the plan alone, so a resumed run sends the requests an
        uninterrupted one would; requests come in the order of their first n-group.
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
        if self.by_ordinal and self.max_prompts > 1:
            yield from self._lists_by_ordinal(parts)
            return
        unit: list[list[Job]] = []
        for part in parts:
            if unit and (len(unit) >= self.max_prompts or not listable(unit, part)):
                yield unit
                unit = []
            unit.append(part)
        if unit:
            yield unit

    def _lists_by_ordinal(self, parts: list[list[Job]]):
        """Scheme 3's prompt lists: n-group ``k`` of a prompt (counted per parameters and ``n``)
        joins the open list of the k-th n-groups with the same parameters and ``n``; a full list
        is closed and the next such n-group opens a new one. Prompts in a list are distinct
        because a prompt has one k-th n-group per parameters and ``n``."""
        units: list[list[list[Job]]] = []
        open_lists: dict[tuple, list[list[Job]]] = {}
        ordinal: dict[tuple, int] = {}
        for part in parts:
            lead = part[0]
            if lead.steps is not None:
                units.append([part])
                continue
            shape = (json.dumps(lead.params, sort_keys=True), len(part))
            k = ordinal.get((shape, lead.prompt), 0)
            ordinal[(shape, lead.prompt)] = k + 1
            cur = open_lists.get((shape, k))
            if cur is None or len(cur) >= self.max_prompts:
                cur = open_lists[(shape, k)] = []
                units.append(cur)
            cur.append(part)
        return units

    def pending(self, all_jobs: list[Job], done: set[str]):
        """:meth:`units` of the whole plan, less the generations already stored, as
        ``(parts, skip)``. A unit that is only partly stored (cut by a generation cap, or a kill
        between its rows) is sent whole again and only its missing rows are kept: the same
        request with the same seed gives the same samples, so a resumed run stores exactly what
        an uninterrupted one would (the repeated part is billed)."""
        for unit in self.units(all_jobs):
            ids = {j.request_id for p in unit for j in p}
            stored = ids & done
            if stored == ids:
                continue
            yield unit, frozenset(stored)


def listable(unit: list[list[Job]], part: list[Job]) -> bool:
    """Can ``part`` join the prompt list ``unit``? Same parameters and ``n``, no leading calls,
    and a prompt not already in the list: every prompt of a list gets the request's seed, so a
    second copy of a prompt would repeat the first one's draws choice for choice."""
    a, b = unit[0][0], part[0]
    return (a.steps is None and b.steps is None and len(unit[0]) == len(part)
            and json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
            and all(p[0].prompt != b.prompt for p in unit))
