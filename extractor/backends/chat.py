"""The Chat Completions API (``/v1/chat/completions``) of the ``openai`` backend.

A chat model is reached with *messages* (``system``, ``user`` and ``assistant`` turns)
instead of a prompt; its answer is the assistant's ``message.content``. This module holds
what differs from ``/v1/completions``, so that :class:`~extractor.backends.openai.OpenAIBackend`
keeps one request path for both APIs:

* :func:`as_messages` turns what the sampler hands the backend (a prompt string: one user
  turn; or a list of ``{"role", "content"}`` turns) into checked messages;
  :func:`messages_key` is their canonical JSON (request ids, grouping, ``run.json``);
* :func:`chat_payload` is the JSON body: ``messages``, the sampling parameters,
  ``max_tokens`` renamed ``max_completion_tokens`` where the server honours that name
  (OpenAI's newer models refuse ``max_tokens``), ``logprobs: true`` (and ``top_logprobs``)
  when token boundaries or values come from them;
* :func:`check_chat` refuses, as one line (:class:`MalformedResponse`, retried like every
  malformed answer), a body that is not a chat answer that can be read without guessing;
* :func:`chat_tokens` reads the boundaries of the assistant text from the answer's
  ``logprobs.content``: from each entry's ``bytes`` when every entry has them and they
  spell the text's UTF-8 exactly (OpenAI, vLLM), else by aligning the entries' ``token``
  strings (llama-cpp-python gives ``bytes: null``); when neither tiles the text the caller
  re-tokenizes it (tokenize endpoint or GGUF file) or marks it ``token_source == "none"``;
* :func:`probe_chat` is the start-up probe for ``api = "chat"``: a one-turn request, its
  logprobs, ``n``, ``seed``, ``top_k``, the ``max_completion_tokens`` name, and the chat
  template's identity (:func:`template_identity`) where it can be had.

The chat template's identity (``Capabilities.chat_template``): the SHA-256 of the template
text when trawl can read it (the GGUF file given with ``--tokenizer-file``: its
``tokenizer.chat_template``; llama.cpp's native server: ``GET /props``), else, on vLLM, the
SHA-256 of a fixed two-turn conversation as the server renders it (``/tokenize`` with
``messages`` then ``/detokenize``): a different template renders it differently. None when
the server exposes neither (OpenAI, llama-cpp-python without the model file).
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from extractor.backends.alignment import AlignmentError, align_tokens
from extractor.backends.base import BackendError, Capabilities
from extractor.backends.http import (MalformedResponse, check_choices, first_request, json_kind,
                                     logprob_value)
from extractor.errors import TrawlError

if TYPE_CHECKING:
    from extractor.backends.http import HTTPClient

CHAT_PATH = "/v1/chat/completions"
ROLES = ("system", "user", "assistant")
PROBE_MESSAGES = [{"role": "user", "content": "The quick brown fox"}]
# rendered by the server's chat template for the template's fingerprint (vLLM)
_FINGERPRINT = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]


def as_messages(prompt) -> list[dict]:
    """Checked messages for ``prompt``: a string is one user turn; a list of turns is checked
    (each ``{"role": system|user|assistant, "content": str}``, nothing else). TrawlError otherwise."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise TrawlError("a chat request needs a prompt string or a non-empty list of messages")
    out = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in ROLES \
                or not isinstance(m["content"], str):
            raise TrawlError(f"message {i} is not a {{role: system|user|assistant, content: text}} turn")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def messages_key(messages: list[dict]) -> str:
    """Canonical JSON of ``messages`` (sorted keys, no spaces, non-ASCII kept)."""
    return json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def messages_id(messages: list[dict]) -> str:
    """A short stable name of a conversation (``extra.messages_id``; ``run.json``'s ``chat.messages`` key)."""
    return hashlib.sha256(messages_key(messages).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def chat_payload(model: str, messages: list[dict], params: dict, caps: Capabilities, *, logprobs: bool,
                 top_logprobs: int = 0, n: int = 1, seed: int | None = None) -> dict:
    """The JSON body of one chat request (before the server's neutral sampling fields are added)."""
    payload = {"model": model, "messages": messages, **params}
    if "max_tokens" in payload and caps.chat_max_field == "max_completion_tokens":
        payload["max_completion_tokens"] = payload.pop("max_tokens")
    if logprobs:
        payload["logprobs"] = True
        if top_logprobs > 0:
            payload["top_logprobs"] = int(top_logprobs)
    if n > 1:
        payload["n"] = n
    if seed is not None and caps.seed:
        payload["seed"] = int(seed)
    if not caps.top_k:
        payload.pop("top_k", None)
    return payload


def chat_cap(payload: dict, choices: int, bytes_per_token: int, default_tokens: int) -> tuple[int, str]:
    """The byte cap of a chat answer (as :func:`extractor.backends.openai.completion_cap`)."""
    mt = payload.get("max_completion_tokens", payload.get("max_tokens"))
    tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0 else default_tokens
    pbytes = sum(len(m.get("content", "").encode("utf-8", "replace")) for m in payload.get("messages") or [])
    cap = (1 << 20) + choices * (bytes_per_token * tokens + 8 * pbytes)
    return cap, f" (max_tokens={mt if mt is not None else 'unset'}, {choices} choice{'s' * (choices != 1)})"


def check_chat(data, expected: int) -> None:
    """Raise :class:`MalformedResponse` (one line, retried) unless ``data`` is a chat answer with
    ``expected`` choices: an object; ``choices`` a list of objects, each with a ``message``
    object whose ``content`` is a string or null, a string or null ``finish_reason``, and, when
    any has an ``index``, indexes ``0..expected-1`` each once; ``usage`` null or an object of
    counts. (``logprobs`` that cannot be read are not an error: boundaries then come from a
    tokenizer, or the choice is marked.)"""
    def bad(why):
        raise MalformedResponse(f"malformed chat JSON from {CHAT_PATH}: {why}")

    def message(i, c, bad):
        msg = c.get("message")
        if not isinstance(msg, dict):
            bad(f"choice {i}: message is {json_kind(msg)}, not an object")
        if not (msg.get("content") is None or isinstance(msg.get("content"), str)):
            bad(f"choice {i}: message.content is {json_kind(msg.get('content'))}, not a string")

    check_choices(data, expected, bad, message)


def _byte_list(b) -> bytes | None:
    if not isinstance(b, list) or not b:
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 256 for x in b):
        return None
    return bytes(b)


