"""Running a campaign: four steps with one job each, and the one runner that owns ``campaign.json``.

``trawl run campaign.toml`` = :func:`~extractor.campaigns.config.load_campaign`, then
:func:`run_campaign`, whose :class:`CampaignRunner` runs the steps in order:

1. ``sample``  (:class:`SampleStep`) - the attacks against the target
   (:func:`extractor.sampling.run_attacks`, always with ``resume=True``) while
   :func:`served_target` serves it: an ``embedded = true`` target starts the embedded
   llama.cpp server for this step only; a ``backend = "vllm"`` target runs vLLM's
   engine in this process (:mod:`extractor.backends.vllm_offline`);
2. ``match``   (:class:`MatchStep`) - every maximal verbatim span of >= ``index.min_tokens``
   tokens (:func:`match_run`) -> ``run/matches.parquet``;
3. ``report``  (:class:`ReportStep`) - metrics, release gates and report files
   (:func:`report_run`) -> ``report/``;
4. ``history`` (:class:`HistoryStep`) - the metrics appended to the ledger
   (:mod:`extractor.campaigns.ledger`).

A step gets a :class:`CampaignContext` and returns the JSON-able result recorded in
``campaign.json``; it never touches that file. The report step leaves its metrics in
the context, so the campaign summary and the history step use them from memory
(only a resumed campaign whose report step ran in an earlier session reads
``report/metrics.json``). The release gates are evaluated by one function,
:func:`gates_crossed`: on fresh metrics by the report step (before a report is
written, so a gate naming an unknown metric fails the step), on the stored metrics
by the runner when a finished campaign is skipped.

:func:`served_target`, :func:`match_run` and :func:`report_run` are also the demo's
steps (:mod:`extractor.campaigns.demo`).

The campaign folder::

    OUT/
      campaign.toml     frozen copy of the resolved configuration (absolute paths)
      campaign.json     status, rewritten atomically after every step
      run/              the sampler's run folder (config.json, generations/, run.json, matches.parquet)
      report/           report.html, report.md, metrics.json
      llama-server.log  (embedded targets)

A re-run reads ``campaign.json``, skips the finished steps and resumes the first
unfinished one (the sampler resumes its run folder: nothing finished is redone or
stored twice). A finished campaign is not run again unless ``rerun=True``, which
moves the old folder aside (``OUT.old-<date>``) and starts afresh. Two processes
never run one campaign folder at once (:class:`CampaignLocked`, exit code 75).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from corpora.hygiene import visible
from corpora.storage import FolderLock, FolderLocked, first_line, is_locked, utcnow, utcnow_compact, write_text_atomic
from extractor.campaigns.config import Campaign, dump_toml
from extractor.errors import TrawlError

FORMAT = "trawl-campaign"
FORMAT_VERSION = 1
GATE_EXIT_CODE = 3
# the figures of the report copied into campaign.json's "metrics" (and printed by `trawl run`)
SUMMARY_KEYS = ("generations", "generated_tokens", "memorized_token_fraction", "memorized_generation_fraction",
                "unique_memorized_windows", "longest_run_tokens", "total_cost_usd")


# ============================================================================ steps shared with the demo

@contextmanager
def served_target(target: dict, *, log_path: Path, on_start: Callable[[], None] | None = None) -> Iterator[dict]:
    """Serve a checked ``[target]`` table for the duration of the block; yields the keywords of
    :func:`extractor.sampling.run_attacks` that reach it: ``endpoint``, ``model``, ``api_key_env``,
    ``backend``, ``tokenizer_file`` (and ``dtype`` for ``backend = "vllm"``).

    * ``backend = "vllm"``: vLLM's engine in this process; engines of other models are shut down
      first (one model's memory at a time), one already running this model is reused;
    * ``embedded = true``: the embedded llama.cpp server (``on_start`` is called just before it
      starts; its log goes to ``log_path``), stopped when the block ends, even on an error;
      with ``token_info = "auto"`` token boundaries come from the model file, in this process;
    * otherwise: the endpoints as given (several: the sampler's replica pool), no process started.
    """
    t = target
    if t["backend"] == "vllm":
        from extractor.backends.vllm_offline import shutdown_engines

        load = t["model_path"] or t["model"]
        shutdown_engines(keep=load)
        yield {"endpoint": f"vllm://{load}", "model": load, "api_key_env": None, "backend": "vllm",
               "tokenizer_file": None, "dtype": t.get("dtype", "auto")}
    elif t["embedded"]:
        from extractor.serving.embedded import EmbeddedServer

        if on_start is not None:
            on_start()
        with EmbeddedServer(t["model_path"], alias=t["model"], log_path=log_path) as srv:
            tok = str(srv.model_path) if t["token_info"] == "auto" else None
            yield {"endpoint": srv.base_url, "model": srv.model, "api_key_env": None, "backend": "openai",
                   "tokenizer_file": tok}
    else:
        eps = t["endpoints"]
        yield {"endpoint": eps if len(eps) > 1 else eps[0], "model": t["model"], "api_key_env": t["api_key_env"],
               "backend": "openai", "tokenizer_file": None}


def _index_folder(path: str) -> str:
    """The index folder the report reads documents from: the path, or for a URL this node's checked
    copy (fetched by the match step; corpora.stores)."""
    from corpora.locations import is_url

    if not is_url(path):
        return path
    from suffix_index.manifest import local_index

    return str(local_index(path))


def match_run(run_dir: Path, index_path: str | os.PathLike, *, min_tokens: int, min_bytes: int | None = None,
              progress: bool = True, executor: dict | None = None) -> dict:
    """Every maximal verbatim span of >= ``min_tokens`` tokens of the run's generations in the index
    -> ``RUN/matches.parquet`` (replaced atomically); returns ``{"generations", "spans", "out"}``.
    ``executor``: the campaign's ``[executor]`` table; with ``kind = "ray"`` the index's shards are
    matched by Ray actors (:mod:`suffix_index.distributed`), with the same file as a result."""
    from suffix_index import SuffixIndex
    from suffix_index.matchfile import match_to_parquet

    if executor and executor.get("kind") == "ray":
        from corpora.executor import ExecutorSpec, open_executor
        from suffix_index.distributed import DistributedIndex

        with open_executor(ExecutorSpec(**executor)) as ex, DistributedIndex(index_path, ex) as idx:
            return match_to_parquet(idx, run_dir, run_dir / "matches.parquet", min_tokens=min_tokens,
                                    min_bytes=min_bytes, progress=progress)
    with SuffixIndex.open(index_path) as idx:
        return match_to_parquet(idx, run_dir, run_dir / "matches.parquet", min_tokens=min_tokens,
                                min_bytes=min_bytes, progress=progress)


def gates_crossed(fail_if: list[str], metrics: dict) -> list[str]:
    """The release gates (``--fail-if`` expressions) that hold on ``metrics``, each explained with its
    values. A gate naming a metric the report does not have raises ReportError."""
    from reports.gate import Gate

    gates = [Gate(e) for e in fail_if]
    for g in gates:
        g.check_names(metrics)
    return [g.explain(metrics) for g in gates if g.evaluate(metrics)]


def report_run(run_dir: Path, *, index: str, out_dir: Path | None = None, window_tokens: int = 50,
               redact: bool = False, fail_if: list[str] = ()) -> tuple[dict, object, list[str]]:
    """Compute the run's metrics, evaluate the gates on them (before writing anything), write
    report.html/.md/metrics.json to ``out_dir`` (default ``RUN/report``).

    Returns ``(metrics, paths, crossed)``: the metrics dict in memory (not re-read from disk),
    :class:`reports.render.ReportPaths`, the explanations of the gates that hold."""
    from reports import compute_metrics, write_report

    metrics = compute_metrics(run_dir, window_tokens=window_tokens, index=index)
    crossed = gates_crossed(fail_if, metrics)
    paths = write_report(run_dir, out_dir=out_dir, redact=redact, metrics=metrics)
    return metrics, paths, crossed


# ============================================================================ the campaign's steps

@dataclass
class CampaignContext:
    """What the steps of one campaign session share."""

    campaign: Campaign
    status: dict                             # campaign.json as the runner keeps it (steps only read it)
    progress: bool
    log: Callable[[str], None]
    metrics: dict | None = None              # the report step's metrics, this session

    @property
    def cfg(self) -> dict:
        return self.campaign.config

    @property
    def run_dir(self) -> Path:
        return self.campaign.out / "run"

    @property
    def report_dir(self) -> Path:
        return self.campaign.out / "report"

    def report_metrics(self) -> dict:
        """The report step's metrics: from memory, or from ``report/metrics.json`` when that step
        finished in an earlier session."""
        if self.metrics is None:
            self.metrics = read_metrics(self.report_dir / "metrics.json")
        return self.metrics


class SampleStep:
    """Run the attacks against the served target (resuming the run folder)."""

    name = "sample"

    def run(self, ctx: CampaignContext) -> dict:
        from extractor.attacks import AttackSpec
        from extractor.sampling.budget import Budget, Pricing
        from extractor.sampling import run_attacks

        cfg, t = ctx.cfg, ctx.cfg["target"]
        name = ctx.campaign.name
        specs = [AttackSpec(a["name"], dict(a["params"])) for a in cfg["attacks"]]
        budget, pricing = Budget(**cfg["budget"]), Pricing(**cfg["pricing"])
        with served_target(t, log_path=ctx.campaign.out / "llama-server.log",
                           on_start=lambda: ctx.log(f"{name}: starting the embedded model server")) as served:
            summary = run_attacks(
                str(ctx.run_dir), **served, attacks=specs, budget=budget, pricing=pricing,
                concurrency=t["concurrency"], resume=True, progress=ctx.progress, timeout=t["timeout"],
                max_retries=t["max_retries"], run_id=ctx.campaign.run_id, seed=cfg["campaign"]["seed"],
                token_info=t["token_info"], api=t.get("api", "completions"), log=ctx.log,
                ray=_ray_engines(cfg, served))
        info = {k: getattr(summary, k) for k in ("run_id", "status", "stop_reason", "planned", "finished",
                                                 "new_generations", "failed_requests", "completion_tokens",
                                                 "cost_usd")}
        if summary.status not in ("finished", "stopped"):
            raise TrawlError(f"sampling ended {summary.status} ({summary.stop_reason}): {summary.finished}/"
                             f"{summary.planned} generations stored; run again to resume")
        return info


def _ray_engines(cfg: dict, served: dict) -> dict | None:
    """``backend = "vllm"`` with ``[executor] kind = "ray"``: one engine per Ray worker
    (extractor/backends/vllm_ray.py); else None (one engine in this process)."""
    ex = cfg.get("executor") or {}
    return dict(ex) if served.get("backend") == "vllm" and ex.get("kind") == "ray" else None


class MatchStep:
    """Match the run's generations against the index."""

    name = "match"

    def run(self, ctx: CampaignContext) -> dict:
        ix = ctx.cfg["index"]
        r = match_run(ctx.run_dir, ix["path"], min_tokens=ix["min_tokens"], min_bytes=ix["min_bytes"],
                      progress=ctx.progress, executor=ctx.cfg.get("executor"))
        return {"spans": r["spans"], "generations": r["generations"], "matches": r["out"]}


class RankStep:
    """Score the generations with the model and write RUN/scores.parquet (``[rank]``; skipped without
    it): the report's rankings and the ``ranking_*`` gate figures. The target is reached as in
    sampling, except that an embedded model is scored in this process from its GGUF (llama.cpp,
    the full distribution) instead of through its server."""

    name = "rank"

    def run(self, ctx: CampaignContext) -> dict:
        rk = ctx.cfg.get("rank") or {}
        if not rk.get("enabled"):
            return {"skipped": True}
        from extractor.backends import make_backend
        from extractor.backends.llama_inprocess import LlamaScorer
        from extractor.sampling.budget import Budget
        from extractor.scoring import ScoreSettings, score_run

        t = ctx.cfg["target"]
        if rk["model_file"] or t["embedded"]:
            path = rk["model_file"] or t["model_path"]
            if path is None:
                from extractor.serving.embedded import default_model_path
                path = default_model_path()
            scorer = LlamaScorer(path, model=t["model"])
        elif t["backend"] == "vllm":
            scorer = make_backend("vllm", model=t["model_path"] or t["model"])
        else:
            eps = t["endpoints"]
            scorer = make_backend("openai", endpoint=eps if len(eps) > 1 else eps[0], model=t["model"],
                                  api_key_env=t["api_key_env"], timeout=t["timeout"], max_retries=t["max_retries"])
        reference = None
        if rk["reference_model_file"]:
            reference = LlamaScorer(rk["reference_model_file"])
        elif rk["reference_endpoint"]:
            reference = make_backend("openai", endpoint=rk["reference_endpoint"], model=rk["reference_model"],
                                     api_key_env=t["api_key_env"], timeout=t["timeout"], max_retries=t["max_retries"])
        inproc = scorer.capabilities.score == "in_process"
        st = ScoreSettings(k=rk["k"] / 100.0, window=rk["window"], top_k=rk["top_k"], batch=rk["batch"],
                           concurrency=1 if inproc else max(1, min(t["concurrency"], 16)), timeout=t["timeout"],
                           lowercase=rk["lowercase"], budget=Budget(max_seconds=rk["max_seconds"]))
        try:
            s = score_run(str(ctx.run_dir), scorer, reference=reference, settings=st)
        finally:
            for be in (scorer, reference):
                if be is not None:
                    be.close()
        if s.stopped:
            raise TrawlError(f"ranking stopped early ({s.stopped}): {s.rows} generations scored; run again to resume")
        return {"scores": s.path, "rows": s.rows, "new": s.new, "errors": s.errors,
                "exact_vocab_stats": s.exact_vocab_stats, "prompt_tokens": s.prompt_tokens}


class ReportStep:
    """Compute the metrics, judge the release gates, write the report; the metrics stay in the context."""

    name = "report"

    def run(self, ctx: CampaignContext) -> dict:
        r = ctx.cfg["report"]
        metrics, paths, crossed = report_run(ctx.run_dir, index=_index_folder(ctx.cfg["index"]["path"]), out_dir=ctx.report_dir,
                                             window_tokens=r["window_tokens"], redact=r["redact"],
                                             fail_if=r["fail_if"])
        ctx.metrics = metrics
        return {"html": str(paths.html), "md": str(paths.md), "json": str(paths.json), "gates_crossed": crossed}


class HistoryStep:
    """Append the campaign's rows to the ledger (unless ``history.record = false``)."""

    name = "history"

    def run(self, ctx: CampaignContext) -> dict:
        from extractor.campaigns.ledger import append_rows, ledger_rows

        h = ctx.cfg["history"]
        if not h["record"]:
            return {"recorded": 0, "ledger": None}
        rows = ledger_rows(ctx.cfg, ctx.report_metrics(), uid=ctx.status["uid"],
                           report_path=str(ctx.report_dir / "report.html"),
                           date=ctx.status["steps"]["report"].get("ended_at") or utcnow())
        return {"recorded": append_rows(h["ledger"], rows), "ledger": h["ledger"]}


CAMPAIGN_STEPS = (SampleStep(), MatchStep(), RankStep(), ReportStep(), HistoryStep())
STEPS = tuple(s.name for s in CAMPAIGN_STEPS)


# ============================================================================ the runner

@dataclass
class CampaignResult:
    name: str
    out: str
    status: str                  # finished, failed, interrupted, stopped
    skipped: bool = False        # already finished: nothing was run
    report_html: str | None = None
    gates_crossed: list[str] = field(default_factory=list)
    error: str | None = None
    steps_run: list[str] = field(default_factory=list)
    sample: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 finished; 3 finished with a release gate crossed; 2 not finished."""
        if self.status != "finished":
            return 2
        return GATE_EXIT_CODE if self.gates_crossed else 0

    def line(self) -> str:
        if self.status != "finished":
            return f"{self.name}: {self.status}: {self.error}"
        what = "already finished, skipped" if self.skipped else f"finished ({', '.join(self.steps_run)})"
        t = self.metrics
        fig = ""
        if t:
            f = t.get("memorized_token_fraction")
            fig = (f"; {t.get('generations', 0)} generations, memorized tokens "
                   f"{(f or 0) * 100:.4g}%, {t.get('unique_memorized_windows', 0)} unique windows")
        gates = f"; GATE CROSSED: {'; '.join(self.gates_crossed)}" if self.gates_crossed else ""
        return f"{self.name}: {what}{fig}{gates} -> {self.report_html}"


def read_metrics(path: Path) -> dict:
    """A report's ``metrics.json`` as an earlier session left it; damaged (not JSON, not the report's
    object, figures not numbers) is one line that says how to write it again."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        m, why = None, first_line(exc)[:120]
    else:
        why = "not a trawl report's metrics"
    if isinstance(m, dict) and isinstance(m.get("metrics"), dict) and isinstance(m.get("per_attack", {}), dict) \
            and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                    for v in m["metrics"].values()) \
            and all(isinstance(v, dict) for v in m.get("per_attack", {}).values()) \
            and isinstance(m.get("parameters", {}), dict) and isinstance(m.get("run", {}), dict):
        return m
    raise TrawlError(f"{path}: damaged report metrics ({why}); write the report again with 'trawl run --rerun' "
                     f"or 'trawl report'")


