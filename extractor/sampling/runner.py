"""``run_attacks``: one sampler session on a run folder, from the attack specs to ``run.json``.

See :mod:`extractor.sampling` for the steps and guarantees; this module wires them:
settings, plan, run folder, backend, engine.
"""
from __future__ import annotations

from extractor.attacks import AttackSpec, PlanContext
from extractor.backends import Backend, make_backend
from corpora.storage import utcnow
from extractor.sampling.budget import Budget, Pricing, Usage
from extractor.sampling.engine import Engine
from extractor.errors import TrawlError
from extractor.sampling.plan import Grouping, chat_record, open_run, plan_config, plan_jobs, resolve_attacks
from extractor.sampling.rows import recount
from extractor.sampling.run_folder import FORMAT, FORMAT_VERSION, RunDir, RunLock
from extractor.sampling.settings import SamplerSettings
from extractor.sampling.summary import RunSummary


def run_attacks(run_dir: str, *, endpoint: str | list[str], model: str, attacks: list[AttackSpec],
                budget: Budget | None = None, pricing: Pricing | None = None, **settings) -> RunSummary:
    """Run ``attacks`` against the model server and store generations in ``run_dir``.

    ``settings`` are the fields of :class:`SamplerSettings` (``concurrency``, ``resume``,
    ``progress``, ``timeout``, ``run_id``, ``seed``, ``use_n``, ``max_prompts``, ``log``, ...);
    they are checked before anything is written.

    Returns a :class:`RunSummary` (also written to ``run_dir/run.json``). Raises
    :class:`extractor.errors.TrawlError` for bad input, an unreachable or unusable
    server, a folder holding another run (without ``resume``), or a resumed run
    whose attacks/model differ from the frozen config. ``KeyboardInterrupt`` stops
    cleanly (everything finished is stored; ``run.json`` says ``interrupted``) and
    is re-raised. Holds the run folder's lock (``RUN/.lock``) throughout: a second
    process on the same folder gets :class:`extractor.sampling.run_folder.RunLocked`
    (exit code 75) and writes nothing.

    ``tokenizer_file``: the GGUF file a llama.cpp server loaded; token boundaries are then
    computed in this process with that file's tokenizer (checked against the server's at the
    start; see extractor/backends/gguf_tokenizer.py) instead of one tokenize request per batch
    of completions on the server.
    """
    cfg = SamplerSettings(**settings)
    with RunLock(run_dir):
        return _run_locked(run_dir, endpoint, model, attacks, budget or Budget(), pricing or Pricing(), cfg)


def _run_locked(run_dir, endpoint, model, attacks, budget: Budget, pricing: Pricing,
                cfg: SamplerSettings) -> RunSummary:
    log = cfg.logger
    resolved = resolve_attacks(attacks)
    rd = RunDir(run_dir, flush_rows=cfg.flush_rows, flush_seconds=cfg.flush_seconds)
    run_id, seed_scheme, created = open_run(rd, plan_config(model, resolved, cfg.seed), cfg)

    engine_box: list = []  # the replica pool logs through the engine (above the progress bar) once it exists
    be = _open_backend(endpoint, model, cfg, lambda msg: (engine_box[0].log if engine_box else log)(msg))
    caps = be.probe()
    be.retries = 0
    if not created:   # a resumed run speaks the API it was planned for (api auto may resolve otherwise)
        frozen_api = rd.load_config().get("api", "completions")
        if frozen_api != caps.api:
            raise TrawlError(f"{rd.path}: the run was sampled through the {frozen_api} API and the server now "
                             f"answers through {caps.api}; resume with --api {frozen_api}")

    # plan before anything is written: a planning error leaves no half-made run
    ctx = PlanContext(run_id=run_id, backend=be, seed=cfg.seed, log=log)
    all_jobs = plan_jobs(resolved, ctx, caps, be.endpoint, seed_scheme)
    if created:
        rd.freeze_config({
            "format": FORMAT, "format_version": FORMAT_VERSION, "run_id": run_id, "model": model,
            "attacks": resolved, "seed": cfg.seed, "seed_scheme": seed_scheme, "backend": be.describe(),
            "budget": budget.to_dict(), "pricing": pricing.to_dict(), "concurrency": cfg.concurrency,
            "created_at": utcnow(precise=True), **({"api": "chat"} if caps.api == "chat" else {}),
        })
    done, prev, usage = _stored(rd, created)
    for note in rd.dropped:   # damaged journal rows: sampled again, and said so
        log(note)
    pending = [j for j in all_jobs if j.request_id not in done]

    engine = Engine(be, rd, resolved, usage, budget, pricing, run_id=run_id, model=model, grouping=Grouping.for_server(cfg, caps, seed_scheme),
                    concurrency=cfg.concurrency, progress=cfg.progress, planned=len(all_jobs),
                    drain_seconds=cfg.drain_seconds, max_consecutive_failures=cfg.failure_limit, log=log)
    engine_box.append(engine)
    _start_session(engine, be, caps, prev, created=created, done=len(done), skipped=len(all_jobs) - len(pending))
    if caps.api == "chat":   # the API, the template's identity and each distinct conversation as sent
        engine.status["chat"] = chat_record(all_jobs, caps)
        engine.rd.write_status(engine.status)

    if caps.tokenize == "llama_cpp" and cfg.concurrency > 8 * len(be.endpoints):
        log(f"the server looks like llama-cpp-python, which runs one request at a time; {cfg.concurrency} in "
            f"flight only queue there and can run into the {cfg.timeout:g} s timeout (try --concurrency 2-4)")
    interrupted = False
    crash: BaseException | None = None
    try:
        engine.run(engine.grouping.pending(all_jobs, done), len(pending))
    except KeyboardInterrupt:
        interrupted = True
        engine.stop_reason = "interrupted"
    except Exception as exc:  # noqa: BLE001 - recorded in run.json ("failed" with the error), then re-raised
        crash = exc
        engine.stop_reason = engine.stop_reason or "crashed"
        engine.fatal = engine.fatal or exc
    finally:
        be.interrupt()
        rd.close()

    summary = engine.finish(interrupted)
    if crash is None and not interrupted and engine.fatal is None:
        from extractor.attacks.discoverable_np import maybe_score
        maybe_score(run_dir, resolved, be, caps, cfg.tokenizer_file, log)
    if crash is not None:
        raise crash
    if interrupted:
        raise KeyboardInterrupt
    if engine.fatal is not None:
        raise engine.fatal
    return summary


