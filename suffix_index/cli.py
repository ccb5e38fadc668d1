"""``trawl index ...`` and ``trawl match`` subcommands (registered by the ``trawl`` command)."""
from __future__ import annotations

import json

from corpora.executor import add_arguments as add_executor_arguments
from corpora.hygiene import visible


def _progress(args) -> bool:
    from corpora.ingest import progress_enabled

    return progress_enabled(getattr(args, "quiet", False))


def _cmd_build(args) -> int:
    from suffix_index.build import build_index
    from suffix_index.errors import check_int

    from corpora.executor import open_executor, spec_from_args

    check_int("--jobs", args.jobs, 1)
    spec = spec_from_args(args)
    with open_executor(spec, local_workers=args.jobs) as ex:
        m = build_index(args.corpus, args.out, jobs=args.jobs, overwrite=args.force, progress=_progress(args),
                        fsync=args.fsync, executor=ex)
    print(f"{args.out}: {m['documents']} documents, {m['bytes']} bytes in {len(m['shards'])} shard(s), "
          f"built in {m['build']['seconds']:.1f} s")
    return 0


def _cmd_verify(args) -> int:
    from suffix_index.errors import check_int
    from suffix_index.verify import verify_index

    check_int("--samples", args.samples, 0)
    r = verify_index(args.index, samples=args.samples, checksums=not args.quick, progress=_progress(args))
    what = f"{r['files_checked']} checksums, " if not args.quick else ""
    print(f"{args.index}: OK ({r['shards']} shard(s), {what}{r['pointers_checked']} pointers in range, "
          f"{r['pairs_checked']} adjacent suffix pairs in order)")
    return 0


def _cmd_info(args) -> int:
    from suffix_index.manifest import FILE_KINDS, load_manifest, local_index

    m = load_manifest(local_index(args.index))
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    print(f"index       {args.index}")
    print(f"format      {visible(m['format'])} v{visible(m['format_version'])}")
    print(f"documents   {m['documents']}")
    print(f"bytes       {m['bytes']} ({m['text_bytes']} of text)")
    print(f"shards      {len(m['shards'])}")
    for s in m["shards"]:
        size = sum(int(s["files"][k]["size"]) for k in FILE_KINDS)
        print(f"  {visible(s['name'])}  {s['documents']} docs  {s['bytes']} bytes  {s['pointer_width']}-byte pointers  "
              f"{size} bytes on disk")
    b = m.get("build", {})
    print(f"corpus      {visible(b.get('corpus'))}")   # manifest text: shown without raw control characters
    print(f"built       {visible(b.get('started_at'))} in {b.get('seconds')} s with {b.get('jobs')} job(s)")
    return 0


def _cmd_count(args) -> int:
    from suffix_index.engine import SuffixIndex

    with SuffixIndex.open(args.index) as idx:
        print(idx.count(args.text))
    return 0


def _cmd_find(args) -> int:
    from suffix_index.engine import SuffixIndex
    from suffix_index.errors import check_int

    check_int("--limit", args.limit, 0)
    with SuffixIndex.open(args.index) as idx:
        occ = idx.find(args.text, limit=args.limit)
        for o in occ:
            # a source is the corpus's text (a file name, a URL): shown without raw control characters
            print(f"doc {o.doc_id} offset {o.doc_offset} (shard {o.shard} position {o.position})  {visible(o.source)}")
        total = idx.count(args.text)
        if args.limit == 0:
            print(f"{total} occurrences (count only: --limit 0 lists none)")
        elif total > len(occ):
            print(f"... {total} occurrences in all")
    return 0


