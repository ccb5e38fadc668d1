"""vLLM (V1) logits processor: the exact decaying temperature of Carlini et al. 2021.

Imports vLLM at module level (vLLM loads the class by name in its engine process):
only import this module where vLLM is installed. Load it with
``LLM(..., logits_processors=[TemperatureDecay])`` or
``--logits-processors extractor.backends.vllm_logits:TemperatureDecay`` on the server
(``trawl serve`` adds it).

A request opts in with ``SamplingParams(temperature=end, extra_args={"trawl_temperature_decay":
{"start": 10.0, "end": 1.0, "tokens": 20}})``; on the server:
``"vllm_xargs": {"trawl_temperature_decay": [10.0, 1.0, 20]}`` (flat lists only there). The token
at output position ``t`` (0-based) is then drawn at temperature
``T(t) = start + (end - start) * t / tokens`` for ``t < tokens`` and at ``end`` after,
one token at a time — the schedule trawl's HTTP path can only approximate with a few calls.

How: vLLM's sampler divides the logits by the request's temperature (``end``), then
applies the argmax-invariant logits processors, then top-k/top-p, then samples. This
processor is argmax-invariant (it multiplies a row by a positive number), so it runs
after the division, and multiplies the row by ``end / T(t)``: the logits are then
divided by ``T(t)`` overall. Logprobs returned by vLLM (``raw_logprobs`` mode) are the
model's own, before any temperature.
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

KEY = "trawl_temperature_decay"


def parse_spec(spec) -> tuple[float, float, int]:
    """``{"start", "end", "tokens"}`` or ``[start, end, tokens]`` (the server's ``vllm_xargs``
    accepts flat lists only)."""
    if isinstance(spec, dict):
        return float(spec["start"]), float(spec["end"]), int(spec["tokens"])
    start, end, tokens = spec
    return float(start), float(end), int(tokens)


def decay_temperature(start: float, end: float, tokens: int, t: int) -> float:
    """The linear schedule at output position ``t`` (0-based)."""
    if t >= tokens:
        return end
    return start + (end - start) * t / tokens


class TemperatureDecay(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        spec = (sampling_params.extra_args or {}).get(KEY)
        if spec is None:
            return
        try:
            start, end, tokens = parse_spec(spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{KEY} needs start, end, tokens: {exc}") from None
        if start <= 0 or end <= 0 or tokens < 1:
            raise ValueError(f"{KEY}: start and end must be > 0 and tokens >= 1")
        if abs(sampling_params.temperature - end) > 1e-6:
            raise ValueError(f"{KEY}: the request's temperature must equal the schedule's end ({end})")

    def __init__(self, vllm_config, device, is_pin_memory: bool) -> None:
        self.req: dict[int, tuple[float, float, int, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return True

    @staticmethod
    def _state(params, _prompt_ids, output_ids):
        spec = (params.extra_args or {}).get(KEY) if params is not None else None
        if not spec:
            return None
        return (*parse_spec(spec), output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.req, batch_update, self._state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.req:
            return logits
        rows, scales = [], []
        for index, (start, end, tokens, out) in self.req.items():
            t = len(out)  # tokens generated so far: this step draws output position t
            if t < tokens:
                rows.append(index)
                scales.append(end / decay_temperature(start, end, tokens, t))
        if rows:
            idx = torch.tensor(rows, device=logits.device, dtype=torch.long)
            s = torch.tensor(scales, device=logits.device, dtype=logits.dtype).unsqueeze(1)
            logits[idx] = logits[idx] * s
        return logits
