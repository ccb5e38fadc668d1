"""What a server can do, and what it must be sent: the ``openai`` backend's probe.

Capability probe (:func:`probe_server`)
    A handful of tiny requests find out whether the server returns per-token
    logprobs whose token strings spell the completion, honours ``n>1``, accepts
    prompt lists, honours ``seed``, accepts ``top_k``, and offers a tokenize
    endpoint (vLLM ``/tokenize`` + ``/detokenize``, or llama-cpp-python
    ``/extras/tokenize`` + ``/extras/detokenize``). The sampler falls back when a
    feature is missing: samples of one prompt go out as separate requests when
    ``n`` is ignored; token boundaries come from re-tokenizing the completion
    when logprobs are missing or do not spell the text; a server with neither
    is refused with one clear :class:`~extractor.errors.TrawlError` (as are an
    unreachable server, a 401/403 with a hint about the API key, a 404, and an
    answer that is not an OpenAI completion).
    Every probe request honours the client's timeout (``--timeout``), and the whole
    probe ends within :func:`probe_bound` of it (a one-line TrawlError past that).
    :meth:`extractor.backends.openai.OpenAIBackend.probe` caches the result per
    (endpoint, model, token_info, tokenizer file, API key digest, server identity) for
    ``PROBE_CACHE_SECONDS`` (300 s): the identity (:func:`server_identity`, two GETs
    per use) tells a different server on a reused port from the one probed, an entry
    older than the TTL is probed again, a server without a model list is never cached,
    and a failed probe drops the endpoint's entries; every backend gets its own copy
    of the cached :class:`Capabilities`.

Server detection (:func:`detect_server`): vLLM answers ``GET /version`` with
``{"version": "..."}``; llama-cpp-python is recognised by its
``/extras/tokenize`` endpoint (found by the capability probe).

Audit-neutral sampling (:data:`VLLM_NEUTRAL`): a vLLM server started without
``--generation-config vllm`` fills every sampling field that a request leaves
out from the model's ``generation_config.json`` (many models ship
``temperature``, ``top_p``, ``top_k`` or ``repetition_penalty`` there). An
extraction audit must sample from the distribution it reports, so trawl sends
the neutral value of each such field explicitly unless the attack set it
(:func:`neutral_payload`):
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

from typing import TYPE_CHECKING

from extractor.backends.base import BackendError, Capabilities
from extractor.backends.boundaries import AlignmentError, align_tokens, is_token_id
from extractor.backends.http import OutOfTime, error_text, first_request
from extractor.errors import TrawlError

if TYPE_CHECKING:
    from extractor.backends.boundaries import TokenBoundaries
    from extractor.backends.http import HTTPClient

_PROBE_PROMPT = "The quick brown fox"
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


def detect_server(http: "HTTPClient", model: str, caps: Capabilities) -> None:
    """Fill ``caps.server``, ``caps.server_version`` and ``caps.sampling_defaults`` (and, on vLLM,
    ``ignore_eos``, ``temperature_decay`` and ``start_ids``); every request here is optional."""
    try:
        data, _ = http.request("GET", "/version", None, max_retries=0, timeout=_t(http, 10))
    except BackendError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("version"), str):
        caps.server = "vllm"
        caps.server_version = " ".join(data["version"].split())[:100]
        caps.ignore_eos = True  # a vLLM SamplingParams field its OpenAI server accepts
        caps.sampling_defaults = dict(VLLM_NEUTRAL)
        if not caps.top_k:
            caps.sampling_defaults.pop("top_k")
        caps.notes.append("vLLM: neutral sampling fields are sent explicitly (generation_config defaults "
                          "cannot apply)")
        _vllm_extensions(http, model, caps)
    elif caps.tokenize == "llama_cpp":
        caps.server = "llama_cpp"
        caps.sampling_defaults = dict(LLAMA_CPP_NEUTRAL)
        caps.notes.append("llama.cpp: neutral sampling fields are sent explicitly (the server's own defaults "
                          f"{LLAMA_CPP_SERVER_DEFAULTS} cannot apply)")


def _vllm_extensions(http: "HTTPClient", model: str, caps: Capabilities) -> None:
    """Exact temperature decay and the start-of-text ids of a vLLM server."""
    # exact temperature decay when the server loaded trawl's logits processor (trawl serve does):
    # an invalid schedule is refused (HTTP 400) by its validate_params, ignored by a server without it
    try:
        http.request("POST", "/v1/completions", {"model": model, "prompt": "a", "max_tokens": 1, "temperature": 1.0,
                                                 "vllm_xargs": {DECAY_KEY: [-1.0, 1.0, 1]}},
                     max_retries=0, timeout=_t(http, 30))
        caps.temperature_decay = False
    except BackendError as exc:
        caps.temperature_decay = exc.status == 400 and DECAY_KEY in str(exc)
    if caps.temperature_decay:
        caps.notes.append("vLLM: trawl's TemperatureDecay logits processor is loaded: temperature decay is exact")
    # vLLM refuses an empty prompt: start-of-text samples go out as the BOS token id when the
    # tokenizer adds one (else pass the model's text form of it, e.g. prompt=<|endoftext|>)
    try:
        d, _ = http.request("POST", "/tokenize", {"model": model, "prompt": "", "add_special_tokens": True},
                            max_retries=0, timeout=_t(http, 10))
        ids = d.get("tokens") if isinstance(d, dict) else None
        ok = isinstance(ids, list) and 0 < len(ids) <= 16 and all(is_token_id(i) for i in ids)
        caps.start_ids = list(ids) if ok else None
    except BackendError:
        caps.start_ids = None


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


def probe_server(http: "HTTPClient", tokens: "TokenBoundaries", caps: Capabilities, *, token_info: str = "auto",
                 tokenizer_file: str | None = None, api: str = "completions") -> Capabilities:
    """Fill ``caps`` with what the server behind ``http`` supports (see the module docstring).

    ``caps`` must be the object ``tokens`` reads its capabilities from (its ``tokenize`` field is
    set while the tokenize endpoints are tried); ``tokens.sep_ids`` and ``tokens.gguf`` are set.
    ``token_info`` ("auto", "logprobs" or "tokenize") is where token boundaries must come from;
    ``tokenizer_file`` a GGUF file to tokenize with in this process, checked against the server.
    ``api``: "completions" (``/v1/completions``), "chat" (``/v1/chat/completions``, probed by
    :func:`extractor.backends.chat.probe_chat`) or "auto" (completions where the server answers
    them, else chat); the API chosen is ``caps.api``.
    Raises TrawlError when the server is unreachable, refuses, or gives no token information.
    """
    from extractor.backends.chat import probe_chat, template_identity

    tokens.gguf = None
    base = {"model": tokens.model, "prompt": _PROBE_PROMPT, "max_tokens": 2, "temperature": 0.0}
    with http.bounded(probe_bound(http.timeout), "the start-up probe"):
        chat = api == "chat"
        if not chat:
            try:
                text, choice = _first_completion(http, caps, base)
            except TrawlError as exc:
                if api != "auto":
                    raise
                try:   # a chat-only server (or model): the chat API, else the completions error
                    probe_chat(http, tokens.model, caps, lambda s: _t(http, s))
                except TrawlError:
                    raise exc from None
                chat = True
                caps.notes.append(f"api auto: chat (the completions probe failed: {error_text(exc, 160)})")
            else:
                _probe_logprobs(caps, text, choice)
        else:
            probe_chat(http, tokens.model, caps, lambda s: _t(http, s))
        _probe_tokenize(tokens, caps)
        if not chat:
            _probe_optional(http, caps, base)
        detect_server(http, tokens.model, caps)  # vLLM / llama.cpp and their sampling defaults
        _choose_token_info(http.endpoint, token_info, caps)
        if tokenizer_file:
            tokens.use_tokenizer_file(tokenizer_file, caps)
        if chat:
            template_identity(http, tokens.model, caps, tokenizer_file, lambda s: _t(http, s))
    return caps


def probe_bound(timeout: float) -> float:
    """Seconds the whole start-up probe may take: 10 requests' worth of ``timeout``, at least 30 s
    (a slow but healthy server) and at most 600 s; each of its requests also honours ``timeout``."""
    return max(30.0, min(600.0, 10.0 * timeout))


# fields of a model list that change from one answer to the next (vLLM stamps `created` with the time
# of the request and gives each permission a fresh random id): left out of a server's identity
_VOLATILE_FIELDS = frozenset({"created", "permission", "permissions"})


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE_FIELDS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def server_identity(http: "HTTPClient") -> str | None:
    """What tells one server from another on the same endpoint, for the probe cache: the sha256 of
    its ``/v1/models`` answer (the models, their owner, root and context length; volatile fields
    left out) and its ``/version`` answer. None when the server gives no model list (nothing to tell
    it apart by: the caller probes afresh). Two requests, no retries, each within the probe's
    timeout."""
    import hashlib
    import json

    parts = []
    for path in ("/v1/models", "/version"):
        try:
            data, _ = http.request("GET", path, None, max_retries=0, timeout=_t(http, 10))
        except (BackendError, TrawlError):    # and OutOfTime: no answer is no identity
            data = None
        parts.append(data)
    if not isinstance(parts[0], dict):
        return None
    try:
        text = json.dumps(_stable(parts), sort_keys=True, ensure_ascii=True, default=str)
    except (RecursionError, ValueError):   # nesting as deep as json allows: no usable identity
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _t(http: "HTTPClient", seconds: float) -> float:
    """A probe request's timeout: its own limit, or the user's --timeout when that is shorter."""
    return min(float(seconds), http.timeout)


def _first_completion(http: "HTTPClient", caps: Capabilities, base: dict) -> tuple[str, dict]:
    """The probe prompt's completion (with logprobs when the server takes them): its text and choice."""
    data = first_request(http, "/v1/completions", base, {"logprobs": 1}, kind="completions", notes=caps.notes,
                         timeout=_t(http, 60))
    try:
        ch = data["choices"][0]
        text = ch["text"]
        if not isinstance(text, str):
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise TrawlError(f"the server at {http.endpoint} does not answer like an OpenAI completions API "
                         f"(no choices[0].text)") from None
    return text, ch


