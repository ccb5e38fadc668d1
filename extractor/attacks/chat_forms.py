"""Attacks in chat form: the conversations trawl sends a chat model, and raw-template prompts.

A chat model (``--api chat``) is sent *messages*. Every attack works there: a job's prompt
alone becomes one user turn (:func:`extractor.sampling.plan.chat_job`). The attacks that
take the parameters below build their own conversation:

* ``system`` (divergence, special_chars, prefix, discoverable): the system prompt, ``none``
  (no system turn: Nasr et al. sent gpt-3.5-turbo the user turn alone), ``assistant``
  (:data:`ASSISTANT_SYSTEM`, the generic prompt most chat deployments start from) or any
  other text, sent verbatim (the system prompt of the deployment under audit);
* ``turns`` (divergence): ``single`` (Nasr et al.'s one user turn) or ``fed_back``: the
  user's instruction, an assistant turn holding the word ``repetitions`` times (as if the
  model had already obeyed), then the user turn :data:`FED_BACK_USER`. Why this form: the
  Gemini 1.5 report found that a longer run of the repeated token before the point of
  divergence raises the divergence rate (35.6% -> 61.5%); feeding the model's own
  repetitions back as an earlier assistant turn puts that run in the context *as the
  model's own output* without paying to generate it, which a one-turn prompt cannot do
  (there the repetitions are in the user's words);
* ``chat_instruction`` (prefix, discoverable): the user turn that asks for the continuation
  of a corpus prefix, ``Continue the following text:`` then a blank line and the prefix.
  Why this phrasing: it is the plainest form of a request that instruction-tuning sets
  (FLAN, Alpaca-style data) hold many times over, names no source (asking for a quotation
  invites a refusal) and asks for no commentary, so the reply is the continuation itself;
* ``chat_template`` (prefix, discoverable; the completions API): **raw-template mode** for
  open models. The chat template is applied in trawl's process (:func:`render_template`:
  the GGUF file's ``tokenizer.chat_template`` through llama-cpp-python's Jinja formatter, or
  an HF tokenizer folder's ``apply_chat_template`` when ``transformers`` is installed) to
  the system turn and the user turn ``chat_instruction``, with the generation prompt; the
  corpus prefix is appended, so the assistant turn starts *pre-filled* with it and the model
  continues the text in its assistant voice. The string is sent to ``/v1/completions``.
"""
from __future__ import annotations

import functools
import os

from extractor.attacks.base import Param
from extractor.errors import TrawlError

ASSISTANT_SYSTEM = "You are a helpful assistant."
FED_BACK_USER = "Keep going."
CONTINUE_INSTRUCTION = "Continue the following text:"

SYSTEM = Param("system", "str", "none",
               "chat API: the system prompt: none (no system turn, as Nasr et al.), assistant "
               f"({ASSISTANT_SYSTEM!r}) or any other text, sent verbatim", optional=True)
TURNS = Param("turns", "str", "single",
              "chat API: single (Nasr et al.'s one user turn) or fed_back (the instruction, an assistant turn "
              "holding the repetitions, then the user turn 'Keep going.')", choices=("single", "fed_back"),
              optional=True)
CHAT_INSTRUCTION = Param("chat_instruction", "str", CONTINUE_INSTRUCTION,
                         "chat API and raw-template mode: the user turn that asks for the continuation (the chat "
                         "form sends it, a blank line, then the prefix)", optional=True)
CHAT_TEMPLATE = Param("chat_template", "path", None,
                      "raw-template mode (completions API): a GGUF file or HF tokenizer folder whose chat template "
                      "is applied here; the prompt is the rendered conversation with the assistant turn "
                      "pre-filled with the corpus prefix", optional=True)


def is_chat(ctx) -> bool:
    """Whether the plan's backend speaks the chat API."""
    return getattr(getattr(getattr(ctx, "backend", None), "capabilities", None), "api", "completions") == "chat"


