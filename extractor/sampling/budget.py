"""Budget caps and cost.

:class:`Budget` caps a run: ``max_generations`` and ``max_tokens`` (prompt +
completion tokens as billed, over the whole run including earlier sessions),
``max_dollars`` (over the whole run) and ``max_seconds`` (wall time of this
invocation). The sampler stops *dispatching* as soon as the next request could
cross a cap (it reserves each in-flight request's worst case: its
``max_tokens`` and an estimate of its prompt tokens), lets the requests in
flight finish and be recorded, and writes the reason to ``run.json``.

:class:`Pricing` turns usage into dollars: per-million-token prices (API
pricing) or an hourly GPU price times wall time (self-hosted). With an hourly
price each generation is charged the wall time since the previous one
finished, so the rows add up to the run's wall time times the price.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from corpora.hygiene import number_problem
from extractor.errors import TrawlError


@dataclass
class Budget:
    max_generations: int | None = None
    max_tokens: int | None = None
    max_dollars: float | None = None
    max_seconds: float | None = None

    def __post_init__(self):
        # checked here, not only by the CLI and the campaign schema: a Budget built directly with
        # nan (compares false with everything) or inf would switch its own cap off silently
        for k, v in asdict(self).items():
            problem = number_problem(f"budget {k}", v, minimum=0)
            if problem is None and k in ("max_generations", "max_tokens") and v is not None \
                    and (isinstance(v, float) and not v.is_integer()):
                problem = f"budget {k} must be a whole number, got {v:g}"
            if problem:
                raise TrawlError(problem)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Pricing:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    gpu_hourly_usd: float | None = None

    def __post_init__(self):
        if self.gpu_hourly_usd is not None and (self.input_per_mtok or self.output_per_mtok):
            raise TrawlError("give either per-million-token prices or an hourly GPU price, not both")
        for k, v in asdict(self).items():
            problem = number_problem(f"price {k}", v, minimum=0)
            if problem:
                raise TrawlError(problem)

    @property
    def hourly(self) -> bool:
        return self.gpu_hourly_usd is not None

    def token_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6

    def time_cost(self, seconds: float) -> float:
        return (self.gpu_hourly_usd or 0.0) * seconds / 3600.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Usage:
    """Running totals of a run (all sessions)."""

    generations: int = 0
    prompt_tokens: int = 0       # billed (a request with n samples bills its prompt once)
    completion_tokens: int = 0
    cost_usd: float = 0.0
    failed: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def stop_reason(budget: Budget, usage: Usage, *, reserved_generations: int = 0, reserved_tokens: int = 0,
                reserved_dollars: float = 0.0, elapsed_s: float = 0.0, extra_dollars: float = 0.0) -> str | None:
    """The cap that the next dispatch would cross, or None."""
    if budget.max_seconds is not None and elapsed_s >= budget.max_seconds:
        return "max_seconds"
    if budget.max_generations is not None and usage.generations + reserved_generations > budget.max_generations:
        return "max_generations"
    if budget.max_tokens is not None and usage.tokens + reserved_tokens > budget.max_tokens:
        return "max_tokens"
    if budget.max_dollars is not None and usage.cost_usd + reserved_dollars + extra_dollars > budget.max_dollars:
        return "max_dollars"
    return None
