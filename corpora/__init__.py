"""trawl's reference corpora: ingest text into Arrow shards (``docs/CONTRACTS.md`` §1).

Public API::

    from corpora import ingest, open_corpus, build_offline_corpus, CorpusError
    corpus = ingest(["data.jsonl.zst", "docs/"], "CORPUS", text_field="text")
    corpus.stats            # {"read", "skipped_empty", "repaired_utf8", "exact_duplicates"}
    for doc in corpus.iter_documents(): ...
"""
from corpora.lazy import install as _install

_EXPORTS = {
    "build_offline_corpus": "corpora.builtin", "offline_sources": "corpora.builtin",
    "CorpusError": "corpora.errors", "StoreError": "corpora.errors",
    "IngestStats": "corpora.shards", "ingest": "corpora.ingest", "ingest_records": "corpora.ingest",
    "Record": "corpora.readers", "read_sources": "corpora.readers",
    "CORPUS_FORMAT": "corpora.shards", "CORPUS_FORMAT_VERSION": "corpora.shards",
    "DEFAULT_MAX_SHARD_BYTES": "corpora.shards", "Corpus": "corpora.shards", "Document": "corpora.shards",
    "open_corpus": "corpora.shards",
}
_install(__name__, _EXPORTS)   # imported on first use (trawl --help needs none of them)

__all__ = [
    "CORPUS_FORMAT",
    "CORPUS_FORMAT_VERSION",
    "DEFAULT_MAX_SHARD_BYTES",
    "Corpus",
    "CorpusError",
    "Document",
    "IngestStats",
    "Record",
    "StoreError",
    "build_offline_corpus",
    "ingest",
    "ingest_records",
    "offline_sources",
    "open_corpus",
    "read_sources",
]