def read_status(out: Path) -> dict | None:
    """The campaign folder's ``campaign.json`` (None when there is none); a corrupt one is a TrawlError."""
    p = Path(out) / "campaign.json"
    if not p.exists():
        return None
    try:
        st = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise TrawlError(f"{p}: unreadable campaign status ({first_line(exc)[:120]}); move the folder away to "
                         f"start afresh") from None
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise TrawlError(f"{p}: not a trawl campaign status file")
    problem = _status_problem(st)
    if problem:
        raise TrawlError(f"{p}: damaged campaign status ({problem}); rerun it afresh (--rerun) or move the folder "
                         f"away")
    return st


def _status_problem(st: dict) -> str | None:
    """What in a campaign.json trawl's runner could not use (a key of the wrong type), or None."""
    def kind(v, t):
        return isinstance(v, t) and not (t is int and isinstance(v, bool))

    for key, t in (("uid", str), ("status", str), ("identity_sha256", str), ("steps", dict), ("sessions", list)):
        if not kind(st.get(key), t):
            return f"{key!r} is {type(st.get(key)).__name__}, not {t.__name__}"
    if not all(isinstance(x, dict) for x in st["sessions"]):
        return "'sessions' holds something that is not an object"
    if "metrics" in st and not isinstance(st["metrics"], dict):
        return "'metrics' is not an object"
    for name in STEPS:
        rec = st["steps"].get(name)
        if not isinstance(rec, dict) or not isinstance(rec.get("status"), str):
            return f"'steps.{name}' has no status"
        if "result" in rec and not isinstance(rec["result"], (dict, type(None))):
            return f"'steps.{name}.result' is not an object"
        res = rec.get("result") or {}
        if "gates_crossed" in res and not (isinstance(res["gates_crossed"], list)
                                           and all(isinstance(g, str) for g in res["gates_crossed"])):
            return f"'steps.{name}.result.gates_crossed' is not a list of texts"
        if "html" in res and not isinstance(res["html"], (str, type(None))):
            return f"'steps.{name}.result.html' is not a text"
    if st["status"] == "finished" and not isinstance((st["steps"]["report"].get("result") or {}).get("gates_crossed"),
                                                     list):
        return "a finished campaign without its report's gates"
    return None


