"""``trawl corpus ...`` subcommands (registered by the ``trawl`` command)."""
from __future__ import annotations

import argparse
import json
import re

from corpora.hygiene import visible


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``'1GiB'``, ``'500MB'``, ``'123'`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 500MB, 1000000)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def _progress(args) -> bool:
    from corpora.ingest import progress_enabled

    return progress_enabled(getattr(args, "quiet", False))


def _cmd_ingest(args) -> int:
    from corpora.executor import open_executor, spec_from_args
    from corpora.ingest import ingest

    with open_executor(spec_from_args(args)) as ex:
        corpus = ingest(
            args.sources, args.out, text_field=args.text_field, id_field=args.id_field,
            max_shard_bytes=args.shard_size, keep_duplicates=args.keep_duplicates,
            skip_binary=args.skip_binary, overwrite=args.force, progress=_progress(args), executor=ex,
        )
    st = corpus.stats
    print(
        f"{corpus.location}: {corpus.documents} documents, {corpus.text_bytes} bytes of text in "
        f"{len(corpus.shards)} shard(s); read {st['read']}, skipped (empty) {st['skipped_empty']}, "
        f"repaired (invalid UTF-8) {st['repaired_utf8']}, exact duplicates {st['exact_duplicates']}"
        f" ({corpus.manifest.get('duplicates', 'dropped')})"
    )
    return 0


def _cmd_info(args) -> int:
    from corpora.shards import open_corpus

    c = open_corpus(args.corpus)
    if args.json:
        print(json.dumps(c.manifest, indent=1))
        return 0
    print(f"corpus      {c.location}")
    print(f"documents   {c.documents}")
    print(f"text bytes  {c.text_bytes}")
    print(f"shards      {len(c.shards)}")
    for k, v in c.stats.items():
        print(f"  {visible(k):<16} {visible(v)}")        # manifest text: no raw control characters
    print(f"created at  {visible(c.manifest.get('created_at'))}")
    return 0


def _cmd_builtin(args) -> int:
    from corpora.builtin import build_offline_corpus

    c = build_offline_corpus(args.out, max_bytes=args.max_bytes, overwrite=args.force, progress=_progress(args))
    print(f"{c.location}: {c.documents} documents, {c.text_bytes} bytes of text (offline sources on this machine)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "corpus", help="ingest reference text into a corpus folder",
        description="Build and inspect corpus folders: Arrow shards of documents that 'trawl index build' indexes.",
    )
    sub = p.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)

    ing = sub.add_parser(
        "ingest", help="read JSONL/Parquet/Arrow files or text folders into a corpus folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Read documents and write a corpus folder (Arrow IPC shards + corpus.json).\n\n"
            "Inputs: JSON Lines (.jsonl/.ndjson/.json, optionally .gz or .zst), Parquet (.parquet),\n"
            "Arrow IPC / Feather (.arrow/.feather/.ipc), or a directory of text files (one file, one\n"
            "document; a text file given directly is one document too). Other columns are kept as\n"
            "JSON metadata.\n\n"
            "A JSONL or text file may start with a UTF-8 byte order mark (read as utf-8-sig).\n\n"
            "Cleaning: empty documents are skipped; invalid UTF-8 (and lone surrogates) is replaced\n"
            "with U+FFFD and counted as repaired; exact duplicates are dropped (counted) unless\n"
            "--keep-duplicates. Inputs that leave no document at all are an error. The folder is\n"
            "written under a temporary name and renamed when complete.\n\n"
            "Object stores: SRC may be a URL (s3://, gs://, hf://, file://: a file, a folder of text\n"
            "files, or a glob), fetched a file at a time; DIR may be a URL (s3://, gs://, file://):\n"
            "the corpus is built in a local staging folder and published, corpus.json last."
        ),
    )
    ing.add_argument("sources", nargs="+", metavar="SRC", help="input files or directories (or URLs), read in this order")
    ing.add_argument("--out", "-o", required=True, metavar="DIR", help="corpus folder (or URL) to create")
    ing.add_argument("--text-field", default="text", metavar="NAME", help="field/column with the text (default: text)")
    ing.add_argument("--id-field", default=None, metavar="NAME", help="field/column kept as the document's external id")
    ing.add_argument("--shard-size", type=parse_size, default=1 << 30, metavar="SIZE",
                     help="most text bytes per shard (default: 1GiB; the index needs ~5 bytes of RAM per byte)")
    ing.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicate documents")
    ing.add_argument("--skip-binary", action="store_true",
                     help="skip binary files in directories instead of stopping with an error")
    ing.add_argument("--force", action="store_true", help="replace DIR if it exists")
    ing.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    from corpora.executor import add_arguments as add_executor_arguments

    add_executor_arguments(ing)
    ing.set_defaults(func=_cmd_ingest)

    info = sub.add_parser("info", help="show a corpus folder's counts", description="Show a corpus folder's manifest.")
    info.add_argument("corpus", metavar="DIR", help="corpus folder (or URL) from 'trawl corpus ingest' or 'trawl corpus builtin'")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=_cmd_info)

    bi = sub.add_parser(
        "builtin", help="build a corpus from text shipped with Python on this machine (no download)",
        description=("Collect the Python standard library's source, Python docs when installed and the license "
                     "texts of installed packages (and /usr/share/common-licenses) into a corpus folder; "
                     "deterministic order, each document's source is its path."),
    )
    bi.add_argument("--out", "-o", required=True, metavar="DIR", help="corpus folder to create")
    bi.add_argument("--max-bytes", type=parse_size, default=32 << 20, metavar="SIZE",
                    help="most text to collect, > 0 (default: 32MiB)")
    bi.add_argument("--force", action="store_true", help="replace DIR if it exists")
    bi.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    bi.set_defaults(func=_cmd_builtin)
