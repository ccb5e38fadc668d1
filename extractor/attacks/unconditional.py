"""Unconditional sampling (Carlini et al. 2021, "Extracting Training Data from Large Language
Models", USENIX Security).

Samples start from the start-of-text token: the prompt is empty (``prompt``
parameter), and the server puts its BOS token in front, as llama.cpp and vLLM
do; for an API that refuses an empty prompt, pass the model's text form of it,
e.g. ``prompt=<|endoftext|>``). Two variants, 256 tokens per sample as in the
paper:

* ``top_k``: top-k sampling with k = 40 at temperature 1;
* ``temperature_decay``: the paper's decaying temperature, 10 falling to 1 over
  the first 20 tokens, then 1. An HTTP completions API takes one temperature per
  call, so trawl **approximates** the schedule: ``decay_steps`` short calls of
  ``decay_tokens / decay_steps`` tokens, each at the mean temperature of its
  window of the linear schedule (4 calls: 9.1, 6.85, 4.6, 2.35), the text so far
  sent back as the prompt, then one continuation at temperature 1 for the rest.
  With ``decay_steps=1`` that is one 20-token call at 5.725 and the continuation.
  The server re-tokenizes the text between calls, so the token sequence can
  differ slightly from a true per-token schedule. ``extra.approximation`` says
  so, and ``extra.calls`` lists the calls' parameters.
  A backend whose capabilities say ``temperature_decay`` (the in-process vLLM
  backend, ``extractor/backends/vllm_offline.py``) gets one call per sample with
  ``params.temperature_decay = {start, end, tokens}`` instead, applied exactly, token
  by token; ``extra.exact`` is then true.
"""
from __future__ import annotations

from extractor.attacks.base import Attack, Job, Param, PlanContext, sampling_params
from extractor.errors import TrawlError

APPROXIMATION = ("temperature decay approximated over HTTP: {steps} call(s) of {per} tokens at the mean "
                 "temperature of each window of the linear {start}->{end} schedule over {tokens} tokens, then a "
                 "continuation at T={end}; text re-tokenized between calls")


def decay_schedule(start: float, end: float, tokens: int, steps: int) -> list[tuple[int, float]]:
    """[(max_tokens, temperature)] of the leading calls."""
    steps = max(1, min(steps, tokens))
    out = []
    done = 0
    for i in range(steps):
        n = tokens // steps + (1 if i < tokens % steps else 0)
        # mean of the linear schedule T(t) = start + (end - start) * t / tokens over t in [done, done + n)
        mean_t = sum(start + (end - start) * t / tokens for t in range(done, done + n)) / n
        out.append((n, round(mean_t, 4)))
        done += n
    return out


class Unconditional(Attack):
    name = "unconditional"
    summary = "sample from the start-of-text token: top-k 40, or a decaying temperature 10 -> 1"
    reference = "Carlini et al. 2021 (USENIX Security), sections 4-5"
    PARAMS = (
        Param("variants", "list", ["top_k", "temperature_decay"], "top_k and/or temperature_decay"),
        Param("prompt", "str", "", "the start-of-text prompt (empty: the server's BOS token)"),
        Param("samples", "int", 100, "generations per variant (the paper drew 200,000 per strategy)"),
        Param("max_tokens", "int", 256, "tokens per sample (the paper: 256)"),
        Param("top_k", "int", 40, "k of the top_k variant"),
        Param("temperature", "float", 1.0, "temperature of the top_k variant"),
        Param("decay_start", "float", 10.0, "initial temperature of the decay"),
        Param("decay_end", "float", 1.0, "temperature after the decay"),
        Param("decay_tokens", "int", 20, "tokens over which the temperature falls"),
        Param("decay_steps", "int", 4, "calls that approximate the falling temperature (>= 1)"),
    )

    @classmethod
    def validate(cls, params):
        super().validate(params)
        bad = set(params["variants"]) - {"top_k", "temperature_decay"}
        if bad:
            raise TrawlError(f"attack unconditional: unknown variant {sorted(bad)[0]!r}; use top_k, temperature_decay")
        if params["decay_steps"] < 1 or params["decay_tokens"] < 1:
            raise TrawlError("attack unconditional: decay_steps and decay_tokens must be >= 1")
        if "temperature_decay" in params["variants"] and params["decay_tokens"] >= params["max_tokens"]:
            raise TrawlError("attack unconditional: decay_tokens must be smaller than max_tokens")

    def plan(self, params: dict, ctx: PlanContext):
        prompt = params["prompt"]
        for variant in params["variants"]:
            if variant == "top_k":
                sp = sampling_params(params, keys=("temperature", "top_k", "max_tokens"))
                extra = {"variant": "top_k", "top_k": params["top_k"]}
                steps = None
            elif getattr(getattr(ctx.backend, "capabilities", None), "temperature_decay", False):
                # the backend applies the schedule token by token (vLLM in-process: a logits processor)
                sp = {"max_tokens": params["max_tokens"], "temperature": params["decay_end"],
                      "temperature_decay": {"start": params["decay_start"], "end": params["decay_end"],
                                            "tokens": params["decay_tokens"]}}
                extra = {"variant": "temperature_decay", "exact": True}
                steps = None
            else:
                sched = decay_schedule(params["decay_start"], params["decay_end"], params["decay_tokens"],
                                       params["decay_steps"])
                steps = [{"max_tokens": n, "temperature": t} for n, t in sched]
                sp = {"max_tokens": params["max_tokens"] - params["decay_tokens"],
                      "temperature": params["decay_end"]}
                per = "/".join(str(n) for n, _ in sched)
                extra = {"variant": "temperature_decay", "approximation": APPROXIMATION.format(
                    steps=len(sched), per=per, start=params["decay_start"], end=params["decay_end"],
                    tokens=params["decay_tokens"])}
            for s in range(params["samples"]):
                yield Job(attack=self.name, variant=variant, prompt=prompt, sample=s, params=dict(sp),
                          extra=dict(extra), steps=[dict(x) for x in steps] if steps else None)