class CampaignRunner:
    """Runs the steps of one campaign in order and owns its bookkeeping: ``campaign.json`` (written
    atomically before and after every step), resuming at the first unfinished step, skipping a
    finished campaign, the campaign summary and the gate verdict of the result."""

    def __init__(self, c: Campaign, *, progress: bool, log: Callable[[str], None], steps=CAMPAIGN_STEPS):
        self.c = c
        self.out = c.out
        self.steps = steps
        self.ctx = CampaignContext(c, {}, progress, log)

    @property
    def status(self) -> dict:
        return self.ctx.status

    def save(self) -> None:
        self.status["updated_at"] = utcnow()
        write_text_atomic(self.out / "campaign.json", json.dumps(self.status, indent=1, ensure_ascii=False) + "\n")

    def _open_status(self) -> dict:
        """campaign.json as found, or a new one; a folder of another campaign is refused."""
        c = self.c
        st = read_status(self.out)
        if st is None:
            if self.out.exists() and any(self.out.iterdir()):
                raise TrawlError(f"{self.out} exists and is not a campaign folder; choose another campaign.out")
            self.out.mkdir(parents=True, exist_ok=True)
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": c.name, "uid": uuid.uuid4().hex,
                    "identity_sha256": c.identity_sha256, "run_id": c.run_id, "status": "new", "created_at": utcnow(),
                    "steps": {s.name: {"status": "pending"} for s in self.steps}, "sessions": []}
        if st.get("identity_sha256") != c.identity_sha256:
            raise TrawlError(f"campaign {c.name!r}: the configuration (model, version, backend, attacks, index, "
                             f"seed or window) differs from the one frozen in {self.out / 'campaign.toml'}; rerun it "
                             f"afresh (--rerun) or give it another campaign.out")
        return st

    def _stored_gates(self, rep: dict) -> list[str]:
        """The current ``report.fail_if`` gates on the stored metrics (the recorded verdict when they are
        unreadable)."""
        try:
            metrics = read_metrics(self.ctx.report_dir / "metrics.json")
        except TrawlError:
            return list(rep.get("gates_crossed", []))
        return gates_crossed(self.c.config["report"]["fail_if"], metrics)

    def _run_step(self, step, session: dict) -> dict:
        """Run one step, recording running/done/failed/interrupted in campaign.json; re-raises its error."""
        st = self.status
        rec = st["steps"][step.name]
        rec.update({"status": "running", "started_at": utcnow(), "error": None})
        self.save()
        try:
            out = step.run(self.ctx)
        except KeyboardInterrupt:
            rec.update({"status": "interrupted", "ended_at": utcnow()})
            st["status"] = "interrupted"
            self.save()
            raise
        except Exception as exc:
            from extractor.backends.http import scrub_secrets

            error = scrub_secrets(" ".join(f"{type(exc).__name__}: {exc}".split()), limit=1000)
            rec.update({"status": "failed", "ended_at": utcnow(), "error": error})
            st["status"] = "failed"
            session["ended_at"] = utcnow()
            self.save()
            raise
        rec.update({"status": "done", "ended_at": utcnow(), "result": out})
        if not (isinstance(out, dict) and out.get("skipped")):   # an optional step not asked for (rank)
            session["steps_run"].append(step.name)
        if step.name == "report":
            m = self.ctx.metrics["metrics"]
            st["metrics"] = {k: m.get(k) for k in SUMMARY_KEYS}
            st["report"] = out["html"]
        self.save()
        return out

    def _result(self, result: CampaignResult, *, gates: list[str]) -> CampaignResult:
        st = self.status
        result.report_html = st["steps"]["report"].get("result", {}).get("html")
        result.gates_crossed = gates
        result.sample = st["steps"]["sample"].get("result", {})
        result.metrics = st.get("metrics", {})
        return result

    def run(self, stop_after: str | None = None) -> CampaignResult:
        """Run the unfinished steps (none for a finished campaign); ``stop_after`` a step name: stop
        after it, leaving the campaign resumable (status "stopped")."""
        st = self.ctx.status = self._open_status()
        result = CampaignResult(self.c.name, str(self.out), "running")
        if st["status"] == "finished":
            result.status, result.skipped = "finished", True
            return self._result(result, gates=self._stored_gates(st["steps"]["report"].get("result", {})))
        write_text_atomic(self.out / "campaign.toml", dump_toml(self.c.config))
        session = {"started_at": utcnow(), "pid": os.getpid(), "steps_run": []}
        st["sessions"].append(session)
        st["status"] = "running"
        self.save()
        for step in self.steps:
            st["steps"].setdefault(step.name, {"status": "pending"})   # a campaign begun before the step existed
            if st["steps"][step.name].get("status") == "done":
                continue
            out = self._run_step(step, session)
            if not (isinstance(out, dict) and out.get("skipped")):
                result.steps_run.append(step.name)
            if stop_after == step.name:
                session["ended_at"] = utcnow()
                self.save()
                result.status = "stopped"
                return result
        st["status"] = "finished"
        st["finished_at"] = session["ended_at"] = utcnow()
        self.save()
        result.status = "finished"
        return self._result(result, gates=list(st["steps"]["report"]["result"]["gates_crossed"]))


