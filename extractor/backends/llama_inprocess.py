"""Scoring text with llama.cpp in trawl's process, from the GGUF file (llama-cpp-python).

:class:`LlamaScorer` implements the scoring part of the :class:`~extractor.backends.base.Backend`
protocol (``score``, ``capabilities``, ``describe``, ``close``): it loads the model with
``logits_all=True``, evaluates ``BOS + context + text`` (tokenized together, special tokens parsed,
as llama-cpp-python's server does) and takes the log-softmax of every row in float64. It sees the
whole next-token distribution, so the vocabulary statistics of min-k%++ are exact
(``capabilities.full_distribution``) and ``full=True`` returns the rows.

Why in process: the llama.cpp server's echo logprobs leave the first prompt token unscored (no
value given BOS), and the server scores one request at a time behind its generation lock; in
process, the first token is scored given BOS and nothing waits on a server. Where both have a
value they agree (tests/extractor/backends/test_scoring.py).

Texts are evaluated one at a time (llama.cpp's Python binding keeps one sequence); each is cut to
the model's context window (``n_ctx``): a longer one raises TrawlError naming its length.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from extractor.backends.alignment import AlignmentError, align_tokens, offsets_from_pieces
from extractor.backends.base import Capabilities, TextScore
from extractor.backends.gguf_tokenizer import _decoded, open_gguf
from extractor.errors import TrawlError


class LlamaScorer:
    """llama.cpp in process, for ``score`` only (see the module docstring)."""

    name = "llama_inprocess"

    def __init__(self, model_path: str | os.PathLike, *, model: str | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, n_batch: int = 512) -> None:
        self.path = os.path.abspath(os.fspath(model_path))
        self._llm = open_gguf(self.path, "model file", logits_all=True, n_ctx=n_ctx, n_batch=n_batch,
                              n_threads=n_threads or os.cpu_count() or 1)
        self.model = model or os.path.basename(self.path)
        self.endpoint = f"in-process:{os.path.basename(self.path)}"
        self.endpoints = [self.endpoint]
        self.n_ctx = n_ctx
        self.retries = 0
        self.api_key_env = None
        self.capabilities = Capabilities(score="in_process", full_distribution=True, server="llama_cpp_inprocess",
                                         prompt_list=True)
        self.scores_as_generated = True          # score(..., as_generated=True) is supported
        self._lock = threading.Lock()
        self._pieces: dict[int, bytes] = {}

    def probe(self, use_cache: bool = True) -> Capabilities:
        return self.capabilities

    def describe(self) -> dict:
        return {"backend": self.name, "model_file": self.path, "model": self.model, "n_ctx": self.n_ctx}

    def stats(self) -> dict:
        return {}

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

    def tokenize(self, text: str) -> list[int]:
        with self._lock:
            return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _piece(self, tid: int) -> bytes:
        p = self._pieces.get(tid)
        if p is None:
            p = self._pieces[tid] = self._llm.detokenize([tid], special=True)
        return p

    def _rows(self, ids: list[int], split: int | None = None) -> np.ndarray:
        """Log-softmax (float64) of the logits after each of ``ids`` (row i predicts ids[i+1]).

        ``split``: evaluate ``ids[:split]`` as one batch (in ``n_batch`` chunks) and then each later
        token alone, the schedule of llama.cpp generating after that prompt. Not a detail: on the
        embedded Gemma-3 Q4_K_M, a row's logits differ by up to 3 between the schedules (P(" establish"
        | "...a more perfect Union,") 0.796 all batched, 0.660 as generated, 0.478 one token at a
        time throughout), so only this schedule gives the distribution the sampler drew from."""
        llm = self._llm
        llm.reset()
        if split is None or split >= len(ids):
            llm.eval(ids)
        else:
            llm.eval(ids[:split])
            for t in ids[split:]:
                llm.eval([t])
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        return logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))

    def score(self, texts: list[str], *, contexts: list[str] | None = None, top_k: int = 0,
              vocab_stats: bool = False, full: bool = False, timeout: float | None = None,
              as_generated: bool = False) -> list[TextScore]:
        """``as_generated`` (this scorer only, not the Backend protocol): evaluate BOS + context in one
        batch and then the text's tokens one at a time, as llama.cpp does when it generates the text
        after the context (see :meth:`_rows`); exact p_z needs it."""
        if contexts is not None and len(contexts) != len(texts):
            raise TrawlError("score: contexts must be as many as texts")
        out = []
        for i, text in enumerate(texts):
            ctx = contexts[i] if contexts is not None else ""
            with self._lock:
                out.append(self._score_one(i, ctx, text, int(top_k), vocab_stats, full, as_generated))
        return out

    def _score_one(self, i: int, ctx: str, text: str, top_k: int, vocab_stats: bool, full: bool,
                   as_generated: bool = False) -> TextScore:
        llm = self._llm
        prompt = ctx + text
        body = list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)) if prompt else []
        bos = llm.token_bos()
        ids = ([bos] if bos is not None and bos >= 0 else []) + body
        if len(ids) > self.n_ctx:
            raise TrawlError(f"text {i} has {len(ids)} tokens, more than the scorer's context window ({self.n_ctx})")
        pieces = [self._piece(t) for t in body]
        offsets = offsets_from_pieces(prompt, pieces)
        if offsets is None:
            try:
                offsets = align_tokens(prompt, [_decoded(p) for p in pieces])
            except AlignmentError as exc:
                raise TrawlError(f"text {i}: the model's tokens do not spell it ({exc})") from None
        ctx_b = len(ctx.encode("utf-8"))
        if ctx_b and ctx_b not in offsets:
            raise TrawlError(f"text {i}: the context and the text share a token (no token starts where the "
                             f"text does); split the text at a token boundary")
        first = offsets.index(ctx_b) if ctx_b else 0
        sel = list(range(first, len(body))) if text else []
        nb = len(ids) - len(body)          # 1 with BOS: body[j] is predicted by row j + nb - 1
        if sel and nb == 0 and sel[0] == 0:
            raise TrawlError("the model has no BOS token: its first token cannot be scored")
        split = nb + first if as_generated else None
        rows = self._rows(ids, split)[[j + nb - 1 for j in sel]] if sel else np.zeros((0, llm.n_vocab()))
        tok = [body[j] for j in sel]
        lps = [float(rows[r, t]) for r, t in enumerate(tok)]
        top = None
        if top_k:
            k = min(top_k, rows.shape[1])
            top = []
            for r in range(rows.shape[0]):
                best = np.argpartition(-rows[r], k - 1)[:k]
                best = best[np.argsort(-rows[r, best])]
                top.append({self._piece(int(t)).decode("utf-8", "replace"): float(rows[r, t]) for t in best})
        mean = var = None
        if vocab_stats:
            p = np.exp(rows)
            mu = (p * rows).sum(axis=1)
            mean = [float(x) for x in mu]
            var = [float(x) for x in (p * (rows - mu[:, None]) ** 2).sum(axis=1)]
        return TextScore(token_ids=tok, token_offsets=[offsets[j] - ctx_b for j in sel], logprobs=lps,
                         top_logprobs=top, vocab_mean=mean, vocab_var=var, exact_vocab_stats=True,
                         full_logprobs=rows.astype(np.float32) if full else None, prompt_tokens=len(ids))