def _probe_logprobs(caps: Capabilities, text: str, ch) -> None:
    """Whether the choice's logprobs tokens spell its text, and carry numeric values."""
    lp = ch.get("logprobs") if isinstance(ch, dict) else None
    if isinstance(lp, dict) and isinstance(lp.get("tokens"), list) and lp["tokens"]:
        try:
            align_tokens(text, [t if isinstance(t, str) else "" for t in lp["tokens"]])
            caps.logprobs_tokens = True
            vals = lp.get("token_logprobs")
            caps.logprobs_values = isinstance(vals, list) and any(isinstance(v, (int, float)) for v in vals)
        except AlignmentError as exc:
            caps.notes.append(f"logprobs tokens do not spell the text: {exc}")


def _probe_tokenize(tokens: "TokenBoundaries", caps: Capabilities) -> None:
    """The first tokenize endpoint (vLLM's, then llama-cpp-python's) whose ids align with their pieces."""
    for kind in ("vllm", "llama_cpp"):
        caps.tokenize = kind
        try:
            empty = tokens.tokenize("")
            caps.tokenize_adds_bos = bool(empty)
            tokens.find_separator()
            ids = tokens.tokenize(_PROBE_PROMPT)
            if not ids:
                raise BackendError("empty tokenization")
            tokens.offsets(_PROBE_PROMPT)
            return
        except OutOfTime:
            raise
        except (BackendError, AlignmentError, TrawlError, ValueError, TypeError) as exc:
            caps.tokenize = None
            caps.tokenize_adds_bos = False
            tokens.sep_ids = None
            caps.notes.append(f"tokenize endpoint {kind}: {error_text(exc, 160)}")


