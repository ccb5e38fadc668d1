"""The memorized-text passes of :func:`reports.metrics.compute_metrics`, over the memorized
span records of :class:`reports.passes.RunAccumulator`:

* :func:`distinct_texts`: each distinct memorized text once, with the generations emitting it;
* :func:`classify_spans`: the memorization class of every span (:mod:`reports.taxonomy`), the
  ``by_category`` figures and the ``taxonomy`` section;
* :func:`content_categories`: the content detectors (:mod:`reports.categories`) per text;
* :func:`text_records`: the distinct texts as metrics.json's ``top_spans`` records, longest first;
* :func:`lookup_documents`: the corpus documents holding each text (a suffix index, when given).

Guarantees: a text is classified and scanned once however many spans repeat it (the class
depends on the text and its corpus occurrences only; a span's corpus count is the same wherever
it occurs, so the first record's is used); the look-up never fails the report over the index
(a warning, then matches.parquet's canonical occurrence).

:class:`TextWork` does the per-text part of these passes (distinct texts, classes, content
detectors, MinHash signatures) a slice of records at a time, as the generations pass produces
them (``read_generations(..., after_batch=work)``: while the next batch decodes on the read-ahead
thread); the passes then only assemble from its caches. Every per-text result depends on the text
(and its corpus occurrences) alone, and the caches keep the records' order, so the output is the
same however the records were sliced.
"""
from __future__ import annotations

import os

from reports import taxonomy
from reports.categories import CATEGORIES, find_all_many
from reports.errors import ReportError
from reports.taxonomy_figures import taxonomy_figures

MIN_PENDING_TEXTS = 256     # TextWork works on at least this many new texts at once (until the last slice)
_NOTHING_FOUND = {c: [] for c in CATEGORIES}      # find_all's result for a text with nothing found (shared: read only)


def distinct_texts(records: list[dict]) -> dict[str, dict]:
    """Text -> its first span record, plus ``generations`` (how many generations emitted it) and
    ``request_ids`` (the first 5)."""
    seen: dict[str, list] = {}
    count_texts(seen, records, 0)
    return expand_texts(seen, records)


def count_texts(seen: dict[str, list], records, base: int, new: list | None = None) -> None:
    """:func:`distinct_texts` in short, continued over ``records`` (the records from number ``base``
    on; ``seen`` holds the texts of those before): text -> ``[number of its first record,
    generations, first 5 request ids, last request id]``. The texts seen for the first time are
    appended to ``new`` (when given), in order."""
    for i, r in enumerate(records, base):
        t = r["text"]
        u = seen.get(t)
        if u is None:
            u = seen[t] = [i, 0, [], None]
            if new is not None:
                new.append(t)
        rid = r["request_id"]
        if u[3] != rid:                 # a generation's spans are contiguous in the records
            u[3] = rid
            u[1] += 1
            if len(u[2]) < 5:
                u[2].append(rid)


def expand_texts(seen: dict[str, list], records: list[dict]) -> dict[str, dict]:
    """:func:`distinct_texts` from :func:`count_texts`' short form."""
    return {t: dict(records[i], generations=g, request_ids=ids, last_rid=last)
            for t, (i, g, ids, last) in seen.items()}


class TextWork:
    """The per-text results of the memorized texts, computed a slice of span records at a time:
    ``classes`` ((text, occurrences) -> :func:`taxonomy.classify_both` pair), ``found``
    (:func:`categories.find_all_many` of each distinct text, in the order of first appearance; the
    texts with nothing found share one read-only result) and the MinHash signatures of the first
    ``max_texts`` distinct texts (:func:`neardup.signatures`, same order: the texts
    :func:`neardup.cluster_texts` clusters); after :meth:`finish`, ``uniq`` (:func:`distinct_texts`).

    Called with a :class:`reports.passes.RunAccumulator` (the ``after_batch`` hook of
    ``read_generations``): takes the span records added since the last call; the detectors run once
    ``min_pending`` new texts are waiting. :meth:`finish` takes the last records and runs them on
    the rest. Memory while the generations stream: per-text results only, about 200 bytes a text
    plus its signature (``NUM_PERM`` x 4 = 512 bytes: 15 MB at 30,000 texts, 100 MB at the 200,000
    of ``max_texts``' default; the all-at-once path holds the same array, after the stream)."""

    def __init__(self, rmin: int, max_texts: int, min_pending: int | None = None):
        self.rmin = int(rmin)
        self.max_texts = int(max_texts)
        self.min_pending = MIN_PENDING_TEXTS if min_pending is None else int(min_pending)
        self.uniq: dict[str, dict] | None = None
        self.classes: dict[tuple, tuple | None] = {}
        self.found: list[dict] = []
        self.records_seen = 0
        self._seen: dict[str, list] = {}
        self._sig: list = []
        self._sig_rows = 0
        self._new_keys: list[tuple] = []
        self._new_texts: list[str] = []

    def __call__(self, acc) -> None:
        self.add(acc.span_records)

    def add(self, records: list[dict]) -> None:
        """Takes ``records[self.records_seen:]`` (``records`` only grows between calls)."""
        new = records[self.records_seen:]
        count_texts(self._seen, new, self.records_seen, self._new_texts)
        self.records_seen = len(records)
        classes, keys = self.classes, self._new_keys
        for r in new:
            k = (r["text"], r["occurrences"])
            if k not in classes:
                classes[k] = None
                keys.append(k)
        if len(self._new_texts) >= self.min_pending or len(keys) >= self.min_pending:
            self._run()

    def finish(self, records: list[dict]) -> TextWork:
        """Takes the records not taken yet and runs the detectors on every text still waiting;
        returns self."""
        self.add(records)
        self._run()
        self.uniq = expand_texts(self._seen, records)
        return self

    def signatures(self):
        """The signatures of the first ``min(len(uniq), max_texts)`` distinct texts, one array (the
        blocks copied in and let go one by one: at most one block more than the result)."""
        import numpy as np

        from reports.neardup import NUM_PERM
        out = np.empty((self._sig_rows, NUM_PERM), dtype=np.uint32)
        at = 0
        blocks, self._sig = self._sig, []
        while blocks:
            b = blocks.pop(0)
            out[at:at + len(b)] = b
            at += len(b)
        self._sig = [out]
        return out

    def _run(self) -> None:
        keys, self._new_keys = self._new_keys, []
        if keys:
            both = taxonomy.classify_many([k[0] for k in keys], [k[1] for k in keys], self.rmin)
            self.classes.update(zip(keys, both))
        texts, self._new_texts = self._new_texts, []
        if texts:
            nothing = _NOTHING_FOUND
            self.found += [nothing if f == nothing else f for f in find_all_many(texts)]
            room = self.max_texts - self._sig_rows
            if room > 0:
                from reports.neardup import signatures
                sig = signatures(texts[:room])
                self._sig.append(sig)
                self._sig_rows += len(sig)


