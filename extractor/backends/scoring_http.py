"""Scoring given text over HTTP: ``Backend.score`` for any OpenAI-compatible ``/v1/completions``
server that echoes the prompt with its logprobs (``echo: true`` + ``logprobs: k``).

One request per batch of texts (a prompt list where the server takes one, else one request per
text), ``max_tokens: 1`` (``0`` means "no limit" to llama-cpp-python) at temperature 0; the
echoed prompt's tokens are aligned with the prompt's UTF-8 bytes
(:func:`extractor.backends.alignment.align_tokens`) and the tokens from the end of the context to
the end of the prompt are the scored positions. The one generated token is discarded.

What servers give (checked in tests/extractor/backends/test_scoring.py against llama.cpp in
process, :mod:`extractor.backends.llama_inprocess`):

* llama-cpp-python's server (0.3.x): echo logprobs equal the in-process values (to float32
  rounding), except that the first prompt token has none (``null``: it is not scored given BOS), so
  a text with no context has NaN at position 0. ``top_logprobs`` hold the top ``k`` plus the
  prompt's own token.
* vLLM: the echoed tokens start with BOS (no value), which is dropped; the text's first token is
  scored given BOS. vLLM caps ``logprobs`` at its ``max_logprobs`` (default 20).

The vocabulary statistics of min-k%++ (``vocab_stats=True``) cannot be exact here: a server sends
at most its top-k. They are estimated from the top-k renormalised (``exact_vocab_stats`` False,
with a ``note``); ``full=True`` gives ``full_logprobs=None``.

Bad answers (not JSON, missing or mistyped fields, tokens that do not spell the prompt, a
context boundary inside a token) raise :class:`~extractor.backends.base.BackendError` with one
line; malformed JSON is retried like a 5xx (:class:`~extractor.backends.http.MalformedResponse`).
"""
from __future__ import annotations

import math

from extractor.backends.alignment import AlignmentError, align_tokens
from extractor.backends.base import BackendError, Capabilities, TextScore
from extractor.backends.http import MalformedResponse
from extractor.errors import TrawlError

DEFAULT_TOP_K_FOR_STATS = 20    # top-k asked for when vocab_stats is asked without top_k (vLLM's default cap)


def note_capability(caps: Capabilities) -> None:
    """Set ``caps.score`` after the probe: echo scoring needs numeric logprobs."""
    caps.score = "echo" if caps.logprobs_values else None
    caps.full_distribution = False


