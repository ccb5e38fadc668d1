"""trawl's byte-level suffix-array index (``docs/CONTRACTS.md`` §2 and §4).

Public API::

    from suffix_index import build_index, SuffixIndex, verify_index, IndexFormatError
    build_index("CORPUS", "INDEX", jobs=2)
    with SuffixIndex.open("INDEX") as idx:
        idx.count("text"); idx.find("text"); idx.document(0)
        idx.match([(key, completion_bytes, token_offsets)], min_tokens=50)
"""
from suffix_index.build import build_index
from suffix_index.engine import Occurrence, SuffixIndex
from suffix_index.errors import IndexFormatError, MatchInputError, ParameterError
from suffix_index.manifest import INDEX_FORMAT, INDEX_FORMAT_VERSION
from suffix_index.match import Span
from suffix_index.matchfile import match_to_parquet, read_generations
from suffix_index.verify import verify_index

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
