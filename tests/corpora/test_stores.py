"""Corpora and indexes on object stores (issue 15, item 2), offline: ``memory://`` (fsspec's
in-process store) and ``file://`` (a folder used as a store, across processes through the CLI).

* the pipeline through a store equals the local one byte for byte (corpus shards, index files,
  matches.parquet rows), with the reading node's cache empty, so every file is downloaded and checked;
* input URLs (a file, a folder, a glob) give the local corpus, each source named by its URL;
* a publish stopped half-way (an injected failure in process, ``os._exit`` in the CLI) leaves nothing
  a reader accepts (one line), and the same command run again completes;
* the cache: a damaged cached file is fetched again; a damaged store object is one line;
* fuzz: mutated manifests read from a store are one line naming the URL, or the correct folder;
* ``s3://``, ``gs://`` and ``hf://`` cannot be reached offline: only their parsing and the
  one-line error of a missing driver are tested.
"""
from __future__ import annotations

import importlib.util
import json
import random
import sys
import uuid
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from corpora import ingest, open_corpus
from corpora.errors import StoreError
from corpora.locations import is_url, open_location, scheme
from executor_data import corpus_docs, generations, write_run
from json_mutations import put, walk
from repo import one_line_error, trawl
from suffix_index.build import build_index
from suffix_index.engine import SuffixIndex
from suffix_index.matchfile import match_to_parquet

MEM = fsspec.filesystem("memory")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test its own node cache (``TRAWL_CACHE_DIR``); :func:`node` switches to a fresh one."""
    path = tmp_path / "cache-node1"
    monkeypatch.setenv("TRAWL_CACHE_DIR", str(path))
    return path


def node(monkeypatch, tmp_path, name: str) -> Path:
    """Act as another node: an empty cache."""
    path = tmp_path / f"cache-{name}"
    monkeypatch.setenv("TRAWL_CACHE_DIR", str(path))
    return path


def bucket() -> str:
    return f"memory://t-{uuid.uuid4().hex[:12]}"


def store_files(url: str) -> dict[str, bytes]:
    loc = open_location(url)
    base = loc.path.rstrip("/") + "/"
    return {p[len(base):]: loc.fs.cat_file(p) for p in sorted(loc.fs.find(loc.path))}


def write_inputs(folder: Path, docs: list[str]) -> list[Path]:
    """The documents as two JSON Lines files (with an id and a metadata field each)."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    paths = []
    for n, chunk in enumerate((docs[:half], docs[half:])):
        p = folder / f"part{n}.jsonl"
        p.write_text("".join(json.dumps({"text": t, "id": f"{n}-{i}", "lang": "xx"}) + "\n"
                             for i, t in enumerate(chunk)))
        paths.append(p)
    return paths


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def matches_rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


DOCS = corpus_docs(docs=60)


@pytest.fixture(scope="module")
def local_pipeline(tmp_path_factory):
    """The local pipeline's corpus, index and matches (the reference)."""
    tmp = tmp_path_factory.mktemp("local")
    inputs = write_inputs(tmp / "in", DOCS)
    ingest(inputs, tmp / "corpus", id_field="id", max_shard_bytes=8_000)
    build_index(tmp / "corpus", tmp / "index")
    run = write_run(tmp / "run", generations(DOCS, n=120))
    with SuffixIndex.open(tmp / "index") as idx:
        match_to_parquet(idx, run, tmp / "matches.parquet", min_tokens=5)
    return {"inputs": inputs, "corpus": tmp / "corpus", "index": tmp / "index", "run": run,
            "matches": tmp / "matches.parquet"}


def test_parsing_locations():
    assert not is_url("data/corpus") and not is_url("/abs/x") and scheme("data") is None
    assert scheme("S3://bucket/key") == "s3" and is_url("hf://datasets/org/name")
    loc = open_location("memory://bucket/dir/")
    assert loc.url == "memory://bucket/dir" and loc.path.endswith("/bucket/dir")
    assert loc.url_of("x.arrow") == "memory://bucket/dir/x.arrow"
    floc = open_location("file:///tmp/some/where")
    assert floc.path == "/tmp/some/where"
    with pytest.raises(StoreError, match=r"ftp://x/y: unsupported location scheme 'ftp://'"):
        open_location("ftp://x/y")
    with pytest.raises(StoreError, match=r"^hf://datasets/o/n/corpus: trawl reads the Hugging Face Hub .* does not "
                                         r"publish to it"):
        ingest(["x.jsonl"], "hf://datasets/o/n/corpus")