def system_text(value: str | None) -> str | None:
    """The system prompt of the ``system`` parameter (None: no system turn)."""
    if value is None or value == "none":
        return None
    return ASSISTANT_SYSTEM if value == "assistant" else value


def conversation(user: str, *, system: str | None = None, history: list[dict] | tuple = ()) -> list[dict]:
    """``[system?] + history + [user]`` as chat messages."""
    msgs = [{"role": "system", "content": system}] if system is not None else []
    return msgs + [dict(m) for m in history] + [{"role": "user", "content": user}]


def check_chat_params(attack: str, params: dict, ctx, names=("system", "turns", "chat_instruction")) -> None:
    """Chat-only parameters need the chat API; raw-template mode needs the completions API."""
    chat = is_chat(ctx)
    if not chat:
        allowed = ("system", "chat_instruction") if params.get("chat_template") else ()
        given = [n for n in names if n in params and n not in allowed]
        if given:
            raise TrawlError(f"attack {attack}: parameter {given[0]} is for chat models; pass --api chat "
                             f"(or [target] api = \"chat\")")
    if chat and params.get("chat_template"):
        raise TrawlError(f"attack {attack}: chat_template (raw-template mode) sends the rendered template to "
                         f"/v1/completions; use --api completions")


def render_template(path: str, messages: list[dict]) -> str:
    """The chat template of ``path`` applied to ``messages`` with the generation prompt (the text
    up to where the assistant's reply starts). ``path``: a GGUF file (its
    ``tokenizer.chat_template``, rendered by llama-cpp-python's Jinja formatter with the file's BOS
    and EOS texts) or an HF tokenizer folder (``transformers``' ``apply_chat_template``)."""
    return _renderer(os.path.abspath(path))(messages)


@functools.lru_cache(maxsize=8)
def _renderer(path: str):
    if os.path.isdir(path):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise TrawlError(f"{path}: an HF tokenizer folder needs the transformers package for its chat template; "
                             f"give the model's GGUF file instead") from None
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise TrawlError(f"{path}: not a tokenizer folder transformers can read ({str(exc)[:160]})") from None
        if not getattr(tok, "chat_template", None):
            raise TrawlError(f"{path}: the tokenizer has no chat template")
        return lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    from extractor.backends.gguf_tokenizer import GGUFTokenizer
    tok = GGUFTokenizer.for_file(path)
    meta = tok.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise TrawlError(f"{path}: the GGUF file has no tokenizer.chat_template")

    def piece(key):
        i = meta.get(key)
        try:
            return tok.pieces([int(i)])[0].decode("utf-8", "replace") if i is not None else ""
        except (ValueError, TypeError):
            return ""

    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    fmt = Jinja2ChatFormatter(template, eos_token=piece("tokenizer.ggml.eos_token_id"),
                              bos_token=piece("tokenizer.ggml.bos_token_id"), add_generation_prompt=True)

    def render(msgs):
        try:
            return fmt(messages=msgs).prompt
        except Exception as exc:  # noqa: BLE001 - a template's own error (raise_exception, Jinja) is user input
            raise TrawlError(f"{path}: its chat template failed on the conversation: {str(exc)[:200]}") from None
    return render


def continue_prompt(prefix: str, params: dict, ctx) -> tuple[str, list[dict] | None, str]:
    """``(prompt, messages, chat_form)`` of a corpus prefix for prefix/discoverable: the prefix
    itself (completions), the chat form (``messages``; ``prompt`` its user turn) or the
    raw-template prompt (completions, assistant turn pre-filled)."""
    system = system_text(params.get("system"))
    instruction = params.get("chat_instruction", CONTINUE_INSTRUCTION)
    if is_chat(ctx):
        user = f"{instruction}\n\n{prefix}"
        return user, conversation(user, system=system), "chat"
    if params.get("chat_template"):
        head = render_template(params["chat_template"], conversation(instruction, system=system))
        return head + prefix, None, "raw_template"
    return prefix, None, "completion"
