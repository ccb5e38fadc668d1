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
"""
from __future__ import annotations

import os

from reports import taxonomy
from reports.categories import CATEGORIES, find_all_many
from reports.errors import ReportError
from reports.taxonomy_figures import taxonomy_figures


def distinct_texts(records: list[dict]) -> dict[str, dict]:
    """Text -> its first span record, plus ``generations`` (how many generations emitted it) and
    ``request_ids`` (the first 5)."""
    uniq: dict[str, dict] = {}
    for r in records:
        u = uniq.get(r["text"])
        if u is None:
            u = uniq[r["text"]] = dict(r, generations=0, request_ids=[], last_rid=None)
        if u["last_rid"] != r["request_id"]:       # a generation's spans are contiguous in the records
            u["last_rid"] = r["request_id"]
            u["generations"] += 1
            if len(u["request_ids"]) < 5:
                u["request_ids"].append(r["request_id"])
    return uniq


def classify_spans(records: list[dict], uniq: dict, groups: list, totals: dict, per_attack: dict,
                   per_variant: dict, rmin: int, win_id, win_hash, win_order=None) -> tuple[dict, dict]:
    """Class of every memorized span (``reports.taxonomy``), set on each distinct text as ``taxonomy``;
    returns ``by_category`` (figures per class and non-trivial; ``nontrivial_*`` scalars added to the
    figure dicts in place) and the ``taxonomy`` section (thresholds, definitions, counts);
    ``win_id`` / ``win_hash`` / ``win_order``: the run's windows (:class:`reports.taxonomy_figures.SpanPool`)."""
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


def content_categories(uniq: dict, totals: dict) -> dict:
    """Runs the content detectors on each distinct text (its ``categories``), adds
    ``category_<name>`` to ``totals``; returns metrics.json's ``categories`` section."""
    cat_spans = {c: 0 for c in CATEGORIES}
    cat_unique: dict[str, set] = {c: set() for c in CATEGORIES}
    for (text, u), found in zip(uniq.items(), find_all_many(list(uniq))):
        u["categories"] = [c for c in CATEGORIES if found[c]]
        for c in CATEGORIES:
            if found[c]:
                cat_spans[c] += 1
                if len(cat_unique[c]) < 10_000:
                    cat_unique[c].update(found[c])
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
