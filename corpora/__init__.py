"""trawl's reference corpora: ingest text into Arrow shards (``docs/CONTRACTS.md`` §1).

Public API::

    from corpora import ingest, open_corpus, build_offline_corpus, CorpusError
    corpus = ingest(["data.jsonl.zst", "docs/"], "CORPUS", text_field="text")
    corpus.stats            # {"read", "skipped_empty", "repaired_utf8", "exact_duplicates"}
    for doc in corpus.iter_documents(): ...
"""
from corpora.builtin import build_offline_corpus, offline_sources
from corpora.errors import CorpusError
from corpora.ingest import IngestStats, ingest, ingest_records
from corpora.readers import Record, read_sources
from corpora.shards import (
    CORPUS_FORMAT,
    CORPUS_FORMAT_VERSION,
    DEFAULT_MAX_SHARD_BYTES,
    Corpus,
    Document,
    open_corpus,
)

__all__ = [
    "CORPUS_FORMAT",
    "CORPUS_FORMAT_VERSION",
    "DEFAULT_MAX_SHARD_BYTES",
    "Corpus",
    "CorpusError",
    "Document",
    "IngestStats",
    "Record",
    "build_offline_corpus",
    "ingest",
    "ingest_records",
    "offline_sources",
    "open_corpus",
    "read_sources",
]