@pytest.mark.parametrize("url,module,extra", [("s3://bucket/corpus", "s3fs", "s3"),
                                              ("gs://bucket/corpus", "gcsfs", "gcs"),
                                              ("hf://datasets/org/name/data.parquet", "huggingface_hub", "hf")])
def test_missing_driver_is_one_line_naming_the_extra(monkeypatch, url, module, extra):
    monkeypatch.setitem(sys.modules, module, None)   # as if not installed (find_spec answers None)
    with pytest.raises(StoreError) as e:
        open_location(url)
    msg = str(e.value)
    assert msg.startswith(url) and module in msg and f'.[{extra}]' in msg and "\n" not in msg


@pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is not None or importlib.util.find_spec("s3fs")
                    is not None, reason="the drivers are installed here")
def test_missing_driver_in_the_cli(tmp_path):
    one_line_error(trawl("corpus", "ingest", "hf://datasets/org/name/train.jsonl", "--out", tmp_path / "c"),
                   "huggingface_hub")
    one_line_error(trawl("index", "build", "s3://bucket/corpus", "--out", tmp_path / "i"), '".[s3]"')
    run = write_run(tmp_path / "run", generations(DOCS, n=3))
    one_line_error(trawl("match", run, "--index", "gs://bucket/index", "--out", tmp_path / "m.parquet"),
                   "gcsfs")
    one_line_error(trawl("corpus", "ingest", tmp_path, "--out", "ftp://host/c"), "unsupported location scheme")


def test_pipeline_through_a_store_equals_the_local_one(local_pipeline, tmp_path, monkeypatch):
    ref = local_pipeline
    b = bucket()
    corpus = ingest(ref["inputs"], f"{b}/corpus", id_field="id", max_shard_bytes=8_000)
    assert corpus.location == f"{b}/corpus" and corpus.documents == open_corpus(ref["corpus"]).documents
    published = store_files(f"{b}/corpus")
    local = local_files(ref["corpus"])
    assert published.keys() == local.keys()
    assert {k: v for k, v in published.items() if k.endswith(".arrow")} == \
        {k: v for k, v in local.items() if k.endswith(".arrow")}
    node(monkeypatch, tmp_path, "builder")    # the index is built on another node: the corpus is downloaded
    build_index(f"{b}/corpus", f"{b}/index")
    index_store = store_files(f"{b}/index")
    index_local = local_files(ref["index"])
    assert index_store.keys() == index_local.keys()
    for name in index_local:
        if name != "manifest.json":
            assert index_store[name] == index_local[name], name
    m = json.loads(index_store["manifest.json"])
    assert m["build"]["corpus"] == f"{b}/corpus"
    node(monkeypatch, tmp_path, "matcher")    # and matched on a third
    with SuffixIndex.open(f"{b}/index") as idx:
        assert idx.location == f"{b}/index"
        match_to_parquet(idx, ref["run"], tmp_path / "matches.parquet", min_tokens=5)
    assert matches_rows(tmp_path / "matches.parquet") == matches_rows(ref["matches"])
    assert matches_rows(ref["matches"])   # the comparison compared something
    meta = pq.read_schema(tmp_path / "matches.parquet").metadata
    assert meta[b"index"].decode() == f"{b}/index"


