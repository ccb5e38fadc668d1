"""Documents for the prompt-cutting attacks (prefix, discoverable).

A source is one of:

* a corpus folder (docs/CONTRACTS.md §1), opened with :func:`corpora.open_corpus`
  (its manifest checks apply; a damaged folder is a :class:`TrawlError` with the
  corpus package's message). Shards are memory-mapped: nothing is copied until a
  document is used;
* a ``.jsonl`` file: one JSON object per line, the text in ``text_field``
  (default ``text``); doc_id = the line's position among the non-empty documents;
* any other file: UTF-8 text, one document per paragraph (blocks separated by a
  blank line); a file without blank lines is one document.

Documents are :class:`corpora.Document`. A file that is not UTF-8 is refused with
one clear error naming the byte offset.
"""
from __future__ import annotations

import bisect
import json
import os
import random

from corpora import CorpusError, Document, open_corpus
from extractor.errors import TrawlError


class DocSource:
    """Random access to the documents of a corpus folder or a text/JSONL file.

    Guarantees: ``len(src)`` documents, ``src.get(i)`` for ``0 <= i < len(src)`` in corpus
    (or file) order; :meth:`order` is a function of its arguments alone (a plan made from
    it is the same on every resume).
    """

    def __init__(self, path: str, text_field: str = "text"):
        self.path = str(path)
        self.text_field = text_field
        if not os.path.exists(self.path):
            raise TrawlError(f"{self.path}: no such corpus folder or file")
        self._tables = None
        self._docs: list[Document] | None = None
        if os.path.isdir(self.path):
            self._open_corpus()
        else:
            self._open_file()

    def _open_corpus(self) -> None:
        try:
            corpus = open_corpus(self.path)
            for i in range(len(corpus.shards)):   # prompts and targets come from these bytes: checked first
                corpus.check_shard(i)
            self._tables = [corpus.table(i) for i in range(len(corpus.shards))]
        except CorpusError as exc:
            raise TrawlError(str(exc)) from None
        self._starts = []
        total = 0
        for path, table in zip(corpus.shards, self._tables):
            missing = {"doc_id", "text"} - set(table.column_names)
            if missing:
                raise TrawlError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            self._starts.append(total)
            total += table.num_rows
        self._n = total

    def _open_file(self) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrawlError(f"{self.path}: not UTF-8 (invalid byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
        docs = self._jsonl_docs(text) if self.path.endswith(".jsonl") else self._paragraph_docs(text)
        if not docs:
            raise TrawlError(f"{self.path}: no documents (the file is empty)")
        self._docs = docs
        self._n = len(docs)

    def _jsonl_docs(self, text: str) -> list[Document]:
        docs: list[Document] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise TrawlError(f"{self.path}:{lineno}: not a JSON object") from None
            value = obj.get(self.text_field) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                raise TrawlError(f"{self.path}:{lineno}: no string field {self.text_field!r}")
            if value:
                docs.append(Document(len(docs), f"{self.path}#{lineno}", None, value))
        return docs

    def _paragraph_docs(self, text: str) -> list[Document]:
        paras = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
        return [Document(i, self.path, None, p) for i, p in enumerate(p for p in paras if p.strip())]

    def __len__(self) -> int:
        return self._n

    def get(self, i: int) -> Document:
        if self._docs is not None:
            return self._docs[i]
        k = bisect.bisect_right(self._starts, i) - 1
        t = self._tables[k]
        j = i - self._starts[k]
        row = {c: t.column(c)[j].as_py() if c in t.column_names else None
               for c in ("doc_id", "source", "ext_id", "text", "metadata")}
        try:
            meta = json.loads(row["metadata"] or "{}")
        except (ValueError, RecursionError):
            raise TrawlError(f"{self.path}: document {row['doc_id']}: its metadata is not JSON; the corpus is "
                             f"damaged, re-ingest it") from None
        return Document(int(row["doc_id"]), row["source"] or "", row["ext_id"], row["text"] or "", meta)

    def order(self, selection: str, seed: int, want: int | None = None):
        """Indices in the order documents are tried: ``first`` (corpus order) or ``random`` (seeded).

        ``random`` draws ``4 * want + 100`` distinct indices without building a permutation of
        the whole corpus (a corpus can hold millions of documents), then goes on with the
        remaining ones in corpus order if too many of those were too short.
        """
        if selection != "random":
            yield from range(self._n)
            return
        k = self._n if want is None else min(self._n, 4 * want + 100)
        drawn = random.Random(seed).sample(range(self._n), k)
        yield from drawn
        if k < self._n:
            used = set(drawn)
            yield from (i for i in range(self._n) if i not in used)
