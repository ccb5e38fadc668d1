"""Where the heavy steps run: this machine (``local``) or a Ray cluster (``ray``).

One home for trawl's executors (``docs/ARCHITECTURE.md``). It lives in ``corpora``, the bottom of
the dependency order, because every package's heavy step uses it: ``corpora.ingest`` (input
files read in parallel), ``suffix_index.build`` (one task per shard), ``suffix_index.distributed``
(match actors, each owning a subset of the shards) and the campaigns' match step. **Ray is
imported here and nowhere else**; the steps see three calls:

* :meth:`Executor.map` — run ``fn(*args)`` for every ``args``, at most ``workers`` at a time, each
  task declaring the memory it needs; results in the order of the inputs. Locally: this process
  (``workers == 1``) or a spawn process pool. On Ray: one task each, ``memory=`` declared so the
  scheduler packs nodes, retried (``max_retries``) when its worker dies;
* :meth:`Executor.actors` (Ray only) — long-lived workers holding state (memory-mapped shards),
  restarted and their calls retried when their process dies;
* :meth:`Executor.get` — wait for calls made on actors.

Failures: an exception a task raises reaches the caller as itself (a ``CorpusError`` stays one
line); the cluster unreachable, lost, or unable to place a task is :class:`ExecutorError`, one line
that says the command can be re-run. A cluster lost mid-run is found by polling: every wait on Ray
returns each ``HEALTH_EVERY_S`` to check that the head (its GCS port) still accepts connections;
gone for ``LOST_AFTER_S`` it is the error line at once, not Ray's own minute-long wait ending the
process with its log line (and Ray's shutdown, which would hang on the dead head, is skipped) (every step writes under a temporary name and publishes once,
so nothing half-done is ever left under the output's name).

Configuration (:class:`ExecutorSpec`): ``--executor local|ray``, ``--ray-address`` (default: the
``RAY_ADDRESS`` environment variable, else a Ray started for the command and stopped after it),
``--ray-cpus`` (the CPUs of that local Ray), or a campaign's / sweep's ``[executor]`` table with
the keys ``kind``, ``address``, ``cpus``, ``workers``, ``retries``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from corpora.errors import ExecutorError
from corpora.quiet import quiet_stderr

KINDS = ("local", "ray")
DEFAULT_RETRIES = 3
# test hook (docs/CONTRACTS.md, "Executors"): with this variable naming a file that exists, the first
# task or actor call to rename it to NAME.fired kills its own process: a worker lost mid-build or
# mid-match, which Ray must retry
CRASH_ONCE_ENV = "TRAWL_RAY_CRASH_ONCE"
CRASH_STAGES = ("read", "write")
# test hook: with this variable naming a file, every task or actor call reaching a hook touches
# NAME.started and waits while NAME exists (at most STALL_MAX_S): the fault tests lose the cluster
# while a command is mid-run
STALL_ENV = "TRAWL_RAY_STALL"
STALL_MAX_S = 120
# a lost cluster: every wait on Ray polls (HEALTH_EVERY_S) and checks that the cluster's head (its
# GCS) still accepts connections; unreachable for LOST_AFTER_S is a lost cluster, one error line
# (Ray itself would wait 60 s, then end the process with its own log line, not trawl's)
HEALTH_EVERY_S = 1.0
LOST_AFTER_S = 8.0   # the ingest workers' two steps (corpora.ingest_workers)


@dataclass(frozen=True)
class ExecutorSpec:
    """What ``--executor``/``--ray-address``/``--ray-cpus`` or an ``[executor]`` table ask for."""

    kind: str = "local"
    address: str | None = None      # Ray: None = RAY_ADDRESS, else a local Ray for the command
    cpus: int | None = None         # a local Ray's CPUs (default: this machine's)
    workers: int | None = None      # tasks/actors at once (default: the cluster's CPUs)
    retries: int = DEFAULT_RETRIES  # a task's or actor call's retries when its worker dies


def spec_from_table(table: Any, where: str, error: type[Exception] = ExecutorError) -> ExecutorSpec:
    """An ``[executor]`` table of a campaign or sweep file as a spec; bad keys or values raise
    ``error`` with one line naming ``where`` (the file and table)."""
    if table is None:
        return ExecutorSpec()
    if not isinstance(table, dict):
        raise error(f"{where}: [executor] must be a table")
    known = {"kind", "address", "cpus", "workers", "retries"}
    extra = sorted(set(table) - known)
    if extra:
        raise error(f"{where}: [executor] has unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")
    kind = table.get("kind", "local")
    if kind not in KINDS:
        raise error(f"{where}: [executor] kind must be one of {', '.join(KINDS)}, got {kind!r}")
    address = table.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise error(f"{where}: [executor] address must be a non-empty string (a Ray address), got {address!r}")
    if address is not None and kind != "ray":
        raise error(f"{where}: [executor] address is for kind = \"ray\"")
    ints = {}
    for key, low in (("cpus", 1), ("workers", 1), ("retries", 0)):
        v = table.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low or v > 1_000_000:
            raise error(f"{where}: [executor] {key} must be a whole number from {low} to 1000000, got {v!r}")
        ints[key] = v
    return ExecutorSpec(kind=kind, address=address, cpus=ints.get("cpus"), workers=ints.get("workers"),
                        retries=ints.get("retries", DEFAULT_RETRIES))


def add_arguments(parser, *, local_jobs: bool = False) -> None:
    """``--executor``, ``--ray-address``, ``--ray-cpus`` on a command's parser."""
    parser.add_argument("--executor", choices=KINDS, default="local",
                        help="where the work runs: this machine, or a Ray cluster (pip install 'trawl[ray]') "
                             "(default: local)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="the Ray cluster to use with --executor ray (default: $RAY_ADDRESS, else a Ray "
                             "started for this command on this machine and stopped after it)")
    parser.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                        help="CPUs of the Ray started for this command, >= 1 (default: all of this machine's)")


