"""The attack interface: documented parameters, a deterministic plan of jobs, and a finish hook."""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from extractor.errors import TrawlError


@dataclass(frozen=True)
class Param:
    """One documented attack parameter."""

    name: str
    kind: str          # "int", "float", "str", "list", "bool", "path", "int_list"
    default: Any
    help: str
    choices: tuple | None = None
    optional: bool = False   # left out of the resolved parameters unless given (see COMMON_PARAMS)

    def parse(self, value: Any, attack: str) -> Any:
        """Parse a CLI string or check a Python value."""
        try:
            if self.kind == "int":
                v = int(value)
            elif self.kind == "float":
                if isinstance(value, bool):
                    raise TypeError(value)
                v = float(value)
                if not math.isfinite(v):
                    # nan compares false with everything: a nan temperature passes every range check
                    raise TrawlError(f"attack {attack}: parameter {self.name} must be a finite number, got {value!r}")
            elif self.kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    v = value.lower() in ("1", "true", "yes")
                else:
                    v = bool(value)
            elif self.kind == "list":
                if isinstance(value, str):
                    v = _split_list(value)
                else:
                    v = [str(x) for x in value]
            elif self.kind == "int_list":
                if isinstance(value, str):
                    v = [int(x) for x in value.split(",") if x.strip()]
                else:
                    v = [int(x) for x in value]
            elif self.kind in ("str", "path"):
                if value is None:
                    v = None
                else:
                    v = str(value)
            else:  # pragma: no cover
                raise ValueError(self.kind)
        except (TypeError, ValueError):
            raise TrawlError(f"attack {attack}: parameter {self.name} expects {self.kind}, got {value!r}") from None
        if self.choices is not None and v not in self.choices:
            raise TrawlError(f"attack {attack}: parameter {self.name} must be one of {', '.join(map(str, self.choices))}; got {v!r}")
        return v