def test_input_urls_file_folder_and_glob(local_pipeline, tmp_path):
    b = bucket()
    for p in local_pipeline["inputs"]:
        MEM.pipe_file(open_location(f"{b}/in/{p.name}").path, p.read_bytes())
    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("first text file, one document")
    (texts / "sub" / "b.md").write_text("second text file\nin a sub folder")
    (texts / ".hidden").write_text("skipped")
    for p in texts.rglob("*"):
        if p.is_file():
            MEM.pipe_file(open_location(f"{b}/texts/{p.relative_to(texts)}").path, p.read_bytes())
    local = ingest([*local_pipeline["inputs"], texts], tmp_path / "local", id_field="id")
    remote = ingest([f"{b}/in/part*.jsonl", f"{b}/texts"], tmp_path / "remote", id_field="id")
    ld, rd = list(local.iter_documents()), list(remote.iter_documents())
    assert [(d.text, d.ext_id, d.metadata) for d in ld] == [(d.text, d.ext_id, d.metadata) for d in rd]
    names = {str(p): f"{b}/in/{p.name}" for p in local_pipeline["inputs"]}
    names.update({str(texts / "a.txt"): f"{b}/texts/a.txt", str(texts / "sub" / "b.md"): f"{b}/texts/sub/b.md"})
    for l, r in zip(ld, rd):
        path, _, line = l.source.partition("#")
        assert r.source == names[path] + (f"#{line}" if line else "")
    one = ingest([f"{b}/in/part1.jsonl"], tmp_path / "one", id_field="id")
    assert one.documents == len(DOCS) - len(DOCS) // 2
    with pytest.raises(Exception) as e:
        ingest([f"{b}/nothing-here"], tmp_path / "none")
    assert getattr(e.value, "user_error", False) and f"{b}/nothing-here" in str(e.value)
    MEM.pipe_file(open_location(f"{b}/bad/x.jsonl").path, b'{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(Exception, match=rf"^{b}/bad/x.jsonl:2: invalid JSON") as e:
        ingest([f"{b}/bad/x.jsonl"], tmp_path / "bad")
    assert getattr(e.value, "user_error", False)


def test_interrupted_publish_is_refused_then_rerun_completes(local_pipeline, tmp_path, monkeypatch):
    from corpora import stores

    b = bucket()
    calls = []

    def fail_on_second(name, count):
        calls.append(name)
        if count == 2:
            raise OSError("connection reset by peer")

    monkeypatch.setattr(stores, "_after_upload", fail_on_second)
    with pytest.raises(StoreError, match=rf"^{b}/corpus: cannot publish: connection reset"):
        ingest(local_pipeline["inputs"], f"{b}/corpus", max_shard_bytes=8_000)
    assert len(calls) == 2 and "corpus.json" not in store_files(f"{b}/corpus")
    node(monkeypatch, tmp_path, "reader")
    with pytest.raises(StoreError, match=rf"^{b}/corpus: an unfinished publication"):
        open_corpus(f"{b}/corpus")
    with pytest.raises(StoreError, match="unfinished publication"):
        build_index(f"{b}/corpus", tmp_path / "index")
    monkeypatch.setattr(stores, "_after_upload", lambda name, count: None)
    ingest(local_pipeline["inputs"], f"{b}/corpus", max_shard_bytes=8_000)   # no --force needed: trawl's leftovers
    node(monkeypatch, tmp_path, "reader2")
    c = open_corpus(f"{b}/corpus")
    assert [d.text for d in c.iter_documents()] == [d.text for d in open_corpus(local_pipeline["corpus"]).iter_documents()]
    assert ".trawl-publishing" not in store_files(f"{b}/corpus")
    with pytest.raises(StoreError, match="already exists; pass --force"):
        ingest(local_pipeline["inputs"], f"{b}/corpus")
    # a --force re-publication stopped half-way: the old version is no longer offered either
    monkeypatch.setattr(stores, "_after_upload", fail_on_second)
    with pytest.raises(StoreError):
        ingest(local_pipeline["inputs"][:1], f"{b}/corpus", max_shard_bytes=4_000, overwrite=True)
    node(monkeypatch, tmp_path, "reader3")
    with pytest.raises(StoreError, match="unfinished publication"):
        open_corpus(f"{b}/corpus")


def test_destination_that_trawl_did_not_publish_is_refused(local_pipeline):
    b = bucket()
    MEM.pipe_file(open_location(f"{b}/mine/notes.txt").path, b"someone's file")
    for force in (False, True):
        with pytest.raises(StoreError, match=r"not a corpus folder trawl published \(no corpus.json\)"):
            ingest(local_pipeline["inputs"], f"{b}/mine", overwrite=force)
    assert store_files(f"{b}/mine") == {"notes.txt": b"someone's file"}
    MEM.pipe_file(open_location(f"{b}/obj").path, b"x")
    with pytest.raises(StoreError, match="is an object, not a folder"):
        build_index(local_pipeline["corpus"], f"{b}/obj")


def test_republish_removes_files_the_new_manifest_does_not_list(local_pipeline):
    b = bucket()
    ingest(local_pipeline["inputs"], f"{b}/c", max_shard_bytes=4_000)
    many = set(store_files(f"{b}/c"))
    ingest(local_pipeline["inputs"][:1], f"{b}/c", max_shard_bytes=1 << 20, overwrite=True)
    now = set(store_files(f"{b}/c"))
    assert now == {"corpus.json", "shard-00000.arrow"} and len(many) > len(now)


def test_damaged_cache_file_is_fetched_again_and_damaged_store_object_is_one_line(local_pipeline, tmp_path,
                                                                                   monkeypatch):
    b = bucket()
    build_index(local_pipeline["corpus"], f"{b}/index")
    cache = node(monkeypatch, tmp_path, "reader")
    with SuffixIndex.open(f"{b}/index") as idx:
        want = idx.count("abc")
    entry = next(p for p in (cache / "store").iterdir() if p.is_dir() and p.name.startswith("index-"))
    sa = sorted(entry.glob("*.sa"))[0]
    good = sa.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    sa.write_bytes(bytes(damaged))
    with SuffixIndex.open(f"{b}/index") as idx:   # the cache hit re-hashes: the file is fetched again
        assert idx.count("abc") == want
    assert sa.read_bytes() == good
    sa.unlink()                                   # removed from the cache: fetched again too
    with SuffixIndex.open(f"{b}/index") as idx:
        assert idx.count("abc") == want
    # the store's own object damaged: one line naming it, on a fresh node and on this one
    obj = open_location(f"{b}/index/{sa.name}")
    MEM.pipe_file(obj.path, bytes(damaged))
    node(monkeypatch, tmp_path, "fresh")
    with pytest.raises(StoreError, match=rf"^{b}/index/{sa.name}: .* sha256 .* the object is damaged") as e:
        SuffixIndex.open(f"{b}/index")
    assert "\n" not in str(e.value)
    assert not any(p.name.startswith("index-") and ".tmp-" not in p.name and p.is_dir()
                   for p in (tmp_path / "cache-fresh" / "store").iterdir())   # nothing half made is kept
    MEM.rm_file(obj.path)
    with pytest.raises(StoreError, match=rf"^{b}/index/{sa.name}: cannot read it .*no such object"):
        SuffixIndex.open(f"{b}/index")


def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as exc:   # noqa: BLE001 - the test asserts what it is
        return "error", exc


MUTANTS = [None, -1, 0, 2**70, "x", "", [], {}, True, "../../escape", "corpus.json", "manifest.json", ".hidden",
           "0" * 64]


@pytest.mark.parametrize("kind", ["corpus", "index"])
def test_fuzz_manifest_read_from_a_store(local_pipeline, tmp_path, monkeypatch, kind):
    """Every field of the manifest replaced by hostile values, and its bytes randomly damaged: reading
    it from the store is one line naming the URL, or the correct folder; nothing lands outside the cache."""
    b = bucket()
    if kind == "corpus":
        ingest(local_pipeline["inputs"], f"{b}/x", max_shard_bytes=8_000)
        name = "corpus.json"
        want = [d.text for d in open_corpus(local_pipeline["corpus"]).iter_documents()]

        def read():
            return [d.text for d in open_corpus(f"{b}/x").iter_documents()]
    else:
        build_index(local_pipeline["corpus"], f"{b}/x")
        name = "manifest.json"
        probes = [d[5:40] for d in DOCS[:8]]
        with SuffixIndex.open(local_pipeline["index"]) as idx:
            want = [idx.count(p) for p in probes]

        def read():
            with SuffixIndex.open(f"{b}/x") as idx:
                return [idx.count(p) for p in probes]
    mpath = open_location(f"{b}/x/{name}").path
    original = MEM.cat_file(mpath)
    manifest = json.loads(original)
    rng = random.Random(15)
    variants = []
    for path in walk(manifest, list_items=2):
        for value in rng.sample(MUTANTS, 4):
            variants.append(json.dumps(put(manifest, path, value)).encode())
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256)
        variants.append(bytes(data[:rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data))
    outcomes = {"ok": 0, "error": 0}
    for n, data in enumerate(variants):
        MEM.pipe_file(mpath, data)
        cache = node(monkeypatch, tmp_path, f"f{n % 3}")
        status, result = _outcome(read)
        outcomes[status] += 1
        if status == "ok":
            assert result == want
        else:
            assert getattr(result, "user_error", False), repr(result)
            msg = str(result)
            # named by its URL; or, for damage the engine finds as it reads (a block's CRC-32 that the
            # manifest's sha256-checked files contradict), by the node's copy of the file
            assert "\n" not in msg and (f"{b}/x" in msg or str(cache) in msg), msg
        for p in (cache / "store").rglob("*"):
            assert p.resolve().is_relative_to(cache.resolve())
    assert outcomes["error"] > 0
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_run_folders_stay_paths(tmp_path):
    from extractor.sampling.run_folder import RunDir

    with pytest.raises(StoreError, match=r"^memory://b/run: a run folder must be a path"):
        RunDir("memory://b/run")
    one_line_error(trawl("match", "s3://bucket/run", "--index", tmp_path), "GENERATIONS (a run folder or generations")
    run = write_run(tmp_path / "run", generations(DOCS, n=3))
    one_line_error(trawl("match", run, "--index", tmp_path, "--out", "gs://b/m.parquet"),
                   "the matches file must be a path")


def test_cli_through_a_file_store_across_processes(local_pipeline, tmp_path, monkeypatch):
    """file:// is a store like a bucket: each command is its own process (its own node cache), a
    build stopped half-way (killed: os._exit) leaves nothing a reader takes, re-running completes."""
    ref = local_pipeline
    store = f"file://{tmp_path}/store"
    monkeypatch.setenv("TRAWL_CACHE_DIR", str(tmp_path / "cli-cache"))
    r = trawl("corpus", "ingest", *ref["inputs"], "--out", f"{store}/corpus", "--id-field", "id",
              "--shard-size", "8000", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{store}/corpus: {len(DOCS)} documents")
    info = trawl("corpus", "info", f"{store}/corpus")
    assert info.returncode == 0 and f"corpus      {store}/corpus" in info.stdout
    with monkeypatch.context() as m:
        m.setenv("TRAWL_TEST_PUBLISH_EXIT_AFTER", "2")
        r = trawl("index", "build", f"{store}/corpus", "--out", f"{store}/index", "-q")
    assert r.returncode == 137
    assert not (tmp_path / "store" / "index" / "manifest.json").exists()
    one_line_error(trawl("index", "info", f"{store}/index"), "an unfinished publication")
    one_line_error(trawl("match", ref["run"], "--index", f"{store}/index", "--min-tokens", "5",
                         "--out", tmp_path / "m.parquet"), "an unfinished publication")
    r = trawl("index", "build", f"{store}/corpus", "--out", f"{store}/index", "-q")
    assert r.returncode == 0, r.stderr
    for name, data in local_files(ref["index"]).items():
        if name != "manifest.json":
            assert (tmp_path / "store" / "index" / name).read_bytes() == data
    (tmp_path / "cli-cache").rename(tmp_path / "cli-cache-old")   # the matcher: another node
    r = trawl("match", ref["run"], "--index", f"{store}/index", "--min-tokens", "5", "--out", tmp_path / "m.parquet")
    assert r.returncode == 0, r.stderr
    assert matches_rows(tmp_path / "m.parquet") == matches_rows(ref["matches"])
    r = trawl("index", "verify", f"{store}/index", "-q")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_builtin_corpus_to_a_store_and_never_a_local_folder_named_after_a_url(tmp_path, monkeypatch):
    from corpora import build_offline_corpus, ingest_records
    from corpora.readers import Record

    monkeypatch.chdir(tmp_path)
    b = bucket()
    c = build_offline_corpus(f"{b}/builtin", max_bytes=50_000)
    local = build_offline_corpus(tmp_path / "builtin", max_bytes=50_000)
    assert c.location == f"{b}/builtin" and c.documents == local.documents
    assert {k: v for k, v in store_files(f"{b}/builtin").items() if k != "corpus.json"} == \
        {k: v for k, v in local_files(tmp_path / "builtin").items() if k != "corpus.json"}
    with pytest.raises(StoreError, match="written by ingest"):
        ingest_records([Record(source="x", text="y")], f"{b}/direct")
    assert not any(p.name.startswith("memory") for p in tmp_path.iterdir())


def test_campaign_index_path_may_be_a_url(local_pipeline, tmp_path):
    from extractor.campaigns.config import load_campaign
    from extractor.errors import TrawlError

    store = f"file://{tmp_path}/store"
    build_index(local_pipeline["corpus"], f"{store}/index")
    text = ('[campaign]\nname = "a"\n[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9/v1"]\n'
            '[[attacks]]\nname = "divergence"\nwords = ["poem"]\nsamples = 2\nmax_tokens = 16\n'
            f'[index]\npath = "{store}/index"\n')
    (tmp_path / "c.toml").write_text(text)
    assert load_campaign(tmp_path / "c.toml").config["index"]["path"] == f"{store}/index"   # kept as written
    (tmp_path / "store" / "index" / "manifest.json").unlink()
    (tmp_path / "store" / "index" / ".trawl-publishing").write_text("{}")
    with pytest.raises(TrawlError, match=r"is not a usable index .*an unfinished publication"):
        load_campaign(tmp_path / "c.toml")


def test_whole_chain_from_memory_inputs_equals_the_local_pipeline(local_pipeline, tmp_path, monkeypatch):
    """ingest from memory:// -> corpus on memory:// -> index on memory:// -> match: the suffix arrays
    and text bytes equal the local ones byte for byte; the document tables and matches equal them
    with each source named by its URL instead of its path."""
    import pyarrow as pa

    ref = local_pipeline
    b = bucket()
    for p in ref["inputs"]:
        MEM.pipe_file(open_location(f"{b}/in/{p.name}").path, p.read_bytes())
    ingest([f"{b}/in/{p.name}" for p in ref["inputs"]], f"{b}/corpus", id_field="id", max_shard_bytes=8_000)
    node(monkeypatch, tmp_path, "builder")
    build_index(f"{b}/corpus", f"{b}/index")
    node(monkeypatch, tmp_path, "matcher")
    with SuffixIndex.open(f"{b}/index") as idx:
        match_to_parquet(idx, ref["run"], tmp_path / "m.parquet", min_tokens=5)
    renamed = {str(p): f"{b}/in/{p.name}" for p in ref["inputs"]}

    def url_source(s):
        path, _, row = s.partition("#")
        return renamed[path] + "#" + row

    store = store_files(f"{b}/index")
    local = local_files(ref["index"])
    assert store.keys() == local.keys()
    for name, data in local.items():
        if name.endswith((".bytes", ".sa")):
            assert store[name] == data, name
        elif name.endswith(".docs.arrow"):
            want = pa.ipc.open_file(pa.BufferReader(data)).read_all().to_pylist()
            got = pa.ipc.open_file(pa.BufferReader(store[name])).read_all().to_pylist()
            assert got == [dict(r, source=url_source(r["source"])) for r in want]
    want = [dict(r, source=url_source(r["source"])) for r in matches_rows(ref["matches"])]
    assert matches_rows(tmp_path / "m.parquet") == want and want


def test_report_reads_documents_from_an_index_url(local_pipeline, tmp_path, monkeypatch):
    from reports.texts import _open_index

    b = bucket()
    build_index(local_pipeline["corpus"], f"{b}/index")
    node(monkeypatch, tmp_path, "reporter")
    probe = DOCS[3][10:40]
    for index, meta in ((f"{b}/index", {}), (None, {"index": f"{b}/index"})):
        warnings = []
        idx, opened, where = _open_index(index, meta, warnings)
        assert idx is not None and opened and not warnings
        with SuffixIndex.open(local_pipeline["index"]) as ref:
            assert [(o.doc_id, o.doc_offset) for o in idx.find(probe)] == \
                [(o.doc_id, o.doc_offset) for o in ref.find(probe)]
        idx.close()
    warnings = []
    assert _open_index(None, {"index": f"{b}/gone"}, warnings)[0] is None and "no such index folder" in warnings[0]
    with pytest.raises(StoreError, match=f"^{b}/gone: no such index folder"):
        _open_index(f"{b}/gone", {}, [])