def _probe_optional(http: "HTTPClient", caps: Capabilities, base: dict) -> None:
    """``n``, prompt lists, ``top_k`` and ``seed``: each honoured or not (never an error)."""
    def try_req(payload, expected):
        try:
            d, _ = http.request("POST", "/v1/completions", payload, max_retries=1, timeout=_t(http, 60))
        except BackendError:
            return None
        ch = d.get("choices") if isinstance(d, dict) else None
        ok = isinstance(ch, list) and len(ch) == expected and all(isinstance(c, dict) for c in ch)
        return ch if ok else None

    caps.n = try_req({**base, "n": 2, "temperature": 1.0, "max_tokens": 1}, 2) is not None
    caps.prompt_list = try_req({**base, "prompt": [_PROBE_PROMPT, "Once upon a time"], "max_tokens": 1}, 2) is not None
    caps.top_k = try_req({**base, "top_k": 40, "max_tokens": 1}, 1) is not None
    samples = []
    for _ in range(2):
        ch = try_req({**base, "seed": 12345, "temperature": 1.0, "max_tokens": 6}, 1)
        samples.append(ch[0].get("text") if ch else None)
    caps.seed = samples[0] is not None and samples[0] == samples[1]


def _choose_token_info(endpoint: str, pref: str, caps: Capabilities) -> None:
    """Where token boundaries come from: the user's choice when the server offers it, else the best."""
    if pref == "logprobs" and not caps.logprobs_tokens:
        raise TrawlError(f"the server at {endpoint} returns no per-token logprobs (token_info=logprobs)")
    if pref == "tokenize" and not caps.tokenize:
        raise TrawlError(f"the server at {endpoint} has no tokenize endpoint (token_info=tokenize)")
    if pref in ("logprobs", "tokenize"):
        caps.token_info = pref
    elif caps.tokenize == "llama_cpp" or (caps.tokenize and not caps.logprobs_tokens):
        # llama-cpp-python computes logprobs ~20x slower than it generates: re-tokenize instead
        caps.token_info = "tokenize"
    elif caps.logprobs_tokens:
        caps.token_info = "logprobs"
    if not caps.has_token_info:
        raise TrawlError(f"the server at {endpoint} returns no token information (no per-token logprobs, "
                         f"no tokenize endpoint); trawl needs token boundaries to count thresholds in "
                         f"the model's own tokens")
