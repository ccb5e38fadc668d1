"""Model-serving backends. ``make_backend("openai", endpoint=..., model=...)`` returns a
:class:`~extractor.backends.base.Backend`.

Modules: ``base`` (the protocol and what backends return), ``openai`` (one
OpenAI-compatible server) composed of ``http`` (transport), ``boundaries`` (token
boundaries) and ``probe`` (capabilities, server detection, neutral sampling fields);
``pool`` (replicas behind one backend); ``vllm_offline`` (vLLM in trawl's process,
with ``vllm_logits``); ``vllm_ray`` (one such engine per Ray worker, ``make_backend("vllm",
ray={...})``); ``gguf_tokenizer`` (a model file's tokenizer in trawl's process).
"""
from __future__ import annotations

from extractor.backends.base import Backend, BackendError, Capabilities, Choice, CompletionResult
from extractor.backends.http import api_key_hint, normalize_endpoint
from extractor.backends.openai import OpenAIBackend, clean_text
from extractor.errors import TrawlError


def _vllm_offline(**kwargs):  # imported on use: vLLM is an optional extra
    ray = kwargs.pop("ray", None)
    if ray and ray.get("kind", "ray") == "ray":   # one engine per Ray worker (backends/vllm_ray.py)
        from extractor.backends.vllm_ray import VLLMRayBackend
        return VLLMRayBackend(ray=ray, **kwargs)
    from extractor.backends.vllm_offline import VLLMOfflineBackend
    return VLLMOfflineBackend(**kwargs)


BACKENDS = {"openai": OpenAIBackend, "vllm": _vllm_offline}


def make_backend(name: str, **kwargs) -> Backend:
    """The backend ``name`` ("openai" or "vllm") built with ``kwargs``; ``endpoint`` a list of
    more than one URL (``openai``) gives a :class:`~extractor.backends.pool.PoolBackend` of
    replicas. Raises TrawlError for an unknown name. Nothing is sent before ``probe``."""
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


__all__ = ["BACKENDS", "Backend", "BackendError", "Capabilities", "Choice", "CompletionResult", "OpenAIBackend",
           "api_key_hint", "clean_text", "make_backend", "normalize_endpoint"]
