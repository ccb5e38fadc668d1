"""What a run reports: :class:`RunSummary` (returned by ``run_attacks``) and per-attack figures.

Guarantees: :func:`attack_summaries` counts only the stored rows (the parts; those this run folder
object wrote or verified are taken from memory, :meth:`RunDir.summary_rows`), so its figures cover
every session of the run; each attack gets ``generations`` and ``completion_tokens`` plus what its
:meth:`~extractor.attacks.base.Attack.summarize` adds.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from extractor.attacks import ATTACKS
from extractor.sampling.run_folder import RunDir


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


def attack_summaries(rd: RunDir, resolved: list[dict] | None = None) -> dict:
    """``{attack: {"generations", "completion_tokens", ...}}`` over the stored rows; the attack's
    parameters for :meth:`Attack.summarize` are those of its first entry in ``resolved``."""
    by: dict = {}
    for attack, extra, ct in rd.summary_rows():
        e = json.loads(extra) if extra else {}
        by.setdefault(attack, []).append((e, ct or 0))
    out: dict = {}
    for attack, items in by.items():
        s = {"generations": len(items), "completion_tokens": sum(ct for _, ct in items)}
        cls = ATTACKS.get(attack)
        if cls is not None:
            params = next((a["params"] for a in resolved or [] if a["name"] == attack), {})
            s.update(cls.summarize([e for e, _ in items], params))
        out[attack] = s
    return out
