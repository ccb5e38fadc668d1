"""What trawl's ``openai`` backend does differently when the server is vLLM.

Detection (:func:`detect_server`): vLLM answers ``GET /version`` with
``{"version": "..."}``; llama-cpp-python is recognised by its
``/extras/tokenize`` endpoint (found by the capability probe).

Audit-neutral sampling (:data:`VLLM_NEUTRAL`): a vLLM server started without
``--generation-config vllm`` fills every sampling field that a request leaves
out from the model's ``generation_config.json`` (many models ship
``temperature``, ``top_p``, ``top_k`` or ``repetition_penalty`` there). An
extraction audit must sample from the distribution it reports, so trawl sends
the neutral value of each such field explicitly unless the attack set it:
``top_p=1``, ``top_k=-1`` (off), ``min_p=0``, ``repetition_penalty=1``,
``presence_penalty=0``, ``frequency_penalty=0``. Early stops on EOS stay (an
attack that wants full-length samples sets ``ignore_eos``; vLLM accepts it).

llama-cpp-python (recognised by ``/extras/tokenize``) has sampling defaults of
its own for every field a request leaves out (top_p 0.95, top_k 40, min_p 0.05,
repeat_penalty 1.1: a truncated, repetition-penalised distribution, and the
repetition penalty changes even greedy decoding). trawl sends
:data:`LLAMA_CPP_NEUTRAL` the same way: ``top_p=1``, ``top_k=0`` (off in
llama.cpp's sampler), ``min_p=0``, ``repeat_penalty=1``, zero penalties.

The effective settings are recorded: ``Capabilities.server``,
``server_version`` and ``sampling_defaults`` (the fields trawl adds to every
request unless the attack sets them) go to ``run.json``'s ``capabilities``.
"""
from __future__ import annotations

from extractor.backends.base import BackendError

DECAY_KEY = "trawl_temperature_decay"  # extractor/backends/vllm_logits.py

VLLM_NEUTRAL = {
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}

# llama-cpp-python 0.3.x applies its own sampling defaults to every field a request leaves out
# (top_p 0.95, top_k 40, min_p 0.05, repeat_penalty 1.1): a truncated, repetition-penalised
# distribution. trawl sends the neutral value of each (top_k 0 is "off" in llama.cpp's sampler).
LLAMA_CPP_SERVER_DEFAULTS = {"top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
                             "presence_penalty": 0.0, "frequency_penalty": 0.0}
LLAMA_CPP_NEUTRAL = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0,
                     "presence_penalty": 0.0, "frequency_penalty": 0.0}


def detect_server(backend, caps) -> None:
    """Fill ``caps.server``, ``caps.server_version`` and ``caps.sampling_defaults``."""
    try:
        data, _ = backend.request("GET", "/version", None, max_retries=0, timeout=10)
    except BackendError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("version"), str):
        caps.server = "vllm"
        caps.server_version = data["version"]
        caps.ignore_eos = True  # a vLLM SamplingParams field its OpenAI server accepts
        caps.sampling_defaults = dict(VLLM_NEUTRAL)
        if not caps.top_k:
            caps.sampling_defaults.pop("top_k")
        caps.notes.append("vLLM: neutral sampling fields are sent explicitly (generation_config defaults "
                          "cannot apply)")
        # exact temperature decay when the server loaded trawl's logits processor (trawl serve does):
        # an invalid schedule is refused (HTTP 400) by its validate_params, ignored by a server without it
        try:
            backend.request("POST", "/v1/completions", {"model": backend.model, "prompt": "a", "max_tokens": 1,
                                                        "temperature": 1.0,
                                                        "vllm_xargs": {DECAY_KEY: [-1.0, 1.0, 1]}},
                            max_retries=0, timeout=30)
            caps.temperature_decay = False
        except BackendError as exc:
            caps.temperature_decay = exc.status == 400 and DECAY_KEY in str(exc)
        if caps.temperature_decay:
            caps.notes.append("vLLM: trawl's TemperatureDecay logits processor is loaded: temperature decay is exact")
        # vLLM refuses an empty prompt: start-of-text samples go out as the BOS token id when the
        # tokenizer adds one (else pass the model's text form of it, e.g. prompt=<|endoftext|>)
        try:
            d, _ = backend.request("POST", "/tokenize", {"model": backend.model, "prompt": "",
                                                         "add_special_tokens": True}, max_retries=0, timeout=10)
            ids = d.get("tokens") if isinstance(d, dict) else None
            caps.start_ids = [int(i) for i in ids] if isinstance(ids, list) and ids else None
        except (BackendError, TypeError, ValueError):
            caps.start_ids = None
    elif caps.tokenize == "llama_cpp":
        caps.server = "llama_cpp"
        caps.sampling_defaults = dict(LLAMA_CPP_NEUTRAL)
        caps.notes.append("llama.cpp: neutral sampling fields are sent explicitly (the server's own defaults "
                          f"{LLAMA_CPP_SERVER_DEFAULTS} cannot apply)")


def neutral_payload(caps, payload: dict) -> dict:
    """``payload`` with the audit-neutral fields of the server added where the caller left them out."""
    server = getattr(caps, "server", None)
    if server == "llama_cpp" and caps.sampling_defaults:
        return {**caps.sampling_defaults, **payload}
    if server == "vllm" and caps.sampling_defaults:
        payload = {**caps.sampling_defaults, **payload}
        decay = payload.pop("temperature_decay", None)
        if decay is not None:  # only planned when caps.temperature_decay (see attacks/unconditional.py)
            xargs = dict(payload.get("vllm_xargs") or {})
            xargs[DECAY_KEY] = [float(decay["start"]), float(decay["end"]), int(decay["tokens"])]
            payload["vllm_xargs"] = xargs
        if payload.get("prompt") == "" and getattr(caps, "start_ids", None):
            payload["prompt"] = list(caps.start_ids)
    return payload
