"""Matching on a cluster: actors each owning a subset of the index's shards.

:class:`DistributedIndex` has what :func:`suffix_index.matchfile.match_to_parquet` asks of an index
(``path``, ``manifest_sha256``, ``iter_match``, ``match_batches``). It starts, through an executor
(:mod:`corpora.executor`), ``groups x replicas`` :class:`ShardGroup` actors: the shards are split
into ``groups`` of about equal bytes, and each group is held by ``replicas`` actors that map its
files once and keep them for every batch. A batch of generations goes to one replica of every
group (batches take turns over the replicas; several are in flight at once) and the groups'
answers are merged by :func:`merge_group_spans` into exactly what the one-process matcher reports.

Why the merge is exact (``suffix_index/match.py`` defines a span over the whole corpus). Run the
same matcher over each group ``k`` alone, giving the maximal spans ``M_k`` of the group's shards:

* a span ``m`` maximal over the whole corpus occurs in some group, and is maximal there too (its
  one-byte extensions occur nowhere, so not in that group): ``m`` is in every ``M_k`` whose group
  holds it, with that group's occurrence count and first ``(shard, position)``;
* a span of ``M_k`` that is not maximal over the corpus has a one-byte extension occurring in some
  group ``j``, so it lies strictly inside a span of ``M_j``, which is longer and so meets the
  length threshold too (whole tokens only grow with the span).

So the corpus's maximal spans are the spans of the union not strictly inside another one of the
same generation; a span reported by several groups gets the sum of their counts (each shard
belongs to one group) and the lowest ``(shard, position)`` of theirs (the local matcher's
canonical occurrence). The tests compare ``matches.parquet`` from both, byte for byte.
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from suffix_index.match import Span


class ShardGroup:
    """A match actor: shards of one index mapped once, matched against batch after batch.

    An error opening them is kept and raised by the first call (so it reaches the driver as the
    one-line error it is, not as a dead actor)."""

    def __init__(self, index_path: str, shards: Sequence[int], manifest_sha256: str):
        from suffix_index.engine import SuffixIndex
        from suffix_index.errors import IndexFormatError

        self.error: BaseException | None = None
        self.idx = None
        try:
            self.idx = SuffixIndex.open(index_path, shards)
            if self.idx.manifest_sha256 != manifest_sha256:
                raise IndexFormatError(f"{Path(index_path) / 'manifest.json'}: differs on this node from the "
                                       f"driver's copy; every node must see the same index")
            self.idx.prefetch()
        except Exception as exc:   # noqa: BLE001 - raised again, as itself, by match()
            self.error = exc

    def pid(self) -> int:
        return os.getpid()

    def match(self, batch: list, min_tokens: int, min_bytes: int | None) -> list[tuple]:
        """This group's maximal spans of ``batch``: ``(generation, start, end, tokens, shard, position,
        count, doc_id, doc_offset, source)``, shard numbers the index's."""
        from corpora.executor import crash_once_hook

        if self.error is not None:
            raise self.error
        crash_once_hook()   # the fault tests' worker death, mid-match
        idx = self.idx
        idx.check_blocks()
        out = []
        for gi, a, b, tok, local, pos, cnt in idx._matcher.spans(batch, min_tokens=min_tokens, min_bytes=min_bytes):
            doc_id, doc_off, src = idx.source(local, pos)
            out.append((gi, a, b, tok, idx.shard_number(local), pos, cnt, doc_id, doc_off, src))
        return out


def merge_group_spans(parts: Iterable[list[tuple]]) -> list[tuple]:
    """The groups' spans of one batch merged (see the module docstring), ordered as the local matcher
    orders them: by generation, then start."""
    best: dict[tuple[int, int, int], list] = {}
    for part in parts:
        for gi, a, b, tok, shard, pos, cnt, doc_id, doc_off, src in part:
            key = (gi, a, b)
            cur = best.get(key)
            if cur is None:
                best[key] = [gi, a, b, tok, shard, pos, cnt, doc_id, doc_off, src]
                continue
            cur[6] += cnt
            if (shard, pos) < (cur[4], cur[5]):
                cur[4], cur[5], cur[7], cur[8], cur[9] = shard, pos, doc_id, doc_off, src
    out = []
    for gi, group in itertools.groupby(sorted(best, key=lambda k: (k[0], k[1], -k[2])), key=lambda k: k[0]):
        reach = -1
        for key in group:   # start ascending, the longer first: inside an earlier span iff it ends by its end
            if key[2] <= reach:
                continue
            reach = key[2]
            out.append(tuple(best[key]))
    out.sort(key=lambda r: (r[0], r[1], r[2]))
    return out


