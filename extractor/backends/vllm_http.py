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

The effective settings are recorded: ``Capabilities.server``,
``server_version`` and ``sampling_defaults`` (the fields trawl adds to every
request, or for llama-cpp-python the server's own defaults, which apply to
fields a request leaves out) go to ``run.json``'s ``capabilities``.
"""
from __future__ import annotations

from extractor.backends.base import BackendError

VLLM_NEUTRAL = {
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}

# llama-cpp-python 0.3.x server defaults for fields a request omits (recorded, not changed)
LLAMA_CPP_DEFAULTS = {"top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
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
        caps.sampling_defaults = dict(VLLM_NEUTRAL)
        if not caps.top_k:
            caps.sampling_defaults.pop("top_k")
        caps.notes.append("vLLM: neutral sampling fields are sent explicitly (generation_config defaults "
                          "cannot apply)")
    elif caps.tokenize == "llama_cpp":
        caps.server = "llama_cpp"
        caps.sampling_defaults = {"server_defaults": dict(LLAMA_CPP_DEFAULTS)}


def neutral_payload(caps, payload: dict) -> dict:
    """``payload`` with the audit-neutral fields of the server added where the caller left them out."""
    if getattr(caps, "server", None) == "vllm" and caps.sampling_defaults:
        return {**caps.sampling_defaults, **payload}
    return payload
