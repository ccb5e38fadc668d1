"""``trawl demo``: the whole pipeline, end to end, on the embedded default.

Steps (each one is the same code the individual commands run):

1. corpus  - real text already on the machine (Python standard library, license
             texts of installed packages and of the OS) into Arrow shards
             (:func:`corpora.build_offline_corpus`);
2. index   - byte-level suffix array over it (:func:`suffix_index.build_index`);
3. model   - the embedded Gemma-3-270m served by the real llama.cpp
             OpenAI-compatible server on a free loopback port;
4. attacks - a discoverable-memorization pass (corpus prefixes, greedy
             continuation) and the divergence attack (Nasr et al. 2023), for
             a few minutes of wall time (:func:`extractor.sampling.run_attacks`);
             no chat pass (:data:`CHAT_NOTE` says why);
5. match   - every maximal verbatim span of at least ``min_tokens`` model tokens
             (:meth:`suffix_index.SuffixIndex.match`);
6. report  - HTML, Markdown and JSON (:func:`reports.write_report`).

The corpus and the index are reused when a previous demo left them complete;
the run is started afresh unless ``resume`` is set.

Steps 3-6 are the campaign pipeline's own (:func:`~extractor.campaigns.pipeline.served_target`,
:func:`~extractor.campaigns.pipeline.match_run`, :func:`~extractor.campaigns.pipeline.report_run`),
but the demo is not run by the campaign runner: its folder layout (``run/report/``, no
``campaign.json``), its run id (the sampler's default, not a campaign identity hash) and its
"start afresh unless --resume" rule are pinned by its tests and users' scripts, and the
runner's would change all three.

Output folder::

    OUT/
      .trawl-demo       the mark that the demo made this folder (see :func:`_claim`)
      corpus/ index/    reused when complete
      run/              the sampler's run folder; run/report/ the report
      llama-server.log  the embedded server's log
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from extractor.errors import TrawlError

# Ordered so that the discoverable pass (a bounded plan) runs first and the
# divergence attack (a large plan, cut by the time budget) uses the rest.
DEMO_DIVERGENCE = {
    "samples": 1,
    "repetitions": 50,
    "max_tokens": 256,
    "temperature": 1.0,
}
DEMO_DISCOVERABLE = {  # "documents" scales with the time budget: 8 per minute

    "prefix_tokens": 32,
    "suffix_tokens": 50,
    "selection": "random",
}


# why the demo runs no chat divergence pass (issue 13); printed at step 4
CHAT_NOTE = ("the embedded Gemma-3-270m is a base model, so its chat template would frame text it was not tuned "
             "on; audit an instruct model with `trawl sample --api chat` (README: \"Audit a chat model\")")


@dataclass
class DemoResult:
    out_dir: Path
    corpus_dir: Path
    index_dir: Path
    run_dir: Path
    report_html: Path
    report_md: Path
    report_json: Path
    metrics: dict


MARKER = ".trawl-demo"


def _claim(out: Path) -> None:
    """Make sure ``out`` is the demo's own folder before anything in it is replaced.

    The demo replaces its ``corpus/``, ``index/`` and ``run/`` sub-folders; it
    marks the folders it made with a ``.trawl-demo`` file and refuses to touch a
    folder holding any of those names without the mark (a user's own corpus,
    index or run is never deleted).
    """
    out.mkdir(parents=True, exist_ok=True)
    if (out / MARKER).exists():
        return
    taken = [name for name in ("corpus", "index", "run") if (out / name).exists()]
    if taken:
        raise TrawlError(
            f"{out}: already holds {', '.join(taken)} that trawl demo did not make; "
            "choose another --out (the demo never replaces folders it did not create)"
        )
    (out / MARKER).write_text("made by trawl demo; its corpus/, index/ and run/ are replaced on the next demo\n")


def _replaceable(path: Path, marker: str, kind: str) -> None:
    """The demo deletes its own sub-folder ``path`` only when trawl made it (empty, or holding
    ``marker``), as ``--force`` does: a folder put there by someone else is a one-line error."""
    from corpora.storage import check_output_dir

    check_output_dir(path, marker=marker, kind=kind, overwrite=True, error=TrawlError)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"trawl demo: {msg}", file=sys.stderr, flush=True)


def _corpus(out: Path, corpus_mb: float, quiet: bool) -> Path:
    from corpora import CorpusError, build_offline_corpus, open_corpus

    path = out / "corpus"
    if path.exists():
        try:
            c = open_corpus(path)
            if c.manifest.get("max_bytes") == int(corpus_mb * (1 << 20)):
                _say(f"[1/6] corpus: reusing {path} ({c.manifest['documents']} documents)", quiet)
                return path
        except CorpusError:
            pass
        _replaceable(path, "corpus.json", "corpus")
        shutil.rmtree(path)
    _say(f"[1/6] corpus: collecting up to {corpus_mb:g} MiB of text shipped on this machine", quiet)
    c = build_offline_corpus(path, max_bytes=int(corpus_mb * (1 << 20)), progress=not quiet)
    m = c.manifest
    _say(f"      {m['documents']} documents, {m['text_bytes'] / 1e6:.1f} MB -> {path}", quiet)
    return path


def _index(out: Path, corpus_dir: Path, quiet: bool) -> Path:
    from suffix_index import IndexFormatError, SuffixIndex, build_index
    from corpora.shards import sha256_file

    path = out / "index"
    corpus_sha = sha256_file(corpus_dir / "corpus.json")
    if path.exists():
        try:
            idx = SuffixIndex.open(path)
            if idx.manifest.get("build", {}).get("corpus_manifest_sha256") == corpus_sha:
                _say(f"[2/6] index: reusing {path}", quiet)
                return path
        except IndexFormatError:
            pass
        _replaceable(path, "manifest.json", "index")
        shutil.rmtree(path)
    _say("[2/6] index: building the byte-level suffix array", quiet)
    t0 = time.perf_counter()
    build_index(corpus_dir, path, jobs=2, progress=not quiet)
    _say(f"      built in {time.perf_counter() - t0:.1f} s -> {path}", quiet)
    return path


# the embedded default served by the campaign pipeline's served_target (a checked [target] table)
_DEMO_TARGET = {"backend": "openai", "embedded": True, "model_path": None, "token_info": "auto"}


def run_demo(
    out_dir: str | Path = "trawl-out/demo",
    *,
    minutes: float = 3.0,
    corpus_mb: float = 32.0,
    min_tokens: int = 10,
    resume: bool = False,
    quiet: bool = False,
) -> DemoResult:
    """Run the six steps in ``out_dir`` (see the module docstring); raises TrawlError on bad
    arguments or a folder the demo did not make."""
    from extractor.campaigns.pipeline import match_run, report_run
    from extractor.serving.embedded import MODEL_ALIAS

    from corpora.hygiene import number_problem

    for flag, v, top in (("--minutes", minutes, 7 * 24 * 60.0), ("--corpus-mb", corpus_mb, float(1 << 20))):
        problem = number_problem(flag, v, above=0, maximum=top)   # nan would pass `v <= 0`
        if problem:
            raise TrawlError(problem)
    if min_tokens < 1:
        raise TrawlError(f"--min-tokens must be >= 1, got {min_tokens}")
    out = Path(out_dir)
    _claim(out)
    corpus_dir = _corpus(out, corpus_mb, quiet)
    index_dir = _index(out, corpus_dir, quiet)

    run_dir = out / "run"
    if run_dir.exists() and not resume:
        _replaceable(run_dir, "config.json", "run")
        shutil.rmtree(run_dir)
    _sample(out, run_dir, dict(_DEMO_TARGET, model=MODEL_ALIAS), corpus_dir, minutes, resume, quiet)

    _say(f"[5/6] match: maximal verbatim spans of >= {min_tokens} model tokens", quiet)
    r = match_run(run_dir, index_dir, min_tokens=min_tokens, progress=not quiet)
    _say(f"      {r['spans']} span(s) in {r['generations']} generation(s)", quiet)

    _say("[6/6] report", quiet)
    metrics, paths, _ = report_run(run_dir, index=str(index_dir))
    return DemoResult(out, corpus_dir, index_dir, run_dir, Path(paths.html), Path(paths.md), Path(paths.json), metrics)


def _sample(out: Path, run_dir: Path, target: dict, corpus_dir: Path, minutes: float, resume: bool,
            quiet: bool) -> None:
    """Steps 3-4: serve the embedded model, run the discoverable pass then divergence for ``minutes``."""
    from extractor.attacks import AttackSpec
    from extractor.sampling.budget import Budget, Pricing
    from extractor.campaigns.pipeline import served_target
    from extractor.sampling import run_attacks

    _say("[3/6] model: starting the embedded Gemma-3-270m on the llama.cpp server", quiet)
    with served_target(target, log_path=out / "llama-server.log") as served:
        _say(f"      serving {served['model']} at {served['endpoint']}", quiet)
        _say(f"[4/6] attacks: discoverable pass, then divergence, for {minutes:g} min", quiet)
        summary = run_attacks(
            str(run_dir),
            **served,   # the model file's tokenizer gives boundaries in-process: no tokenize requests
            attacks=[
                AttackSpec("discoverable", {**DEMO_DISCOVERABLE, "corpus": str(corpus_dir),
                                             "documents": max(4, round(8 * minutes))}),
                AttackSpec("divergence", dict(DEMO_DIVERGENCE)),
            ],
            budget=Budget(max_seconds=minutes * 60.0),
            # What an hour of this 2-core CPU costs on a cloud (about a small VM),
            # so that the cost figures are concrete; set your own price with `trawl sample`.
            pricing=Pricing(gpu_hourly_usd=0.10),
            concurrency=2,
            resume=resume,
            progress=not quiet,
        )
    _say(f"      {summary.finished} generations ({summary.status}"
         + (f": {summary.stop_reason}" if summary.stop_reason else "") + ")", quiet)
    _say(f"      no chat pass: {CHAT_NOTE}", quiet)