def split_shards(sizes: Sequence[int], groups: int) -> list[list[int]]:
    """Shard numbers in ``groups`` sets of about equal bytes (largest first to the lightest set;
    deterministic), each set in ascending order."""
    groups = max(1, min(int(groups), len(sizes)))
    load = [0] * groups
    sets: list[list[int]] = [[] for _ in range(groups)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        g = min(range(groups), key=lambda g: (load[g], g))
        sets[g].append(i)
        load[g] += int(sizes[i])
    return [sorted(s) for s in sets if s]


class DistributedIndex:
    """An index matched by :class:`ShardGroup` actors (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, executor, *, groups: int | None = None,
                 replicas: int | None = None, inflight: int | None = None):
        from corpora.locations import is_url
        from suffix_index.manifest import FILE_KINDS, load_manifest, local_index, manifest_sha256

        self.location = str(path) if is_url(path) else None
        self.path = local_index(path)   # a URL: the driver's checked copy; each actor fetches its node's
        self.manifest = load_manifest(self.path)
        self.manifest_sha256 = manifest_sha256(self.path)
        self.executor = executor
        entries = self.manifest["shards"]
        sizes = [sum(int(e["files"][k]["size"]) for k in FILE_KINDS) for e in entries]
        workers = max(1, int(getattr(executor, "workers", 1)))
        groups = groups or min(len(entries), workers)
        self.sets = split_shards(sizes, groups)
        self.replicas = max(1, replicas or workers // len(self.sets))
        self.inflight = inflight or 2 * self.replicas
        memory = [sum(sizes[i] for i in s) for s in self.sets]
        # every actor must be placed at once (a batch waits for one of each group): more actors than
        # CPUs share them
        share = max(1, int(getattr(executor, "cpus", 1))) / (len(self.sets) * self.replicas)
        cpus = min(1.0, int(share * 10_000) / 10_000)   # Ray counts CPUs in units of 1/10,000
        # actors[r][g]: replica r of group g
        where = self.location or str(self.path.resolve())
        self.actors = [executor.actors(ShardGroup, [(where, s, self.manifest_sha256)
                                                    for s in self.sets], memory=memory, num_cpus=cpus)
                       for _ in range(self.replicas)]

    def close(self) -> None:
        for row in self.actors:
            self.executor.kill(row)
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _submit(self, r: int, batch: list, min_tokens: int, min_bytes: int | None):
        return [a.match.remote(batch, min_tokens, min_bytes) for a in self.actors[r]]

    def match_batches(self, batches: Iterable[list], min_tokens: int, min_bytes: int | None
                      ) -> Iterator[tuple[list, list[Span]]]:
        """``(batch, spans)`` for each batch, in order; up to ``inflight`` batches out at once."""
        queue: deque = deque()
        turn = itertools.cycle(range(self.replicas))
        it = iter(batches)
        done = False
        while True:
            while not done and len(queue) < self.inflight:
                try:
                    batch = next(it)
                except StopIteration:
                    done = True
                    break
                batch = [(k, bytes(d) if not isinstance(d, str) else d.encode("utf-8"), o) for k, d, o in batch]
                queue.append((batch, self._submit(next(turn), batch, min_tokens, min_bytes)))
            if not queue:
                return
            batch, refs = queue.popleft()
            rows = merge_group_spans(self.executor.get(refs))
            yield batch, [Span(key=batch[gi][0], start=a, end=b, tokens=tok, shard=shard, doc_id=doc_id,
                               doc_offset=doc_off, occurrences=cnt, source=src)
                          for gi, a, b, tok, shard, pos, cnt, doc_id, doc_off, src in rows]

    def iter_match(self, generations, min_tokens: int = 50, min_bytes: int | None = None,
                   batch_size: int = 1000) -> Iterator[Span]:
        from suffix_index.engine import check_match_parameters
        from suffix_index.match import iter_batches

        min_tokens, min_bytes, batch_size = check_match_parameters(min_tokens, min_bytes, batch_size)
        for _, spans in self.match_batches(iter_batches(generations, batch_size), min_tokens, min_bytes):
            yield from spans

    def match(self, generations, **kw) -> list[Span]:
        return list(self.iter_match(generations, **kw))
