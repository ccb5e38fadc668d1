"""trawl's byte-level suffix-array index (``docs/CONTRACTS.md`` §2 and §4).

Public API::

    from suffix_index import build_index, SuffixIndex, verify_index, IndexFormatError
    build_index("CORPUS", "INDEX", jobs=2)
    with SuffixIndex.open("INDEX") as idx:
        idx.count("text"); idx.find("text"); idx.document(0)
        idx.match([(key, completion_bytes, token_offsets)], min_tokens=50)
"""
from corpora.lazy import install as _install

_EXPORTS = {
    "build_index": "suffix_index.build", "Occurrence": "suffix_index.engine", "SuffixIndex": "suffix_index.engine",
    "IndexFormatError": "suffix_index.errors", "MatchInputError": "suffix_index.errors",
    "ParameterError": "suffix_index.errors", "INDEX_FORMAT": "suffix_index.manifest",
    "INDEX_FORMAT_VERSION": "suffix_index.manifest", "Span": "suffix_index.match",
    "match_to_parquet": "suffix_index.matchfile", "read_generations": "suffix_index.matchfile",
    "verify_index": "suffix_index.verify",
}
_install(__name__, _EXPORTS)   # imported on first use (trawl --help needs none of them)

__all__ = [
    "ParameterError",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "IndexFormatError",
    "MatchInputError",
    "Occurrence",
    "Span",
    "SuffixIndex",
    "build_index",
    "match_to_parquet",
    "read_generations",
    "verify_index",
]