def _cmd_match(args) -> int:
    from suffix_index.engine import SuffixIndex
    from suffix_index.errors import MatchInputError, check_int
    from suffix_index.matchfile import check_output_file, default_output, generation_files, match_to_parquet

    from corpora.executor import open_executor, spec_from_args

    spec = spec_from_args(args)
    check_int("--min-tokens", args.min_tokens, 1)
    if args.min_bytes is not None:
        check_int("--min-bytes", args.min_bytes, 1)
    check_int("--batch-size", args.batch_size, 1)
    generation_files(args.generations)  # fail early, naming the input
    out = args.out or default_output(args.generations)
    if out is None:
        raise MatchInputError(f"{args.generations}: not a run folder; say where to write with --out")
    check_output_file(out)   # before the index is opened and the generations matched
    if spec.kind == "ray":
        from suffix_index.distributed import DistributedIndex

        with open_executor(spec) as ex, DistributedIndex(args.index, ex) as idx:
            r = match_to_parquet(idx, args.generations, out, min_tokens=args.min_tokens, min_bytes=args.min_bytes,
                                 batch_size=args.batch_size, progress=_progress(args))
        print(f"{r['out']}: {r['spans']} span(s) from {r['generations']} generation(s)")
        return 0
    with SuffixIndex.open(args.index) as idx:
        if not args.no_prefetch:
            idx.prefetch()
        r = match_to_parquet(idx, args.generations, out, min_tokens=args.min_tokens, min_bytes=args.min_bytes,
                             batch_size=args.batch_size, progress=_progress(args))
    print(f"{r['out']}: {r['spans']} span(s) from {r['generations']} generation(s)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index", help="build and query the suffix-array index of a corpus",
        description="Build, check and query byte-level suffix-array indexes (one per corpus folder).",
    )
    sub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    b = sub.add_parser(
        "build", help="build an index from a corpus folder",
        description=("Build the index of CORPUS: per shard the documents' UTF-8 bytes, each after a 0xFF "
                     "separator, their suffix array (libdivsufsort via pydivsufsort; 4-byte pointers below "
                     "2 GiB) and a document table, plus manifest.json with checksums. Needs about 5 bytes of "
                     "RAM per corpus byte per job. Written under a temporary name, renamed when complete."),
    )
    b.add_argument("corpus", metavar="CORPUS", help="corpus folder (or URL: read through this node's cache) from "
                                                    "'trawl corpus ingest'")
    b.add_argument("--out", "-o", required=True, metavar="INDEX",
                   help="index folder to create, or a URL (built in a local staging folder, then published: "
                        "the files, manifest.json last)")
    b.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="shards built in parallel processes, >= 1 (default: 1)")
    b.add_argument("--force", action="store_true", help="replace INDEX if it exists")
    b.add_argument("--fsync", action="store_true",
                   help="flush the big files to disk before publishing the index (durable across a power failure; "
                        "slower: the disk must write ~5 bytes per corpus byte)")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_executor_arguments(b)
    b.set_defaults(func=_cmd_build)

    v = sub.add_parser("verify", help="check an index's checksums and sort order",
                       description=("Recompute every file's sha256, check that every suffix-array pointer is in range "
                                    "(and the array is a permutation), and check the order of every adjacent pair of "
                                    "suffixes in one linear pass (about as long as building the index)."))
    v.add_argument("index", metavar="INDEX", help="index folder (or URL) from 'trawl index build'")
    v.add_argument("--samples", type=int, default=10000, metavar="N",
                   help="0 skips the order check; any other value checks every adjacent pair (it was a sample "
                        "size; kept for scripts) (default: 10000)")
    v.add_argument("--quick", action="store_true",
                   help="skip the checksums (sizes, every pointer's range and the full order check only)")
    v.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    v.set_defaults(func=_cmd_verify)

    i = sub.add_parser("info", help="show an index's manifest", description="Show an index's shards, sizes and build.")
    i.add_argument("index", metavar="INDEX", help="index folder (or URL) from 'trawl index build'")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=_cmd_info)

    c = sub.add_parser("count", help="count occurrences of a text", description="Count occurrences of TEXT (UTF-8 bytes).")
    c.add_argument("index", metavar="INDEX", help="index folder (or URL) from 'trawl index build'")
    c.add_argument("text", metavar="TEXT", help="text to count (its UTF-8 bytes, matched exactly)")
    c.set_defaults(func=_cmd_count)

    f = sub.add_parser("find", help="list occurrences of a text", description="List where TEXT occurs: document, offset, source.")
    f.add_argument("index", metavar="INDEX", help="index folder (or URL) from 'trawl index build'")
    f.add_argument("text", metavar="TEXT", help="text to look up (its UTF-8 bytes, matched exactly)")
    f.add_argument("--limit", type=int, default=20, metavar="N",
                   help="most occurrences to list; 0 lists none and prints the count only (default: 20)")
    f.set_defaults(func=_cmd_find)

    m = subparsers.add_parser(
        "match", help="find verbatim corpus spans in generations; write matches.parquet",
        description=("Find every maximal verbatim span of the generations that occurs in the index's corpus and "
                     "covers at least --min-tokens whole tokens (token offsets from the generations file; "
                     "generations without them use --min-bytes). GENERATIONS is a run folder, a generations "
                     "Parquet file or a folder of parts. Writes matches.parquet atomically, with min_tokens, "
                     "min_bytes and the index's manifest sha256 in its metadata."),
    )
    m.add_argument("generations", metavar="GENERATIONS",
                   help="run folder, generations Parquet file or folder of Parquet parts")
    m.add_argument("--index", required=True, metavar="INDEX",
                   help="index folder, or its URL (downloaded once per node into the cache, checked, then mapped)")
    m.add_argument("--out", "-o", default=None, metavar="FILE",
                   help="matches file (default: RUN/matches.parquet for a run folder)")
    m.add_argument("--min-tokens", type=int, default=50, metavar="K", help="fewest whole tokens in a span, >= 1 (default: 50)")
    m.add_argument("--min-bytes", type=int, default=None, metavar="B",
                   help="fewest bytes in a span for generations without token offsets, >= 1 (default: 4 x min-tokens)")
    m.add_argument("--batch-size", type=int, default=1000, metavar="N", help="generations matched together, >= 1 (default: 1000)")
    m.add_argument("--no-prefetch", action="store_true",
                   help="do not ask the kernel to read the index ahead (done by default when it fits in half "
                        "the available memory)")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_executor_arguments(m)
    m.set_defaults(func=_cmd_match)
