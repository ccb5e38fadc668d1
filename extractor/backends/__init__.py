"""Model-serving backends. ``make_backend("openai", endpoint=..., model=...)``."""
from __future__ import annotations

from extractor.backends.base import BackendError, Capabilities, Choice, CompletionResult
from extractor.backends.openai import OpenAIBackend, normalize_endpoint
from extractor.errors import TrawlError



def _vllm_offline(**kwargs):  # imported on use: vLLM is an optional extra
    from extractor.backends.vllm_offline import VLLMOfflineBackend
    return VLLMOfflineBackend(**kwargs)


BACKENDS = {"openai": OpenAIBackend, "vllm": _vllm_offline}


def make_backend(name: str, **kwargs):
    ep = kwargs.get("endpoint")  # campaigns hook: several replicas -> one pool backend (backends/pool.py)
    if name == "openai" and isinstance(ep, (list, tuple)):
        if len(ep) != 1:
            from extractor.backends.pool import PoolBackend
            return PoolBackend(**kwargs)
        kwargs["endpoint"] = ep[0]
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise TrawlError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    return cls(**kwargs)


__all__ = ["BACKENDS", "BackendError", "Capabilities", "Choice", "CompletionResult", "OpenAIBackend",
           "make_backend", "normalize_endpoint"]