def vocab_stats_from_top(top: dict[str, float]) -> tuple[float, float]:
    """Mean and variance of log p under the next-token distribution (Zhang et al. 2024's mu and
    sigma^2), estimated from the top-k alone renormalised (NaN when there is none)."""
    vals = [v for v in top.values() if isinstance(v, float) and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    m = max(vals)
    z = sum(math.exp(v - m) for v in vals)
    pairs = [(math.exp(v - m) / z, v) for v in vals]
    pairs = [(w, v) for w, v in pairs if w > 0.0]    # a weight that underflows adds nothing (and may overflow)
    mean = sum(w * v for w, v in pairs)
    var = sum(w * (v - mean) ** 2 for w, v in pairs)
    return mean, var


_MAX_LOGPROB = 1e-3     # a log-probability is <= 0; servers' float rounding stays far below this


class BoundaryError(ValueError):
    """The context's last token runs into the text: the text's tokens given the context are not
    the text's own (a property of the input, not of the answer: not retried)."""


def _num(v) -> float:
    if v is None:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("a logprob is not a number")
    try:
        x = float(v)
    except OverflowError:
        raise ValueError("a logprob is out of range") from None
    if not x <= _MAX_LOGPROB:
        raise ValueError("a logprob is positive or not a number")
    return x


def parse_echo(choice, prompt: str, context: str, *, top_k: int, vocab_stats: bool) -> TextScore:
    """One echoed choice -> the :class:`TextScore` of ``prompt[len(context):]``; raises ValueError
    (one line) when the answer cannot be read without guessing."""
    if not isinstance(choice, dict):
        raise ValueError("a choice is not an object")
    text = choice.get("text")
    lp = choice.get("logprobs")
    if not isinstance(text, str) or not isinstance(lp, dict):
        raise ValueError("a choice has no text string or no logprobs object")
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise ValueError("logprobs.tokens and logprobs.token_logprobs are not lists of one length")
    tops = lp.get("top_logprobs")
    if tops is not None and (not isinstance(tops, list) or len(tops) != len(tokens)):
        raise ValueError("logprobs.top_logprobs is not a list as long as the tokens")
    if not text.startswith(prompt):
        raise ValueError("the answer does not echo the prompt (the server ignores echo)")
    toks = [t if isinstance(t, str) else "" for t in tokens]
    # a server that adds BOS echoes it as a token without a value (vLLM): it spells no text
    skip = 0
    offsets = None
    while offsets is None:
        try:
            offsets = align_tokens(text, toks[skip:])
        except AlignmentError as exc:
            if skip < 2 and skip < len(toks) and values[skip] is None:
                skip += 1
                continue
            raise ValueError(f"the echoed tokens do not spell the prompt ({exc})") from None
    ctx_b, end_b = len(context.encode("utf-8")), len(prompt.encode("utf-8"))
    idx = [skip + i for i, o in enumerate(offsets) if ctx_b <= o < end_b]
    starts = set(offsets)
    if ctx_b and ctx_b not in starts:
        raise BoundaryError("the context and the text share a token (no token starts where the text does); "
                            "split the text at a token boundary")
    if end_b not in starts and end_b != len(text.encode("utf-8")):
        raise ValueError("the prompt's last token runs into the generated text")
    if not idx and prompt[len(context):]:
        raise ValueError("no token of the text was echoed")
    logprobs = [_num(values[i]) for i in idx]
    top_out = None
    mean = var = None
    if top_k or vocab_stats:
        top_out = []
        for i in idx:
            t = tops[i] if tops is not None else None
            if t is None:
                top_out.append({})
                continue
            if not isinstance(t, dict):
                raise ValueError("a top_logprobs entry is not an object")
            top_out.append({str(k): _num(v) for k, v in t.items()})
        if vocab_stats:
            stats = [vocab_stats_from_top(t) for t in top_out]
            mean, var = [s[0] for s in stats], [s[1] for s in stats]
        if not top_k:
            top_out = None
        else:
            top_out = [dict(sorted(t.items(), key=lambda kv: -kv[1] if kv[1] == kv[1] else math.inf)[:top_k])
                       for t in top_out]
    return TextScore(token_ids=None, token_offsets=[offsets[i - skip] - ctx_b for i in idx], logprobs=logprobs,
                     top_logprobs=top_out, vocab_mean=mean, vocab_var=var, exact_vocab_stats=False,
                     prompt_tokens=len(tokens) - 1,
                     note=("vocabulary mean and variance estimated from the server's top-k logprobs "
                           "(renormalised), not the full distribution") if vocab_stats else None)


def score_http(backend, texts: list[str], *, contexts: list[str] | None = None, top_k: int = 0,
               vocab_stats: bool = False, full: bool = False, timeout: float | None = None) -> list[TextScore]:
    """``Backend.score`` for :class:`~extractor.backends.openai.OpenAIBackend` (module docstring)."""
    caps = backend.capabilities
    if not caps.score:
        raise TrawlError(f"the server at {backend.endpoint} cannot score text: it returns no numeric logprobs")
    if contexts is not None and len(contexts) != len(texts):
        raise TrawlError("score: contexts must be as many as texts")
    ctxs = contexts if contexts is not None else [""] * len(texts)
    prompts = [c + t for c, t in zip(ctxs, texts)]
    k = max(int(top_k), DEFAULT_TOP_K_FOR_STATS if vocab_stats else 0, 1)
    out: list[TextScore] = []
    groups = [list(range(len(prompts)))] if caps.prompt_list and len(prompts) > 1 else [[i] for i in range(len(prompts))]
    for group in groups:
        if not group:
            continue
        ps = [prompts[i] for i in group]
        payload = {"model": backend.model, "prompt": ps if len(ps) > 1 else ps[0], "echo": True, "logprobs": k,
                   "max_tokens": 1, "temperature": 0.0}
        parsed: list[TextScore] = []
        boundary: list[str] = []

        def check(data, group=group, ps=ps, parsed=parsed, boundary=boundary):
            parsed.clear()
            boundary.clear()
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                raise MalformedResponse("malformed scoring JSON from /v1/completions: no choices list")
            ch = data["choices"]
            if len(ch) != len(ps):
                raise MalformedResponse(f"malformed scoring JSON from /v1/completions: {len(ch)} choices, "
                                        f"expected {len(ps)}")
            if any(isinstance(c, dict) and "index" in c for c in ch):
                idx = [c.get("index") if isinstance(c, dict) else None for c in ch]
                if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx) or \
                        sorted(idx) != list(range(len(ps))):
                    raise MalformedResponse("malformed scoring JSON from /v1/completions: choice indexes are "
                                            f"not 0..{len(ps) - 1} each once")
                ch = sorted(ch, key=lambda c: c["index"])
            for j, (c, p) in enumerate(zip(ch, ps)):
                try:
                    parsed.append(parse_echo(c, p, ctxs[group[j]], top_k=int(top_k), vocab_stats=vocab_stats))
                except BoundaryError as exc:
                    boundary.append(f"text {group[j]}: {exc}")
                    parsed.append(None)
                except (ValueError, TypeError, AttributeError) as exc:
                    raise MalformedResponse(f"unusable scoring answer from /v1/completions (prompt {j}): "
                                            f"{' '.join(str(exc).split())[:200]}") from None

        backend.http.request("POST", "/v1/completions", payload, timeout=timeout, check=check,
                             max_bytes=(1 << 20) + sum(len(p.encode("utf-8")) for p in ps) * 64 * (k + 2))
        if boundary:
            raise BackendError(f"cannot score {boundary[0]}", retryable=False)
        out.extend(parsed)
    return out