def _split_list(value: str) -> list[str]:
    """Comma-separated; a backslash escapes a comma (``\\,``); ``\\n``-style escapes are decoded."""
    out, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            cur.append({"n": "\n", "t": "\t", "r": "\r", ",": ",", "\\": "\\", "s": " "}.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return [w for w in out if w != ""]


IGNORE_EOS = Param(
    "ignore_eos", "bool", False,
    "keep generating past the end-of-sequence token until max_tokens (vLLM's ignore_eos); off by default, as "
    "in the literature: a sample ends where the deployed model would stop. Needs a server that honours it "
    "(vLLM's server or the in-process vllm backend); trawl refuses to plan it for one that does not",
    optional=True)
# parameters every attack takes, applied by the sampler to each planned request (see apply_common)
COMMON_PARAMS: tuple[Param, ...] = (IGNORE_EOS,)


def apply_common(job: "Job", params: dict) -> None:
    """Add the common parameters that were given (``params`` resolved) to a planned job's request(s)."""
    if params.get("ignore_eos"):
        job.params["ignore_eos"] = True
        if job.steps:
            for st in job.steps:
                st["ignore_eos"] = True


@dataclass
class Job:
    """One planned generation (a row of generations.parquet once done)."""

    attack: str
    variant: str
    prompt: str
    sample: int
    params: dict                 # sampling parameters as sent (temperature, top_k, max_tokens, ...)
    extra: dict = field(default_factory=dict)
    steps: list[dict] | None = None   # multi-call plan (temperature decay): params of the leading calls
    messages: list[dict] | None = None  # chat API: the conversation sent (``prompt``: its last user turn)
    request_id: str = ""
    seed: int | None = None

    def group_key(self) -> tuple:
        """Jobs with the same key differ only in sample index: one request with ``n`` can serve them."""
        return (self.attack, self.variant, self.prompt, json.dumps(self.params, sort_keys=True), self.steps is None,
                None if self.messages is None else json.dumps(self.messages, sort_keys=True))


def request_id(run_id: str, attack: str, variant: str, prompt: str, sample: int) -> str:
    """The contract's deterministic id: sha1 of (run_id, attack, variant, prompt, sample index)[:16]."""
    h = hashlib.sha1()
    for part in (run_id, attack, variant, prompt, str(sample)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


class RequestIds:
    """:func:`request_id` for a plan, whose samples of one prompt come in a row: the hash of (run_id,
    attack, variant, prompt) is kept and copied for each sample, instead of hashing a prompt of
    thousands of bytes once per sample. The same ids (sha1 is a stream: a copied state continues it)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._prefix = None

    def __call__(self, run_id: str, attack: str, variant: str, prompt: str, sample: int) -> str:
        key = (run_id, attack, variant, prompt)
        if key != self._key:
            h = hashlib.sha1()
            for part in key:
                h.update(part.encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
            self._key, self._prefix = key, h
        h = self._prefix.copy()
        h.update(str(sample).encode("ascii") + b"\x00")
        return h.hexdigest()[:16]


def seed_for(request_id_: str) -> int:
    """The seed of runs frozen before seed scheme 2 (``config.json`` without ``seed_scheme``): a hash
    of the request id (31 bits). Two requests of one prompt whose seeds lie less than ``n`` apart
    overlapped under vLLM's ``seed + k`` rule; kept only so that such runs resume as they started."""
    return int(request_id_[:8], 16) & 0x7FFFFFFF


SEED_SCHEME = 3   # 2: seeds as draw_seed; 3: the same seeds, prompt lists of k-th n-groups (plan.Grouping)
MAX_DRAWS = 1 << 30   # generations in one plan; seeds stay below 2**31, which every server accepts


def draw_seed(run_id: str, index: int) -> int:
    """Seed of the ``index``-th planned generation (plan order) of run ``run_id``: ``base + index``,
    with ``base < 2**30`` a hash of the run id.

    Guarantee: a server that draws choice ``k`` of a request with seed ``s`` from seed ``s + k``
    (vLLM's server and engine) gives every planned generation a draw of its own. The sampler sends
    a request with its first generation's seed; ``n`` choices cover consecutive generations, so
    choice ``k`` lands on generation ``k``'s own seed; the prompts of a prompt list are distinct
    and share the first prompt's seeds; and the generations that lead requests are disjoint, so two
    requests never use one seed for one prompt. Hashed seeds per request (scheme 1, :func:`seed_for`)
    could lie less than ``n`` apart and overlap.
    """
    if not 0 <= index < MAX_DRAWS:
        raise TrawlError(f"a plan holds at most {MAX_DRAWS} generations")
    return _seed_base(run_id) + index


@functools.lru_cache(maxsize=64)
def _seed_base(run_id: str) -> int:
    """The run's first seed (see :func:`draw_seed`), hashed once per run id."""
    return int(hashlib.sha1(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) & (MAX_DRAWS - 1)


@dataclass
class PlanContext:
    run_id: str
    backend: Any                       # has tokenize()/detokenize() when the server offers them
    seed: int = 0                      # run seed for attacks that draw (prefix positions, letters)
    log: Callable[[str], None] = lambda msg: None


class Attack:
    """Base class. Subclasses set ``name``, ``summary``, ``reference`` and ``PARAMS``."""

    name = ""
    summary = ""
    reference = ""
    PARAMS: tuple[Param, ...] = ()

    @classmethod
    def all_params(cls) -> tuple[Param, ...]:
        """The attack's own parameters, then those every attack takes (:data:`COMMON_PARAMS`)."""
        return tuple(cls.PARAMS) + COMMON_PARAMS

    @classmethod
    def param_table(cls) -> dict[str, Param]:
        return {p.name: p for p in cls.all_params()}

    @classmethod
    def resolve(cls, given: dict | None) -> dict:
        """Defaults + given values, parsed; unknown names are an error. Optional parameters
        (``Param.optional``) appear only when given, so adding one kept older run ids."""
        table = cls.param_table()
        out = {p.name: p.default for p in cls.all_params() if not p.optional}
        for k, v in (given or {}).items():
            if k not in table:
                raise TrawlError(f"attack {cls.name}: unknown parameter {k!r}; known: {', '.join(table)}")
            out[k] = table[k].parse(v, cls.name)
        cls.validate(out)
        return out

    @classmethod
    def validate(cls, params: dict) -> None:
        for k in ("samples", "max_tokens"):
            if k in params and params[k] is not None and int(params[k]) < 1:
                raise TrawlError(f"attack {cls.name}: {k} must be >= 1")
        for k in ("temperature", "decay_start", "decay_end", "approx_threshold"):
            if params.get(k) is not None and float(params[k]) < 0:
                raise TrawlError(f"attack {cls.name}: {k} must be >= 0, got {params[k]}")
        if params.get("top_p") is not None and float(params["top_p"]) <= 0:
            raise TrawlError(f"attack {cls.name}: top_p must be > 0 (1 = off), got {params['top_p']}")
        temperature = params.get("temperature")
        if params.get("samples", 1) > 1 and temperature is not None and float(temperature) <= 0:
            # every sample would be one and the same draw, counted again and billed again
            raise TrawlError(f"attack {cls.name}: samples > 1 needs temperature > 0 (greedy decoding is "
                             f"deterministic: the samples would be copies of one draw)")

    def plan(self, params: dict, ctx: PlanContext) -> Iterator[Job]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, job: Job, text: str, token_offsets: list[int] | None) -> dict:
        """Attack-specific facts about a finished generation, merged into ``extra``."""
        return {}

    @classmethod
    def summarize(cls, extras: list[dict], params: dict) -> dict:
        """Attack-specific run figures for ``run.json``'s ``attacks`` entry, from the ``extra``
        dicts of every stored generation of this attack (at least one) and the attack's resolved
        parameters (its first occurrence in the plan). The base class adds nothing."""
        return {}


def sampling_params(params: dict, *, keys=("temperature", "top_p", "top_k", "max_tokens")) -> dict:
    out = {}
    for k in keys:
        v = params.get(k)
        if v is None:
            continue
        if k == "top_k" and int(v) <= 0:
            continue
        if k == "top_p" and float(v) >= 1.0:
            continue
        out[k] = v
    return out