def is_running(out: Path) -> bool:
    """True when a process holds the campaign folder's lock (the campaign is running now)."""
    return is_locked(Path(out).with_name(Path(out).name + ".lock"))


class CampaignLocked(TrawlError, FolderLocked):
    exit_code = 75  # EX_TEMPFAIL: the same campaign is running elsewhere; try again later


def run_campaign(c: Campaign, *, rerun: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None, stop_after: str | None = None) -> CampaignResult:
    """Run (or resume, or skip when finished) one campaign; see the module docstring.

    Raises TrawlError (and the other packages' user errors) when a step fails; the
    failure is recorded in ``campaign.json`` and the next call resumes that step.
    Two processes never run the same campaign folder at once: a non-blocking
    ``fcntl.flock`` on ``OUT.lock`` (next to the folder, so ``--rerun`` can move the
    folder) refuses the second with :class:`CampaignLocked` (exit code 75).
    """
    log = log or (lambda msg: print(f"trawl: {visible(msg)}", file=sys.stderr))   # no raw control characters
    out = c.out
    lock = FolderLock(out.with_name(out.name + ".lock"), busy=lambda holder: CampaignLocked(
        f"campaign {c.name!r} is already running in another process ({out}); nothing done"))
    with lock:
        if rerun and out.exists():
            _move_aside(c, log)
        return CampaignRunner(c, progress=progress, log=log).run(stop_after=stop_after)


def _move_aside(c: Campaign, log: Callable[[str], None]) -> None:
    """``--rerun``: the old campaign folder becomes ``OUT.old-<date>`` (never a folder of something else)."""
    out = c.out
    st = read_status(out) if (out / "campaign.json").exists() else None
    if st is None and any(out.iterdir()):
        raise TrawlError(f"{out} exists and is not a campaign folder; refusing to move it for --rerun")
    aside = out.with_name(f"{out.name}.old-{utcnow_compact()}")
    shutil.move(str(out), str(aside))
    log(f"{c.name}: previous campaign folder moved to {aside}")