def chat_tokens(text: str, logprobs) -> tuple[list[int] | None, list[float] | None]:
    """``(offsets, logprob values)`` of the assistant ``text`` from a chat choice's ``logprobs``
    (``{"content": [{"token", "logprob", "bytes"}, ...]}``), or ``(None, None)`` when they do not
    tile the text exactly. Offsets come from the entries' ``bytes`` when all have them and their
    concatenation is the text's UTF-8; else from aligning the ``token`` strings."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not all(isinstance(e, dict) for e in content):
        return None, None
    vals = [logprob_value(e.get("logprob")) for e in content]
    raw = text.encode("utf-8", "surrogatepass")
    pieces = [_byte_list(e.get("bytes")) for e in content]
    if all(p is not None for p in pieces) and b"".join(pieces) == raw:
        offsets, pos = [], 0
        for p in pieces:
            offsets.append(pos)
            pos += len(p)
        return offsets, vals
    toks = [e.get("token") if isinstance(e.get("token"), str) else "" for e in content]
    try:
        return align_tokens(text, toks), vals
    except AlignmentError:
        return None, None


# -- the probe ------------------------------------------------------------------------------
def probe_chat(http: "HTTPClient", model: str, caps: Capabilities, timeout_of) -> str:
    """The chat part of the start-up probe (``caps.api`` becomes "chat"): a one-turn request
    (with logprobs when the server takes them), then ``n``, ``seed``, ``top_k`` and the
    ``max_completion_tokens`` name, each honoured or not. Returns the reply's text. Raises
    TrawlError when the server does not answer chat requests."""
    base = {"model": model, "messages": PROBE_MESSAGES, "max_tokens": 2, "temperature": 0.0}
    data = first_request(http, CHAT_PATH, base, {"logprobs": True}, kind="chat", notes=caps.notes,
                         timeout=timeout_of(60), check=lambda d: check_chat(d, 1))
    caps.api = "chat"
    ch = data["choices"][0]
    text = ch["message"].get("content") or ""
    offsets, vals = chat_tokens(text, ch.get("logprobs"))
    if text and offsets is not None:
        caps.logprobs_tokens = True
        caps.logprobs_values = any(v == v for v in (vals or []))
    _probe_chat_optional(http, caps, base, timeout_of)
    return text


def _probe_chat_optional(http: "HTTPClient", caps: Capabilities, base: dict, timeout_of) -> None:
    def try_req(payload, expected):
        try:
            d, _ = http.request("POST", CHAT_PATH, payload, max_retries=1, timeout=timeout_of(60),
                                check=lambda d: check_chat(d, expected))
        except BackendError:
            return None
        return d

    caps.n = try_req({**base, "n": 2, "temperature": 1.0, "max_tokens": 1}, 2) is not None
    caps.prompt_list = False   # a chat request holds one conversation
    caps.top_k = try_req({**base, "top_k": 40, "max_tokens": 1}, 1) is not None
    texts = []
    for _ in range(2):
        d = try_req({**base, "seed": 12345, "temperature": 1.0, "max_tokens": 6}, 1)
        texts.append(d["choices"][0]["message"].get("content") if d else None)
    caps.seed = texts[0] is not None and texts[0] == texts[1]
    # OpenAI's newer models refuse max_tokens; the name is used only where the server honours it
    d = try_req({k: v for k, v in base.items() if k != "max_tokens"} | {"max_completion_tokens": 1}, 1)
    used = ((d or {}).get("usage") or {}).get("completion_tokens")
    caps.chat_max_field = "max_completion_tokens" if isinstance(used, int) and used == 1 else "max_tokens"


def template_identity(http: "HTTPClient", model: str, caps: Capabilities, gguf_path: str | None, timeout_of) -> None:
    """Fill ``caps.chat_template`` (``{"sha256", "source"}``) where the template can be identified."""
    text, source = None, None
    if gguf_path:
        text = gguf_chat_template(gguf_path)
        source = "gguf" if text else None
    if text is None:
        try:
            d, _ = http.request("GET", "/props", None, max_retries=0, timeout=timeout_of(10))
            if isinstance(d, dict) and isinstance(d.get("chat_template"), str) and d["chat_template"]:
                text, source = d["chat_template"], "props"
        except BackendError:
            pass
    if text is None and caps.tokenize == "vllm":
        try:
            d, _ = http.request("POST", "/tokenize", {"model": model, "messages": _FINGERPRINT,
                                                      "add_generation_prompt": True},
                                max_retries=0, timeout=timeout_of(10))
            ids = d.get("tokens") if isinstance(d, dict) else None
            if isinstance(ids, list) and ids:
                r, _ = http.request("POST", "/detokenize", {"model": model, "tokens": ids}, max_retries=0,
                                    timeout=timeout_of(10))
                if isinstance(r, dict) and isinstance(r.get("prompt"), str):
                    text, source = r["prompt"], "vllm_rendered"
        except BackendError:
            pass
    if text is not None:
        caps.chat_template = {"sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                              "source": source}
    else:
        caps.notes.append("chat template: the server does not expose it (give --tokenizer-file for a GGUF)")


def gguf_chat_template(path: str) -> str | None:
    """The ``tokenizer.chat_template`` of a GGUF file (None when it has none or cannot be read)."""
    try:
        from extractor.backends.gguf_tokenizer import GGUFTokenizer
        meta = GGUFTokenizer.for_file(path).metadata
    except (TrawlError, OSError, ValueError, AttributeError):
        return None
    t = meta.get("tokenizer.chat_template") if isinstance(meta, dict) else None
    return t if isinstance(t, str) and t else None
