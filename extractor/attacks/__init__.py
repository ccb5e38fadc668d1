"""Extraction attacks. Each is a small module with documented parameters and literature defaults.

``ATTACKS`` maps a name to its class; :class:`AttackSpec` names an attack and
its parameters (strings from the CLI or Python values); :func:`resolve` checks
them against the attack's documented parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from extractor.attacks.base import Attack, Job, Param, PlanContext, request_id, seed_for
from extractor.attacks.discoverable import Discoverable
from extractor.attacks.divergence import Divergence
from extractor.attacks.prefix import Prefix
from extractor.attacks.special_chars import SpecialChars
from extractor.attacks.unconditional import Unconditional
from extractor.errors import TrawlError

# every attack, imported plainly: a broken module is an ImportError at start-up, never a missing attack
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (Divergence, Discoverable, SpecialChars, Unconditional,
                                                              Prefix)}


@dataclass
class AttackSpec:
    """An attack by name with its parameters, e.g. ``AttackSpec("divergence", {"words": ["poem"]})``."""

    name: str
    params: dict = field(default_factory=dict)

    def resolve(self) -> dict:
        return get_attack(self.name).resolve(self.params)


def get_attack(name: str) -> type[Attack]:
    try:
        return ATTACKS[name]
    except KeyError:
        raise TrawlError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}") from None


__all__ = ["ATTACKS", "Attack", "AttackSpec", "Job", "Param", "PlanContext", "get_attack", "request_id", "seed_for"]