def _open_backend(endpoint, model: str, cfg: SamplerSettings, pool_log) -> Backend:
    """The backend named by ``cfg.backend``; several endpoints get a replica pool logging through ``pool_log``."""
    extra = {"log": pool_log} if isinstance(endpoint, (list, tuple)) and len(endpoint) > 1 else {}
    if cfg.tokenizer_file:
        extra["tokenizer_file"] = cfg.tokenizer_file
    if cfg.api != "completions":   # every backend takes it (the in-process vllm one applies the template)
        extra["api"] = cfg.api
    if cfg.ray and cfg.backend == "vllm":   # one engine per Ray worker; the plan is the same
        extra["ray"] = dict(cfg.ray)
    if cfg.dtype != "auto":                  # backend vllm (SamplerSettings checks it)
        extra["engine_args"] = {"dtype": cfg.dtype}
    return make_backend(cfg.backend, endpoint=endpoint, model=model, api_key_env=cfg.api_key_env,
                        timeout=cfg.timeout, max_retries=cfg.max_retries, backoff_base=cfg.backoff_base,
                        backoff_max=cfg.backoff_max, pool_size=min(cfg.concurrency, 4),
                        token_info=cfg.token_info, **extra)


def _stored(rd: RunDir, created: bool) -> tuple[set[str], dict, Usage]:
    """The request ids already stored (after crash recovery), the last ``run.json`` and the usage so far."""
    done = rd.recover()
    prev = rd.load_status()
    usage = Usage(generations=len(done),
                  prompt_tokens=int(prev.get("prompt_tokens", 0)) if not created else 0,
                  completion_tokens=int(prev.get("completion_tokens", 0)) if not created else 0,
                  cost_usd=float(prev.get("cost_usd", 0.0)) if not created else 0.0)
    if done:
        # run.json may lag behind the stored rows after a crash: recount from the rows themselves
        recount(rd, usage)
    return done, prev, usage


def _start_session(engine: Engine, be, caps, prev: dict, *, created: bool, done: int, skipped: int) -> None:
    """``run.json`` at the start of a session: the run's state and a new entry in ``sessions``."""
    usage = engine.usage
    status = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "run_id": engine.run_id, "status": "running",
        "stopped_early": False, "stop_reason": None, "planned": engine.planned, "finished": done,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd, "endpoint": be.endpoint, "endpoints": list(be.endpoints), "model": engine.model,
        "capabilities": caps.to_dict(), "sessions": list(prev.get("sessions", [])),
        "updated_at": utcnow(precise=True),
    }
    session = {"started_at": utcnow(precise=True), "resumed": not created, "skipped_done": skipped}
    status["sessions"].append(session)
    engine.status = status
    engine.session = session
    engine.rd.write_status(status)
