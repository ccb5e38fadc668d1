"""Shared helpers for the sampler tests: a tiny contract-conformant corpus folder."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.ipc as ipc

# Public-domain texts a small base model has likely seen many times.
DOCS = [
    "We the People of the United States, in Order to form a more perfect Union, establish Justice, insure "
    "domestic Tranquility, provide for the common defence, promote the general Welfare, and secure the "
    "Blessings of Liberty to ourselves and our Posterity, do ordain and establish this Constitution for the "
    "United States of America.",
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great "
    "civil war, testing whether that nation, or any nation so conceived and so dedicated, can long endure.",
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and "
    "equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the "
    "opinions of mankind requires that they should declare the causes which impel them to the separation.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it "
    "was the season of Darkness, it was the spring of hope, it was the winter of despair.",
    "Short doc.",
]


def write_corpus(path, docs=DOCS, shards=2) -> str:
    os.makedirs(path, exist_ok=True)
    per = max(1, (len(docs) + shards - 1) // shards)
    entries = []
    for s in range(shards):
        chunk = docs[s * per:(s + 1) * per]
        if not chunk:
            break
        ids = list(range(s * per, s * per + len(chunk)))
        table = pa.table({
            "doc_id": pa.array(ids, pa.int64()),
            "source": pa.array([f"test.txt#{i}" for i in ids], pa.string()),
            "ext_id": pa.array([None] * len(chunk), pa.string()),
            "text": pa.array(chunk, pa.large_string()),
            "metadata": pa.array(["{}"] * len(chunk), pa.string()),
        })
        name = f"shard-{s:05d}.arrow"
        with ipc.new_file(os.path.join(path, name), table.schema) as w:
            w.write_table(table)
        entries.append({"name": name, "documents": len(chunk)})
    with open(os.path.join(path, "corpus.json"), "w") as fh:
        json.dump({"format": "trawl-corpus", "format_version": 1, "shards": entries, "documents": len(docs)}, fh)
    return str(path)


def stored_count(run_dir) -> int:
    """Generations a run folder holds now: its journal's whole records' rows plus its parts' rows (a
    run killed mid-flight has both)."""
    import pyarrow.parquet as pq

    from extractor.sampling.run_folder import RunDir

    rd = RunDir(str(run_dir))
    return rd.read_journal().num_rows + sum(pq.read_metadata(p).num_rows for p in rd.part_paths())