def spec_from_args(args) -> ExecutorSpec:
    kind = getattr(args, "executor", "local") or "local"
    address = getattr(args, "ray_address", None)
    cpus = getattr(args, "ray_cpus", None)
    if kind != "ray" and (address is not None or cpus is not None):
        raise ExecutorError("--ray-address and --ray-cpus need --executor ray")
    if cpus is not None and (isinstance(cpus, bool) or cpus < 1):
        raise ExecutorError(f"--ray-cpus must be a whole number >= 1, got {cpus!r}")
    return ExecutorSpec(kind=kind, address=address, cpus=cpus)


def crash_once_hook(stage: str | None = None) -> None:
    """The fault-injection test hook (see ``CRASH_ONCE_ENV``); nothing unless that file exists.
    A file whose text names a stage (``read``, ``write``, ...) fires only at a hook of that stage;
    any other text fires at the first hook reached."""
    stall = os.environ.get(STALL_ENV)
    if stall:
        import time

        open(stall + ".started", "a").close()
        deadline = time.monotonic() + STALL_MAX_S
        while os.path.exists(stall) and time.monotonic() < deadline:
            time.sleep(0.1)
    path = os.environ.get(CRASH_ONCE_ENV)
    if not path:
        return
    try:
        want = open(path, encoding="utf-8").read().strip()
    except OSError:
        return
    if want in CRASH_STAGES and want != stage:
        return
    try:
        os.rename(path, path + ".fired")   # atomic: one caller wins
    except OSError:
        return
    os._exit(137)


def _call(fn, args):
    return fn(*args)


