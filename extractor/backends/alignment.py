"""Aligning token strings with a completion's text: where each token starts in its UTF-8 bytes.

Pure functions (no I/O, no other trawl module), shared by the server path
(:mod:`extractor.backends.boundaries`: token strings from logprobs, or decoded pieces) and the
local tokenizer file (:mod:`extractor.backends.gguf_tokenizer`). Guarantees: the tokens' known
bytes must spell the text from its first byte to its last, or :func:`align_tokens` raises
:class:`AlignmentError` and :func:`offsets_from_pieces` returns None — never a guess; tokens of
unknown bytes (an empty string or U+FFFD: part of a split character) get offsets inside the gap
their known neighbours leave (see docs/CONTRACTS.md §3).
"""
from __future__ import annotations

import re
from itertools import accumulate

_BYTES_PREFIX = "bytes:"
_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


class AlignmentError(ValueError):
    """The token strings do not spell the completion text."""


def _token_bytes(tok: str) -> bytes | None:
    """Exact bytes of a token when its string names them, else None (unknown)."""
    if tok.startswith(_BYTES_PREFIX):
        body = tok[len(_BYTES_PREFIX):]
        try:
            return bytes(int(h, 16) for h in _HEX_ESCAPE.findall(body)) if "\\x" in body else body.encode("utf-8")
        except ValueError:
            return None
    if tok == "" or "\ufffd" in tok:
        return None
    return tok.encode("utf-8")


def exact_offsets(text: str, tokens: list) -> list[int] | None:
    """The fast path of :func:`align_tokens`: when the tokens are non-empty strings that spell
    ``text`` exactly (none a ``bytes:`` name, no U+FFFD), each starts where the UTF-8 lengths of
    those before it sum to (the very offsets the token-by-token walk finds); else None."""
    try:
        if "".join(tokens) != text:
            return None
    except TypeError:        # a token that is not a string
        return None
    if not all(tokens) or _BYTES_PREFIX in text or "\ufffd" in text:
        return None           # empty or unknown-byte tokens: the walk spreads them over their gap
    lengths = map(len, tokens) if text.isascii() else map(len, map(str.encode, tokens))
    offsets = list(accumulate(lengths, initial=0))
    offsets.pop()
    return offsets


def align_tokens(text: str, tokens: list[str]) -> list[int]:
    """Byte offsets (into ``text.encode()``) where each token starts. A token that is not a
    string counts as one of unknown bytes (as an empty one).

    Raises :class:`AlignmentError` when the tokens cannot be matched to the text.
    """
    fast = exact_offsets(text, tokens)
    if fast is not None:
        return fast
    return _walk(text, [t if isinstance(t, str) else "" for t in tokens])


def _walk(text: str, tokens: list[str]) -> list[int]:
    """:func:`align_tokens` token by token (any tokens, known or unknown bytes)."""
    data = text.encode("utf-8")
    n = len(data)
    offsets: list[int] = []
    pos = 0
    pending = 0  # tokens of unknown bytes waiting for the next known token
    for tok in tokens:
        b = _token_bytes(tok)
        if b is None:
            pending += 1
            continue
        if not b:
            continue
        # Find where this token's bytes occur at or just after pos (pending tokens cover the gap).
        if data.startswith(b, pos):
            start = pos
        elif pending:
            start = data.find(b, pos)
            # the unknown tokens cover at most a few characters (4 bytes each)
            if start < 0 or start - pos > 4 * pending:
                # a token string may itself start with a replacement char's neighbour; accept a
                # partial overlap: the token's tail is known text
                raise AlignmentError(f"token {tok!r} not found near byte {pos}")
        else:
            raise AlignmentError(f"token {tok!r} does not continue the text at byte {pos}")
        if pending:
            _spread(offsets, pos, start, pending)
            pending = 0
        offsets.append(start)
        pos = start + len(b)
    if pending:
        _spread(offsets, pos, n, pending)
        pos = n
    if pos != n:
        raise AlignmentError(f"tokens cover {pos} of {n} bytes")
    return offsets


def _spread(offsets: list[int], start: int, end: int, count: int) -> None:
    """Give ``count`` unknown tokens offsets inside [start, end)."""
    width = max(end - start, 0)
    for i in range(count):
        offsets.append(start + (min(i, width - 1) if width else 0))


def offsets_from_pieces(text: str, pieces: list[bytes]) -> list[int] | None:
    """Offsets from exact per-token byte pieces, when they concatenate to ``text``."""
    data = text.encode("utf-8")
    out, pos = [], 0
    for p in pieces:
        out.append(pos)
        pos += len(p)
    if b"".join(pieces) != data:
        return None
    return out
