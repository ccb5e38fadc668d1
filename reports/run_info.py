"""What run.json and config.json say about a run, for metrics.json's ``run`` section: its state
(:func:`run_state`, with the warning a report puts first), how its cost was priced
(:func:`pricing_basis`) and capped (:func:`budget_caps`), in words, and run.json's total cost
(:func:`run_json_cost`).

Guarantees: pure functions of the parsed JSON; a missing or ill-typed field reads as "not
recorded" (None or a sentence saying so), never an error.
"""
from __future__ import annotations

RUN_STATES = {
    "stopped": "This run stopped early{why}",
    "running": "run.json says \"running\": the run was still running or crashed{why}",
    "interrupted": "This run was interrupted{why}",
    "incomplete": "This run is incomplete{why} (some requests failed for good; --resume retries them)",
    "failed": "This run failed{why}",
}


def run_state(run_json: dict, rows: int, has_run_json: bool = True) -> dict:
    """``run.state`` of metrics.json: run.json's status, stop reason, planned and finished
    generations, and ``warning`` (a sentence; None when the run finished or says nothing)."""
    status = run_json.get("status") if isinstance(run_json.get("status"), str) else None
    reason = run_json.get("stop_reason") if isinstance(run_json.get("stop_reason"), str) else None

    def count(k):
        v = run_json.get(k)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    planned, finished = count("planned"), count("finished")
    done = finished if finished is not None else rows
    counts = f"{done:,} of {planned:,} planned generations" if planned is not None else f"{done:,} generations"
    warning = None
    if status is not None and status != "finished":
        why = f" ({reason})" if reason else ""
        warning = (RUN_STATES.get(status, f"The run status is {status!r}, not finished{{why}}").format(why=why)
                   + f": {counts}" + ("; the figures cover only what was stored" if status != "running"
                                     else "; the figures cover the generations stored so far"))
    return {"status": status if status is not None else ("not recorded" if has_run_json else "no run.json"),
            "stop_reason": reason, "stopped_early": status not in (None, "finished"), "planned": planned,
            "finished": finished, "generation_rows": rows, "warning": warning}


def _price(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def pricing_basis(pricing: dict | None) -> str:
    """How cost_usd was priced, in words (from config.json's ``pricing``)."""
    if not pricing:
        return "not recorded (no pricing in config.json)"
    hourly = pricing.get("gpu_hourly_usd")
    if hourly is not None:
        return f"gpu_hourly_usd: {_price(hourly)} (hourly GPU price x sampling wall time)"
    inp, out = pricing.get("input_per_mtok") or 0, pricing.get("output_per_mtok") or 0
    if inp or out:
        return (f"input_per_mtok: {_price(inp)}, output_per_mtok: {_price(out)} "
                "(USD per million prompt / completion tokens)")
    return "no prices given (every cost is 0)"


def budget_caps(budget: dict | None) -> str:
    """The run's budget caps, in words (from config.json's ``budget``)."""
    if not budget:
        return "not recorded (no budget in config.json)"
    caps = [f"{k}: {_price(v)}" for k, v in budget.items() if v is not None]
    return ", ".join(caps) if caps else "no caps"


def run_json_cost(rj: dict) -> float:
    """run.json's total cost (``cost_usd``, ``total_cost_usd``, ``cost`` or ``cost.usd`` ...; 0.0 when none)."""
    for key in ("cost_usd", "total_cost_usd"):
        v = rj.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    c = rj.get("cost")
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return float(c)
    if isinstance(c, dict):
        for key in ("usd", "total_usd", "cost_usd", "total"):
            v = c.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
    return 0.0