class LocalExecutor:
    """This machine: the tasks in this process (``workers == 1``) or in a pool of spawned processes."""

    kind = "local"

    def __init__(self, workers: int = 1):
        self.workers = self.cpus = max(1, int(workers))
        self.gpus = 0

    def map(self, fn: Callable, argses: Sequence[tuple], *, memory: Sequence[int] | None = None,
            on_done: Callable[[int, Any], None] | None = None) -> list:
        results: list = [None] * len(argses)
        if self.workers == 1 or len(argses) <= 1:
            for i, args in enumerate(argses):
                results[i] = fn(*args)
                if on_done:
                    on_done(i, results[i])
            return results
        # imported here, not with the module: every --help loads this module
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=min(self.workers, len(argses)), mp_context=get_context("spawn")) as pool:
            futs = {pool.submit(fn, *args): i for i, args in enumerate(argses)}
            for fut in as_completed(futs):
                i = futs[fut]
                results[i] = fut.result()
                if on_done:
                    on_done(i, results[i])
        return results

    def imap(self, fn: Callable, argses: Iterable[tuple], *, window: int | None = None) -> Iterator:
        """``fn(*args)`` for each ``args``, yielded in order (here: one after the other)."""
        for args in argses:
            yield fn(*args)

    def actors(self, cls: type, argses: Sequence[tuple], *, memory: Sequence[int] | None = None,
               concurrency: int = 1, num_cpus: float = 1, num_gpus: float = 0) -> list:
        """In-process stand-ins for actors (same calling convention: ``a.method.remote(...)``, then
        :meth:`get`); the calls run at once, in this process."""
        return [_LocalActor(cls(*args)) for args in argses]

    def get(self, refs):
        return refs

    def kill(self, actors) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LocalActor:
    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        method = getattr(self._obj, name)

        class _Method:
            @staticmethod
            def remote(*args, **kwargs):
                return method(*args, **kwargs)

        return _Method