def classify_spans(records: list[dict], uniq: dict, groups: list, totals: dict, per_attack: dict,
                   per_variant: dict, rmin: int, win_id, win_hash, win_order=None,
                   classes: dict | None = None) -> tuple[dict, dict]:
    """Class of every memorized span (``reports.taxonomy``), set on each distinct text as ``taxonomy``;
    returns ``by_category`` (figures per class and non-trivial; ``nontrivial_*`` scalars added to the
    figure dicts in place) and the ``taxonomy`` section (thresholds, definitions, counts);
    ``win_id`` / ``win_hash`` / ``win_order``: the run's windows (:class:`reports.taxonomy_figures.SpanPool`);
    ``classes``: the classes of every (text, occurrences) of the records, already computed
    (:attr:`TextWork.classes`), else computed here."""
    cache = classes
    if cache is None:
        keys = list(dict.fromkeys((r["text"], r["occurrences"]) for r in records))
        cache = dict(zip(keys, taxonomy.classify_many([k[0] for k in keys], [k[1] for k in keys], rmin)))
    both = [cache[(r["text"], r["occurrences"])] for r in records]
    for r, (ours, _) in zip(records, both):
        uniq[r["text"]].setdefault("taxonomy", ours)
    by_category = taxonomy_figures(records, [b[0] for b in both],
                                   [(groups[r["gid"]].attack, groups[r["gid"]].variant) for r in records],
                                   totals, per_attack, per_variant, win_id, win_hash, win_order)
    section = {
        "reference": "Prashanth et al. 2024, Recite, Reconstruct, Recollect (arXiv 2406.17746)",
        "recitation_min_occurrences": rmin,
        "low_information_max_alnum_share": taxonomy.LOW_INFORMATION_MAX_ALNUM,
        "reconstruction_min_coverage": taxonomy.RECONSTRUCTION_MIN_COVERAGE,
        "max_period_units": taxonomy.MAX_PERIOD,
        "order": list(taxonomy.CLASSES),
        "nontrivial": list(taxonomy.NONTRIVIAL),
        "definitions": taxonomy.definitions(rmin),
        "spans_in_paper_order": {c: sum(1 for b in both if b[1] == c)
                                 for c in ("recitation", "reconstruction", "recollection")},
    }
    return by_category, section


def content_categories(uniq: dict, totals: dict, found: list | None = None) -> dict:
    """Runs the content detectors on each distinct text (its ``categories``), adds
    ``category_<name>`` to ``totals``; returns metrics.json's ``categories`` section. ``found``:
    the detectors' findings of each text of ``uniq``, in its order (:attr:`TextWork.found`), else
    found here."""
    cat_spans = {c: 0 for c in CATEGORIES}
    cat_unique: dict[str, set] = {c: set() for c in CATEGORIES}
    if found is None:
        found = find_all_many(list(uniq))
    elif len(found) != len(uniq):
        raise ValueError(f"{len(found)} findings for {len(uniq)} texts")
    for u, f in zip(uniq.values(), found):
        u["categories"] = [c for c in CATEGORIES if f[c]]
        for c in CATEGORIES:
            if f[c]:
                cat_spans[c] += 1
                if len(cat_unique[c]) < 10_000:
                    cat_unique[c].update(f[c])
    for c in CATEGORIES:
        totals[f"category_{c}"] = cat_spans[c]
    return {c: {"spans": cat_spans[c], "unique_values": len(cat_unique[c]),
                "examples": sorted(cat_unique[c])[:20] if c not in ("code", "license_text")
                else sorted(cat_unique[c])[:5]} for c in CATEGORIES}


