"""Near-duplicate clustering of memorized texts (datasketch MinHash LSH).

Several memorized spans are often pieces or variants of one training document
(a licence header with a different year, the same article from two mirrors).
To count *unique memorized documents*, every distinct memorized text is
shingled into word 5-grams (character 5-grams for texts of fewer than five
words), each shingle hashed with CRC-32, into a 128-permutation MinHash (seed 1), and inserted into a MinHash LSH
index with a Jaccard threshold (0.5 by default); texts whose signatures collide
in the LSH bands and whose estimated Jaccard similarity reaches the threshold
are joined (union-find). The number of resulting clusters is
``unique_memorized_documents``. Above ``max_texts`` distinct texts only the
first ``max_texts`` are clustered and the rest each count as their own
cluster (reported as ``capped``).
"""
from __future__ import annotations

import re
import zlib

import numpy as np

NUM_PERM = 128
CHUNK = 2000
SHINGLE = "word 5-grams (character 5-grams below 5 words), lower-cased"
_WORD = re.compile(r"\w+", re.UNICODE)


def _shingles(text: str) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) >= 5:
        return {" ".join(words[i:i + 5]).encode("utf-8") for i in range(len(words) - 4)}
    t = text.lower()
    if len(t) < 5:
        return {t.encode("utf-8", "replace")} if t else {b""}
    return {t[i:i + 5].encode("utf-8", "replace") for i in range(len(t) - 4)}


def cluster_texts(texts: list[str], threshold: float = 0.5, max_texts: int = 200_000) -> dict:
    """Cluster ``texts`` (distinct strings) into near-duplicate groups.

    Returns ``{"clusters": int, "labels": list[int], "num_perm", "shingle", "summary"}``;
    ``labels[i]`` is the cluster of ``texts[i]`` (the index of its representative)."""
    n = len(texts)
    parent = list(range(n))
    capped = n > max_texts
    m = min(n, max_texts)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if m > 1:
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        hv = np.zeros((m, NUM_PERM), dtype=np.uint64)   # signatures kept compactly, not as objects
        for lo in range(0, m, CHUNK):
            chunk = [_shingles(t) for t in texts[lo:lo + CHUNK]]
            for off, mh in enumerate(MinHash.bulk(chunk, num_perm=NUM_PERM, seed=1, hashfunc=zlib.crc32)):
                i = lo + off
                hv[i] = mh.hashvalues
                for j in lsh.query(mh):
                    if np.count_nonzero(hv[i] == hv[j]) >= threshold * NUM_PERM:
                        ri, rj = find(i), find(j)
                        if ri != rj:
                            parent[max(ri, rj)] = min(ri, rj)
                lsh.insert(i, mh, check_duplication=False)
            del chunk
    labels = [find(i) for i in range(n)]
    clusters = len(set(labels))
    sizes = np.bincount(np.array(labels, dtype=np.int64), minlength=max(n, 1)) if n else np.zeros(0)
    summary = {
        "distinct_texts": n,
        "clusters": clusters,
        "largest_cluster": int(sizes.max()) if n else 0,
        "clusters_with_several_texts": int((sizes > 1).sum()) if n else 0,
        "threshold": threshold,
        "num_perm": NUM_PERM,
        "shingle": SHINGLE,
        "capped": capped,
        "clustered_texts": m,
    }
    return {"clusters": clusters, "labels": labels, "num_perm": NUM_PERM, "shingle": SHINGLE, "summary": summary}
