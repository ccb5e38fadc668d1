"""The served model's own tokenizer, in trawl's process, from its GGUF file.

A llama.cpp server (llama-cpp-python) gives no cheap token information with its
completions: logprobs make generation ~20x slower on a large vocabulary, so the
``openai`` backend re-tokenizes each completion through the server's
``/extras/tokenize``. Those requests wait behind generations on the server's one
lock and take the server's CPU. When trawl knows the model file the server loaded
(it started the server: ``trawl demo``, an ``embedded = true`` campaign, the
benchmarks; or the user names it with ``--tokenizer-file``), it tokenizes in its
own process instead, with the same library (llama.cpp via llama-cpp-python) and
the same vocabulary, loaded alone (``vocab_only``: ~0.6 s, no weights):

* :meth:`GGUFTokenizer.tokenize` is what the server's ``/extras/tokenize`` computes
  (``special=True``), without the BOS token;
* :meth:`GGUFTokenizer.offsets` gives the byte offset where each token starts, from
  each token's exact bytes (``detokenize([id])``); where the pieces do not spell the
  text (a character split over tokens), :func:`extractor.backends.alignment.align_tokens`
  spreads them as for the endpoint.

:meth:`extractor.backends.boundaries.TokenBoundaries.use_tokenizer_file` checks the file against the server
at probe time (the same ids for a probe text that covers words, punctuation,
whitespace runs and multi-byte characters), so a wrong file is an error, not wrong
boundaries. Instances are shared per file within a process and are thread-safe.
"""
from __future__ import annotations

import atexit
import os
import threading

from corpora.quiet import quiet_stderr
from extractor.backends.alignment import align_tokens, offsets_from_pieces
from extractor.errors import TrawlError

_CACHE: dict[tuple, "GGUFTokenizer"] = {}
_CACHE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    """Free the vocabularies before interpreter teardown (llama-cpp-python's finalizer fails
    noisily when it runs after its module's globals are gone)."""
    with _CACHE_LOCK:
        for tok in _CACHE.values():
            tok.close()
        _CACHE.clear()


class GGUFTokenizer:
    """Tokenizer of one GGUF model file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        # vocab_only: llama.cpp's C code warns about the (unused) context on stderr, which open_gguf hides
        self._llama = open_gguf(self.path, "tokenizer file", vocab_only=True)
        self._lock = threading.Lock()
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        llama, self._llama = getattr(self, "_llama", None), None
        if llama is not None:
            llama.close()

    @classmethod
    def for_file(cls, path: str | os.PathLike) -> "GGUFTokenizer":
        """The shared instance for ``path`` (loaded once per process, and again when the file at
        that path is another one: its inode, size or modification time changed)."""
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
            key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = (path,)   # the constructor says what is wrong with it
        with _CACHE_LOCK:
            tok = _CACHE.get(key)
            if tok is None:
                tok = _CACHE[key] = cls(path)
            return tok

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def metadata(self) -> dict:
        """The file's GGUF metadata as llama.cpp reads it (strings; e.g. ``tokenizer.chat_template``)."""
        return dict(getattr(self._llama, "metadata", None) or {})

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens parsed, as the server does; no BOS)."""
        with self._lock:
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, ids: list[int]) -> str:
        """Text of ``ids`` as the server's ``/extras/detokenize`` gives it (special tokens dropped)."""
        with self._lock:
            return self._llama.detokenize(list(ids)).decode("utf-8", errors="ignore")

    def pieces(self, ids: list[int]) -> list[bytes]:
        """Exact bytes of each token (cached)."""
        cache = self._pieces
        missing = [i for i in dict.fromkeys(ids) if i not in cache]
        if missing:
            with self._lock:
                for i in missing:
                    cache[i] = self._llama.detokenize([i], special=True)
        return [cache[i] for i in ids]

    def offsets(self, text: str) -> list[int]:
        """Byte offset (in ``text``'s UTF-8) where each of its tokens starts."""
        ids = self.tokenize(text)
        pieces = self.pieces(ids)
        exact = offsets_from_pieces(text, pieces)
        if exact is not None:
            return exact
        # pieces that are parts of one character do not decode alone: align what is known
        return align_tokens(text, [_decoded(p) for p in pieces])  # AlignmentError when they do not fit


def open_gguf(path: str, what: str, **llama_kwargs):
    """``llama_cpp.Llama(path, **llama_kwargs)`` with every failure one TrawlError naming *path*: the file
    missing ("<path>: <what> not found"), llama-cpp-python missing, or a file llama.cpp cannot load. The
    C library's load-time chatter on stderr is suppressed. The one opener of a GGUF file in trawl (the
    tokenizer and the in-process scorer)."""
    if not os.path.isfile(path):
        raise TrawlError(f"{path}: {what} not found")
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - a dependency of trawl
        raise TrawlError("llama-cpp-python is not installed; install trawl as the README says") from None
    try:
        with quiet_stderr():
            return llama_cpp.Llama(path, verbose=False, **llama_kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise TrawlError(f"{path}: not a GGUF model file llama.cpp can load ({exc})") from None


def _decoded(piece: bytes) -> str:
    """A piece's text, or "" (unknown bytes) when it is part of a multi-byte character."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return ""