class RayExecutor:
    """A Ray cluster: ``spec.address``, else ``RAY_ADDRESS``, else a Ray started here for the command.

    A Ray this process already initialised (``ray.init`` in a test or a notebook) is used as it is
    and left running; one this executor started is shut down by :meth:`close`.
    """

    kind = "ray"

    def __init__(self, spec: ExecutorSpec):
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'trawl[ray]' (or pip install 'ray>=2.40')") from None
        self.ray = ray
        self.spec = spec
        self.owned = False
        address = spec.address or os.environ.get("RAY_ADDRESS") or None
        self.where = f"Ray cluster at {address}" if address else "the local Ray"
        if not ray.is_initialized():
            # Ray's C++ core logs its errors to this process's stderr (a dying cluster: dozens of
            # lines); trawl reports them as one line. RAY_BACKEND_LOG_LEVEL set by the user wins
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            kw: dict[str, Any] = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                                      configure_logging=True)
            if address:
                _check_reachable(address, self.where)
                kw["address"] = address
            else:   # "local": a new Ray of its own, never a `ray start` cluster this machine happens to run
                kw["address"] = "local"
                kw["num_cpus"] = spec.cpus or os.cpu_count() or 1
                kw["object_store_memory"] = 256 << 20   # results are small: spans, manifest entries
            try:
                with quiet_stderr():   # the C++ core's line announcing its log level
                    ray.init(**kw)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"{self.where}: cannot connect ({_first_line(exc)}); start it (ray start "
                                    f"--head) or fix --ray-address / RAY_ADDRESS, then re-run the command") from None
            self.owned = True
        try:
            res = ray.cluster_resources()
            nodes = [n for n in ray.nodes() if n.get("Alive")]
        except Exception as exc:   # noqa: BLE001 - any failure here is the cluster's
            raise ExecutorError(f"{self.where}: lost ({_first_line(exc)}); re-run the command") from None
        self.lost = False
        self.gcs = _gcs_address(ray, address)
        self.cpus = max(1, int(res.get("CPU", 1)))
        self.gpus = int(res.get("GPU", 0))
        self.node_memory = max([int(n.get("Resources", {}).get("memory", 0)) for n in nodes] or [0])
        self.workers = spec.workers or self.cpus

    # ------------------------------------------------------------------ tasks
    def _check_memory(self, memory: int, what: str) -> None:
        if self.node_memory and memory > self.node_memory:
            raise ExecutorError(f"{what} needs {memory / 2**30:.1f} GiB of memory, the largest node of "
                                f"{self.where} offers {self.node_memory / 2**30:.1f} GiB; use smaller shards "
                                f"(trawl corpus ingest --shard-size) or bigger nodes")

    def map(self, fn: Callable, argses: Sequence[tuple], *, memory: Sequence[int] | None = None,
            on_done: Callable[[int, Any], None] | None = None) -> list:
        ray = self.ray
        remote = ray.remote(_call)
        refs = []
        for i, args in enumerate(argses):
            opts: dict[str, Any] = dict(num_cpus=1, max_retries=self.spec.retries, retry_exceptions=False)
            if memory is not None and memory[i]:
                self._check_memory(int(memory[i]), f"task {i}")
                opts["memory"] = int(memory[i])
            refs.append(remote.options(**opts).remote(fn, args))
        index = {r: i for i, r in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = self._wait(pending, 1)
                for r in done:
                    results[index[r]] = self.get(r)
                    if on_done:
                        on_done(index[r], results[index[r]])
        except BaseException:
            self._stop(pending)
            raise
        return results

    def _stop(self, refs) -> None:
        """Cancel tasks and wait (up to a minute) until they are gone, so that none still writes into
        a temporary folder the caller is about to remove. Nothing to do on a lost cluster."""
        if self.lost:
            return
        for r in refs:
            try:
                self.ray.cancel(r, force=True)
            except Exception:   # noqa: BLE001 - best effort: the cluster may be gone
                pass
        if refs:
            try:
                self.ray.wait(list(refs), num_returns=len(refs), timeout=60)
            except Exception:   # noqa: BLE001 - best effort
                pass

    def imap(self, fn: Callable, argses: Iterable[tuple], *, window: int | None = None) -> Iterator:
        """``fn(*args)`` for each ``args`` as Ray tasks, yielded in the order of the inputs, at most
        ``window`` (default: twice the workers) submitted and not yet yielded: memory stays bounded
        by the window whatever the number of inputs."""
        from collections import deque

        remote = self.ray.remote(_call).options(num_cpus=1, max_retries=self.spec.retries, retry_exceptions=False)
        window = max(1, window or 2 * self.workers)
        pending: deque = deque()
        it = iter(argses)
        try:
            for args in it:
                pending.append(remote.remote(fn, args))
                if len(pending) >= window:
                    yield self.get(pending.popleft())
            while pending:
                yield self.get(pending.popleft())
        finally:
            self._stop(list(pending))

    # ------------------------------------------------------------------ actors
    def actors(self, cls: type, argses: Sequence[tuple], *, memory: Sequence[int] | None = None,
               concurrency: int = 1, num_cpus: float = 1, num_gpus: float = 0) -> list:
        """One actor of ``cls`` per ``args``; restarted (its calls retried) when its process dies.
        ``num_cpus``, ``num_gpus``: what each holds while it lives (less than 1 CPU to place more
        actors than CPUs; a GPU each for the vLLM engines)."""
        remote = self.ray.remote(cls)
        out = []
        for i, args in enumerate(argses):
            opts: dict[str, Any] = dict(num_cpus=num_cpus, max_restarts=self.spec.retries, max_task_retries=self.spec.retries,
                                        max_concurrency=concurrency)
            if num_gpus:
                opts["num_gpus"] = num_gpus
            if memory is not None and memory[i]:
                self._check_memory(int(memory[i]), f"actor {i}")
                opts["memory"] = int(memory[i])
            out.append(remote.options(**opts).remote(*args))
        return out

    def _wait(self, refs: list, num_returns: int) -> tuple[list, list]:
        """``ray.wait`` for ``num_returns`` of ``refs``, checking the cluster's head every
        ``HEALTH_EVERY_S``: gone for ``LOST_AFTER_S`` raises :class:`ExecutorError` (see
        :meth:`_lose`) instead of Ray's minute-long wait and its own exit."""
        import time

        down_since = None
        while True:
            try:
                done, rest = self.ray.wait(refs, num_returns=num_returns, timeout=HEALTH_EVERY_S)
            except Exception as exc:   # noqa: BLE001 - the cluster's failure, translated by get()
                if _is_ray_error(exc) and not self._head_alive():
                    self._lose()
                raise
            if len(done) >= num_returns:
                return done, rest
            if self._head_alive():
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since >= LOST_AFTER_S:
                self._lose()

    def _head_gone(self, grace: float) -> bool:
        """The head unreachable at two checks in a row within ``grace`` seconds."""
        import time

        end, misses = time.monotonic() + grace, 0
        while True:
            misses = 0 if self._head_alive() else misses + 1
            if misses >= 2:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(HEALTH_EVERY_S / 2)

    def _head_alive(self) -> bool:
        return _reachable(self.gcs) if self.gcs else True

    def _lose(self):
        """The cluster is gone mid-run: one error line, and Ray left alone (its shutdown would wait
        for the dead head, then end the process with its own message)."""
        import atexit

        if not self.lost:
            self.lost = True
            try:
                atexit.unregister(self.ray.shutdown)
            except Exception:   # noqa: BLE001 - best effort
                pass
            # Ray's core worker, its head gone, crashes the interpreter's finalisation (SIGSEGV):
            # once the error line is out, the process ends with that error's exit status instead
            atexit.register(_exit_now, ExecutorError.exit_code)
        raise ExecutorError(f"{self.where}: lost mid-run (its head at {self.gcs} stopped answering for "
                            f"{LOST_AFTER_S:.0f} s); nothing was published: re-run the command once the "
                            f"cluster is back (or without --ray-address)")

    def get(self, refs):
        """``ray.get`` with the errors translated (see the module docstring)."""
        ray = self.ray
        from ray import exceptions as rex

        want = list(refs) if isinstance(refs, list) else [refs]
        if self.lost:
            self._lose()
        if want:
            self._wait(want, len(want))
        try:
            return ray.get(refs)
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (rex.RayError, ConnectionError) as exc:
            if self._head_gone(grace=3 * HEALTH_EVERY_S):
                self._lose()
            raise ExecutorError(f"{self.where}: a worker or the cluster was lost and retries ran out "
                                f"({type(exc).__name__}: {_first_line(exc)}); nothing was published: re-run "
                                f"the command") from None

    def kill(self, actors) -> None:
        if self.lost:
            return
        for a in actors:
            try:
                self.ray.kill(a)
            except Exception:   # noqa: BLE001 - best effort
                pass

    def close(self) -> None:
        if self.owned and not self.lost:
            self.owned = False
            try:
                self.ray.shutdown()
            except Exception:   # noqa: BLE001 - best effort
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_executor(spec: ExecutorSpec | None = None, *, local_workers: int = 1):
    """The executor a spec asks for (``local_workers``: a local executor's processes)."""
    spec = spec or ExecutorSpec()
    if spec.kind == "ray":
        return RayExecutor(spec)
    if spec.kind != "local":
        raise ExecutorError(f"unknown executor {spec.kind!r} (known: {', '.join(KINDS)})")
    return LocalExecutor(local_workers)


def _exit_now(code: int) -> None:
    import sys

    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:   # noqa: BLE001 - closed streams
            pass
    os._exit(code)


def _gcs_address(ray, address: str | None) -> str | None:
    """The ``host:port`` of the cluster's head (GCS), for the health checks; None if unknown."""
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:   # noqa: BLE001 - an older Ray: the address given, when it is host:port
        gcs = None
    if not gcs and address and ":" in address and "/" not in address:
        gcs = address
    return gcs or None


def _reachable(address: str, timeout: float = 2.0) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _is_ray_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("ray") or isinstance(exc, ConnectionError)


def _check_reachable(address: str, where: str, timeout: float = 5.0) -> None:
    """A ``host:port`` address must accept a TCP connection (``ray.init`` would wait minutes for a
    cluster that is gone); other forms (``auto``, ``ray://...``) are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(f"{where}: cannot connect ({exc.strerror or exc}); start the cluster (ray start "
                            f"--head) or fix --ray-address / RAY_ADDRESS, then re-run the command") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
