"""Token boundaries: the byte offset in a completion where each of its tokens starts.

The generations contract (docs/CONTRACTS.md §3) stores, for each completion,
``token_offsets``: the byte offset in the completion's UTF-8 where each
generated token starts. Servers describe tokens in several ways:

* OpenAI-style ``logprobs.tokens`` (vLLM, llama.cpp, OpenAI): the decoded text of
  each token. A token that holds only part of a multi-byte character decodes to
  ``""`` (llama.cpp, ``errors="ignore"``), to ``"\\ufffd"`` (vLLM's incremental
  detokenizer) or to ``"bytes:\\xe2\\x80"`` (OpenAI). :func:`align_tokens` aligns
  such a list with the completion text and returns exact offsets wherever the
  token text is known, and spreads the tokens of a split character over that
  character's bytes otherwise (offsets stay strictly increasing while there are
  no more tokens than bytes).
* a tokenize endpoint (vLLM ``/tokenize`` + ``/detokenize``, llama-cpp-python
  ``/extras/tokenize`` + ``/extras/detokenize``): :class:`TokenBoundaries`
  re-tokenizes the text, decodes each id once (pieces are cached per server and
  model: a vocabulary does not change) and aligns the pieces as above; or, when a
  GGUF tokenizer file was checked against the server
  (:meth:`TokenBoundaries.use_tokenizer_file`), the same in trawl's process
  (:mod:`extractor.backends.gguf_tokenizer`) without a request.

Guarantees: offsets are exact or raise :class:`AlignmentError` (never silently
wrong); :meth:`TokenBoundaries.fill` and :meth:`TokenBoundaries.fill_many` keep a
generation whose boundaries cannot be had (``token_offsets=None``,
``token_source="none"``, the reason in ``token_error``), since it was paid for.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from extractor.backends.alignment import AlignmentError, align_tokens
from extractor.backends.base import BackendError, Capabilities, Choice
from extractor.backends.http import MalformedResponse, error_text
from extractor.errors import TrawlError

if TYPE_CHECKING:
    from extractor.backends.http import HTTPClient

SEP = "\x00\x01"  # joins texts (and ids) in batched tokenize/detokenize requests
# a tokenizer file must give the server's ids for this text: words, case, digits, punctuation,
# code, whitespace runs, newlines and multi-byte characters (2, 3 and 4 bytes)
_TOKENIZER_CHECK = ("The quick brown fox, 1234567 jumps!  Über naïve façade: 中文 日本語 🙂🚀\n\n"
                    "def f(x):\n\treturn {'a': x ** 2}  # --- <tag> &amp; http://example.org/?q=1")
_PIECE_CACHES: dict = {}


def _split_ids(ids: list[int], sep: list[int]) -> list[list[int]]:
    """``ids`` cut at each occurrence of the id sequence ``sep`` (which is dropped)."""
    parts, cur, i, k = [], [], 0, len(sep)
    while i < len(ids):
        if ids[i:i + k] == sep:
            parts.append(cur)
            cur = []
            i += k
        else:
            cur.append(ids[i])
            i += 1
    parts.append(cur)
    return parts


def is_token_id(i) -> bool:
    """A token id as a server may give it: an integer >= 0 (not a boolean, not a float)."""
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 63


def _check_ids(data) -> None:
    """A tokenize answer: an object whose ``tokens`` is a list of token ids (else MalformedResponse, retried)."""
    ids = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(is_token_id(i) for i in ids):
        raise MalformedResponse("malformed tokenize JSON: expected an object whose tokens is a list of token ids")


def _check_text(field: str):
    def check(data) -> None:
        if not (isinstance(data, dict) and isinstance(data.get(field), str)):
            raise MalformedResponse(f"malformed detokenize JSON: expected an object whose {field} is a string")
    return check


def clean_text(text: str) -> str:
    """Replace lone surrogates (invalid UTF-8 from the server, JSON-escaped) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _transport_failure(exc: BackendError) -> bool:
    """A request that never got an answer (the server may be gone), as opposed to one it refused."""
    return exc.retryable and exc.status is None


class TokenBoundaries:
    """Token ids, pieces and boundaries of text as one served model tokenizes it.

    ``capabilities()`` gives the backend's current :class:`Capabilities`: ``tokenize`` names the
    endpoint (``"vllm"``, ``"llama_cpp"`` or None: then only :attr:`gguf` can tokenize) and
    ``tokenize_adds_bos`` says the endpoint prepends a BOS id, which is dropped. :attr:`sep_ids`
    (the ids of :data:`SEP`, when they decode back to it; see :meth:`find_separator`) let many
    ids or texts share one request; :attr:`gguf` (set by :meth:`use_tokenizer_file` once checked
    against the server) replaces the endpoint. Shared by all worker threads.
    """

    def __init__(self, http: "HTTPClient", model: str, capabilities: Callable[[], Capabilities]) -> None:
        self.http = http
        self.model = model
        self._caps = capabilities
        self.sep_ids: list[int] | None = None
        self.gguf = None  # the model file's tokenizer, once checked against the server (probe)
        self._piece_cache: dict[int, str] = {}   # shared per server once the probe knows which (use_pieces_of)

    def use_pieces_of(self, identity: str | None) -> None:
        """Share decoded pieces with every backend of the same server: the probe gives its identity
        (:func:`extractor.backends.probe.server_identity`), so a different server that took over the
        endpoint (another tokenizer) never reads the pieces of the one before; no identity: this
        backend's own pieces."""
        self._piece_cache = (_PIECE_CACHES.setdefault((self.http.endpoint, self.model, identity), {})
                             if identity is not None else {})

    @property
    def endpoint(self) -> str:
        return self.http.endpoint

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the server's tokenizer sees it (no BOS): from the model
        file's tokenizer when one was checked against the server, else the tokenize endpoint."""
        if self.gguf is not None:
            return self.gguf.tokenize(text)
        caps = self._caps()
        kind = caps.tokenize
        cap = (1 << 20) + 32 * len(text.encode("utf-8", "replace"))   # a token id per byte at most
        if kind == "vllm":
            data, _ = self.http.request("POST", "/tokenize", {"model": self.model, "prompt": text,
                                                             "add_special_tokens": False},
                                        check=_check_ids, max_bytes=cap)
        elif kind == "llama_cpp":
            data, _ = self.http.request("POST", "/extras/tokenize", {"model": self.model, "input": text},
                                        check=_check_ids, max_bytes=cap)
        else:
            raise TrawlError(f"the server at {self.endpoint} offers no tokenize endpoint")
        ids = list(data["tokens"])
        if caps.tokenize_adds_bos and ids:
            ids = ids[1:]
        return ids

    def detokenize(self, ids: list[int]) -> str:
        """Text of ``ids`` (the model file's tokenizer, else the detokenize endpoint; HTTP 500 is
        an answer here, not retried: servers fail so on ids that end inside a character)."""
        if self.gguf is not None:
            return self.gguf.detokenize(ids)
        kind = self._caps().tokenize
        cap = (1 << 20) + 2048 * len(ids)   # as a completion's tokens (extractor/backends/openai.py)
        if kind == "vllm":
            data, _ = self.http.request("POST", "/detokenize", {"model": self.model, "tokens": list(ids)},
                                        retry_500=False, check=_check_text("prompt"), max_bytes=cap)
            text = data["prompt"]
        elif kind == "llama_cpp":
            data, _ = self.http.request("POST", "/extras/detokenize", {"model": self.model, "tokens": list(ids)},
                                        retry_500=False, check=_check_text("text"), max_bytes=cap)
            text = data["text"]
        else:
            raise TrawlError(f"the server at {self.endpoint} offers no detokenize endpoint")
        return clean_text(text)

    def pieces(self, ids: list[int]) -> list[str]:
        """Decoded text of each token (cached per server: the vocabulary does not change).

        Unknown ids are decoded in one ``detokenize`` call with a separator (the tokens of
        ``"\\x00\\x01"``) between them; when that does not split cleanly (a token that is part
        of a multi-byte character), each is decoded alone, and one that cannot be decoded
        alone gets ``""`` (its offset is then spread over its character's bytes).
        """
        cache = self._piece_cache
        unknown = list(dict.fromkeys(i for i in ids if i not in cache))
        if unknown and not (self.sep_ids and len(unknown) > 1 and self._decode_batch(unknown)):
            for i in unknown:
                try:
                    cache[i] = self.detokenize([i])
                except BackendError as exc:
                    if _transport_failure(exc):
                        raise
                    cache[i] = ""  # a partial UTF-8 byte the server cannot decode alone
        return [cache[i] for i in ids]

    def _decode_batch(self, unknown: list[int]) -> bool:
        """Decode ``unknown`` in one request, joined by :attr:`sep_ids`; False when it does not split."""
        batch: list[int] = []
        for k, i in enumerate(unknown):
            if k:
                batch.extend(self.sep_ids)
            batch.append(i)
        try:
            parts = self.detokenize(batch).split(SEP)
        except BackendError as exc:
            if _transport_failure(exc):
                raise
            return False
        if len(parts) != len(unknown) or not all(parts):
            return False
        for i, part in zip(unknown, parts):
            self._piece_cache[i] = part
        return True

    def piece(self, token_id: int) -> str:
        return self.pieces([token_id])[0]

    def offsets(self, text: str) -> list[int]:
        """Byte offsets of the tokens of ``text`` (re-tokenization: the model file's tokenizer when
        one was checked against the server, else the tokenize endpoint)."""
        if self.gguf is not None:
            return self.gguf.offsets(text)
        ids = self.tokenize(text)
        return align_tokens(text, self.pieces(ids))

    def fill(self, choice: Choice) -> Choice:
        """Complete a choice left ``pending`` by ``complete(defer_tokens=True)``.

        When the tokenize endpoint fails for good the generation is kept (it was paid for)
        with ``token_offsets=None`` and ``token_source="none"``.
        """
        if choice.token_source != "pending":
            return choice
        try:
            choice.token_offsets = self.offsets(choice.text)
            choice.token_source = "tokenize"
            choice.completion_tokens = len(choice.token_offsets)
        except (BackendError, AlignmentError) as exc:
            choice.token_offsets = None
            choice.token_source = "none"
            choice.token_error = error_text(exc)
        return choice

    def fill_many(self, choices: list[Choice]) -> None:
        """:meth:`fill` for many choices with (usually) one tokenize and one detokenize request.

        On llama-cpp-python every tokenize request waits for the generation in progress (one
        lock guards the model), so one request per completion would make token boundaries the
        bottleneck under load. The texts are joined with a separator (``"\\x00\\x01"``) whose
        tokens are known, tokenized at once and split again; each part must spell its text
        exactly, otherwise that text is tokenized alone.
        """
        todo = [c for c in choices if c.token_source == "pending"]
        if not todo:
            return
        if len(todo) == 1 or not self.sep_ids or any(SEP in c.text for c in todo):
            for c in todo:
                self.fill(c)
            return
        try:
            ids = self.tokenize(SEP.join(c.text for c in todo))
        except BackendError:
            ids = None
        parts = _split_ids(ids, self.sep_ids) if ids is not None else None
        if parts is None or len(parts) != len(todo):
            for c in todo:
                self.fill(c)
            return
        try:
            self.pieces([i for p in parts for i in p])  # one detokenize call for every unseen id
        except BackendError:
            pass
        for c, part in zip(todo, parts):
            try:
                c.token_offsets = align_tokens(c.text, self.pieces(part))
                c.token_source = "tokenize"
                c.completion_tokens = len(c.token_offsets)
            except (AlignmentError, BackendError):
                self.fill(c)

    def find_separator(self) -> None:
        """Set :attr:`sep_ids` to the ids of :data:`SEP` when they decode back to it, else None."""
        sep = self.tokenize(SEP)
        self.sep_ids = sep if sep and self.detokenize(sep) == SEP else None

    def use_tokenizer_file(self, path: str, caps: Capabilities) -> None:
        """Take token boundaries from the model file's tokenizer in this process (see
        extractor/backends/gguf_tokenizer.py), after checking it against the server's; raises
        TrawlError when it gives other ids. Recorded in ``caps`` (token_info, tokenizer_file, notes)."""
        from extractor.backends.gguf_tokenizer import GGUFTokenizer

        if caps.token_info not in ("tokenize", None) or not caps.tokenize:
            caps.notes.append(f"tokenizer file not used: token boundaries come from {caps.token_info}")
            return
        tok = GGUFTokenizer.for_file(path)
        try:
            remote = self.tokenize(_TOKENIZER_CHECK)
        except BackendError as exc:
            raise TrawlError(f"cannot check the tokenizer file against the server at {self.endpoint}: {exc}") from None
        if tok.tokenize(_TOKENIZER_CHECK) != remote:
            raise TrawlError(f"{path}: its tokenizer does not match the model served at "
                             f"{self.endpoint} (different token ids for the same text); give the GGUF file the "
                             f"server loaded")
        self.gguf = tok
        caps.token_info = "local_tokenize"
        caps.tokenizer_file = tok.name
        caps.notes.append(f"token boundaries from {tok.name}'s tokenizer in trawl's process (checked against "
                          f"the server's tokenize endpoint)")