def text_records(uniq: dict, groups: list) -> tuple[list[dict], list[bytes]]:
    """The distinct texts as ``top_spans`` records (most tokens, then most generations, then by
    text) and their raw bytes, in the same order."""
    out, raws = [], []
    for u in sorted(uniq.values(), key=lambda u: (-u["tokens"], -u["generations"], u["text"])):
        g = groups[u["gid"]]
        raws.append(u["raw"])
        out.append({"tokens": u["tokens"], "bytes": u["bytes"], "generations": u["generations"],
                    "attack": g.attack, "variant": g.variant, "request_ids": u["request_ids"],
                    "occurrences": u["occurrences"], "shard": u["shard"], "doc_id": u["doc_id"],
                    "doc_offset": u["doc_offset"], "source": u["source"], "categories": u["categories"],
                    "taxonomy": u["taxonomy"], "text": u["text"]})
    return out, raws


def _open_index(index, meta: dict, warnings: list[str]):
    """``(index object or None, opened here, description)``: ``index`` (an object with ``find``,
    or a folder), else the one named in matches.parquet's metadata when it is still the same."""
    if index is not None and not isinstance(index, (str, os.PathLike)):
        return index, False, "index object"
    path, explicit = (os.fspath(index), True) if index is not None else (meta.get("index"), False)
    if path and "://" in str(path):   # an index on an object store: this node's checked copy
        try:
            from suffix_index.manifest import local_index
            path = str(local_index(path))
        except ImportError:
            path = None
        except Exception as exc:   # noqa: BLE001 - a store's failure: one line when asked for, else no index
            if explicit or not getattr(exc, "user_error", False):
                raise
            warnings.append(f"index {meta.get('index')}: {exc}; documents per span come from matches.parquet only")
            return None, False, None
    if not (path and os.path.isdir(path)):
        if explicit:
            raise ReportError(f"--index {path}: no such index folder")
        return None, False, None
    idx = where = None
    try:
        from suffix_index import SuffixIndex  # optional; reports works without it
        idx = SuffixIndex.open(path)
        where = f"index {path}"
        want = meta.get("index_manifest_sha256")
        have = getattr(idx, "manifest_sha256", None)
        if not explicit and want and isinstance(have, str) and have != want:
            warnings.append(f"index {path} is not the one matches.parquet was made with (manifest "
                            "sha256 differs); documents per span come from matches.parquet only")
            _close(idx)
            return None, False, None
        return idx, True, where
    except Exception as exc:  # the index is a nicety: never fail the report on it
        warnings.append(f"could not open index {path} for document look-ups ({type(exc).__name__}: {exc})")
        return None, False, where


def lookup_documents(texts: list[dict], raws: list[bytes], index, meta: dict, warnings: list[str],
                     limit: int = 20) -> str:
    """Fill ``documents`` (ids and sources of the corpus documents holding each memorized text,
    at most ``limit``) and ``documents_holding`` (their number, None when unknown).

    The index is ``index`` (an object with ``find(bytes, limit)``, or a folder), else the one named
    in matches.parquet's ``index`` metadata when that folder exists and its manifest hash is the
    one recorded; without an index only the canonical occurrence from matches.parquet is known.
    Returns a description of the source used."""
    idx, opened, where = _open_index(index, meta, warnings)
    try:
        for t, raw in zip(texts, raws):
            docs = None
            if idx is not None and raw:
                try:
                    docs = _documents_in_index(idx, t, raw, limit)
                except Exception as exc:
                    warnings.append(f"index look-up failed ({type(exc).__name__}: {exc}); documents per span "
                                    "come from matches.parquet only")
                    idx = None
            if docs is None:
                docs = [{"doc_id": t["doc_id"], "source": t["source"]}]
                t["documents_holding"] = 1 if t["occurrences"] == 1 else None
                t["documents_source"] = "matches.parquet (canonical occurrence only)"
            t["documents"] = docs
    finally:
        if opened:
            _close(idx)
    return where or "matches.parquet (canonical occurrence of each span)"


def _documents_in_index(idx, t: dict, raw: bytes, limit: int) -> list[dict]:
    """The documents holding ``raw`` per the index (``documents_holding``/``_source`` set on ``t``)."""
    occ = idx.find(raw, limit=limit * 5)
    seen: dict = {}
    for o in occ:
        if o.doc_id not in seen:
            seen[o.doc_id] = getattr(o, "source", "") or ""
    docs = [{"doc_id": int(d), "source": src} for d, src in list(seen.items())[:limit]]
    complete = len(occ) < limit * 5 or len(occ) >= t["occurrences"]
    t["documents_holding"] = len(seen) if complete else None
    t["documents_source"] = "index"
    return docs


def _close(idx) -> None:
    close = getattr(idx, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass
