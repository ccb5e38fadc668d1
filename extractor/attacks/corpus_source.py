"""Documents for the prompt-cutting attacks (prefix, discoverable).

A source is one of:

* a corpus folder (docs/CONTRACTS.md §1): ``shard-*.arrow`` Arrow IPC files with
  columns doc_id, source, ext_id, text, metadata. Read with pyarrow directly and
  memory-mapped (nothing is copied until a document is used);
* a ``.jsonl`` file: one JSON object per line, the text in ``text_field``
  (default ``text``); doc_id = the line's position among the non-empty documents;
* any other file: UTF-8 text, one document per paragraph (blocks separated by a
  blank line); a file without blank lines is one document.

A file that is not UTF-8 is refused with one clear error naming the byte offset.
"""
from __future__ import annotations

import bisect
import glob
import json
import os
from dataclasses import dataclass

from extractor.errors import TrawlError


@dataclass
class Doc:
    doc_id: int
    source: str
    text: str


class DocSource:
    def __init__(self, path: str, text_field: str = "text"):
        self.path = str(path)
        self.text_field = text_field
        if not os.path.exists(self.path):
            raise TrawlError(f"{self.path}: no such corpus folder or file")
        self._tables = None
        self._docs: list[Doc] | None = None
        if os.path.isdir(self.path):
            self._open_corpus()
        else:
            self._open_file()

    # corpus folder
    def _open_corpus(self):
        import pyarrow as pa
        import pyarrow.ipc as ipc

        shards = sorted(glob.glob(os.path.join(self.path, "shard-*.arrow")))
        if not shards:
            raise TrawlError(f"{self.path}: no shard-*.arrow files (expected a corpus folder, docs/CONTRACTS.md §1)")
        self._tables, self._starts = [], []
        total = 0
        for s in shards:
            try:
                reader = ipc.open_file(pa.memory_map(s, "r"))
                table = reader.read_all()
            except (pa.ArrowInvalid, OSError) as exc:
                raise TrawlError(f"{s}: not an Arrow IPC file ({exc})") from None
            missing = {"doc_id", "text"} - set(table.column_names)
            if missing:
                raise TrawlError(f"{s}: missing column(s) {', '.join(sorted(missing))}")
            self._tables.append(table)
            self._starts.append(total)
            total += table.num_rows
        self._n = total

    def _open_file(self):
        with open(self.path, "rb") as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrawlError(f"{self.path}: not UTF-8 (invalid byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
        docs: list[Doc] = []
        if self.path.endswith(".jsonl"):
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
                    docs.append(Doc(len(docs), f"{self.path}#{lineno}", value))
        else:
            paras = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
            for p in paras:
                if p.strip():
                    docs.append(Doc(len(docs), self.path, p))
        if not docs:
            raise TrawlError(f"{self.path}: no documents (the file is empty)")
        self._docs = docs
        self._n = len(docs)

    def __len__(self) -> int:
        return self._n

    def get(self, i: int) -> Doc:
        if self._docs is not None:
            return self._docs[i]
        k = bisect.bisect_right(self._starts, i) - 1
        t = self._tables[k]
        j = i - self._starts[k]
        doc_id = t.column("doc_id")[j].as_py()
        src = t.column("source")[j].as_py() if "source" in t.column_names else self.path
        return Doc(int(doc_id), src or "", t.column("text")[j].as_py() or "")

    def order(self, selection: str, seed: int, want: int | None = None):
        """Indices in the order documents are tried: ``first`` (corpus order) or ``random`` (seeded).

        ``random`` draws ``4 * want + 100`` distinct indices without building a permutation of
        the whole corpus (a corpus can hold millions of documents), then goes on with the
        remaining ones in corpus order if too many of those were too short.
        """
        if selection != "random":
            yield from range(self._n)
            return
        import random

        k = self._n if want is None else min(self._n, 4 * want + 100)
        drawn = random.Random(seed).sample(range(self._n), k)
        yield from drawn
        if k < self._n:
            used = set(drawn)
            yield from (i for i in range(self._n) if i not in used)


def describe_source(path: str) -> str:
    return os.path.abspath(path)
