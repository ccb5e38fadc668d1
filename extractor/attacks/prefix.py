"""Prefix-conditioned sampling (Carlini et al. 2021, "Internet" conditioning).

Prompts are short snippets of real text: 5 to 10 tokens (in the model's own
tokens, cut through the server's tokenize/detokenize endpoints) taken at a
random place of a random document of a corpus folder, a JSONL file or a UTF-8
text file; the model then samples 256 tokens with top-k 40. The draws are
seeded, so a resumed run plans the same prompts.

``extra``: doc_id, source, char_offset (where in the document the snippet
starts), prompt_tokens_cut (its length in tokens); for a chat model (``--api chat``) or
raw-template mode (``chat_template``) also chat_form and corpus_prefix (the snippet; the prompt
is then the continuation request, see :mod:`extractor.attacks.chat_forms`).
"""
from __future__ import annotations

import random

from extractor.attacks.base import Attack, Job, Param, PlanContext, sampling_params
from extractor.attacks.chat_forms import CHAT_INSTRUCTION, CHAT_TEMPLATE, SYSTEM, check_chat_params, continue_prompt
from extractor.attacks.corpus_source import DocSource
from extractor.errors import TrawlError


class Prefix(Attack):
    name = "prefix"
    summary = "5-10 token snippets of real text as prompts, top-k 40 sampling"
    reference = "Carlini et al. 2021 (USENIX Security), Internet-text conditioning"
    PARAMS = (
        Param("source", "path", None, "corpus folder, .jsonl or UTF-8 text file to cut prompts from (required)"),
        Param("prompts", "int", 100, "number of prompts"),
        Param("min_prompt_tokens", "int", 5, "shortest prompt, tokens"),
        Param("max_prompt_tokens", "int", 10, "longest prompt, tokens"),
        Param("samples", "int", 1, "generations per prompt"),
        Param("max_tokens", "int", 256, "tokens per sample"),
        Param("top_k", "int", 40, "top-k sampling"),
        Param("temperature", "float", 1.0, "sampling temperature"),
        Param("text_field", "str", "text", "JSONL field holding the text"),
        Param("seed", "int", 0, "seed of the prompt draws"),
        SYSTEM, CHAT_INSTRUCTION, CHAT_TEMPLATE,
    )

    @classmethod
    def validate(cls, params):
        super().validate(params)
        if not params["source"]:
            raise TrawlError("attack prefix: parameter source is required (a corpus folder or a text/JSONL file)")
        if not 1 <= params["min_prompt_tokens"] <= params["max_prompt_tokens"]:
            raise TrawlError("attack prefix: need 1 <= min_prompt_tokens <= max_prompt_tokens")

    def plan(self, params: dict, ctx: PlanContext):
        check_chat_params(self.name, params, ctx)
        if not getattr(ctx.backend.capabilities, "tokenize", None):
            raise TrawlError("attack prefix needs the server's tokenize endpoint to cut prompts in the model's "
                             "tokens; this server has none")
        src = DocSource(params["source"], params["text_field"])
        rng = random.Random(f"prefix:{params['seed']}")
        sp = sampling_params(params, keys=("temperature", "top_k", "max_tokens"))
        made, tries = 0, 0
        taken: set = set()   # (document, start) already used: a place drawn twice is drawn again
        while made < params["prompts"]:
            tries += 1
            if tries > 20 * params["prompts"] + 100:
                raise TrawlError(f"attack prefix: {params['source']} has too little text to cut "
                                 f"{params['prompts']} prompts of {params['min_prompt_tokens']}+ tokens")
            i = rng.randrange(len(src))
            doc = src.get(i)
            length = rng.randint(params["min_prompt_tokens"], params["max_prompt_tokens"])
            start = rng.randrange(max(1, len(doc.text)))
            # move to the start of a word so that the first token is whole
            while start > 0 and not doc.text[start - 1].isspace():
                start -= 1
            if (i, start) in taken:
                continue
            window = doc.text[start:start + (length + 4) * 24]
            ids = ctx.backend.tokenize(window)
            if len(ids) < length + 1 and start + len(window) < len(doc.text):
                continue
            if len(ids) < length:
                continue
            prompt = ctx.backend.detokenize(ids[:length])
            if not prompt.strip():
                continue
            sent, messages, form = continue_prompt(prompt, params, ctx)
            extra = {"doc_id": doc.doc_id, "source": doc.source, "char_offset": start, "prompt_tokens_cut": length}
            if form != "completion":
                extra.update(chat_form=form, corpus_prefix=prompt)
            for s in range(params["samples"]):
                yield Job(attack=self.name, variant=f"doc:{doc.doc_id}@{start}", prompt=sent, sample=s,
                          params=dict(sp), extra=dict(extra), messages=messages)
            taken.add((i, start))
            made += 1
