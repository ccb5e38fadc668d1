"""`trawl sample` / `trawl attacks`: bad input gives one clear error line; Ctrl-C stops cleanly."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from extractor.cli import main
from flaky_server import FlakyServer
from sampler_helpers import stored_count, write_corpus
from repo import REPO, ROOT, ctrl_c_ready


ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "extractor.cli", *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _one_error_line(r, pattern):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("trawl: error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert pattern in lines[0], lines[0]
    return lines[0]


def _dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_one_line_each(tmp_path):
    base = ["sample", "--model", "m", "--out", str(tmp_path / "r"), "--no-progress", "--max-retries", "1"]
    _one_error_line(_cli(*base, "--endpoint", "http://127.0.0.1:1", "--attack", "nope"), "unknown attack 'nope'")
    _one_error_line(_cli(*base, "--endpoint", "http://127.0.0.1:1", "--attack", "divergence", "--param", "colour=red"),
                    "unknown parameter 'colour'")
    _one_error_line(_cli(*base, "--endpoint", f"http://127.0.0.1:{_dead_port()}", "--attack", "divergence"),
                    "cannot reach the model server")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    with FlakyServer(faults=()) as srv:
        _one_error_line(_cli(*base, "--endpoint", srv.base_url, "--attack", "prefix", "--param", f"source={bad}"),
                        "not UTF-8")
    with FlakyServer(faults=(), logprobs=False, tokenize=False) as srv:
        _one_error_line(_cli(*base, "--endpoint", srv.base_url, "--attack", "divergence"),
                        "returns no token information")
    r = _cli("attacks", "unconditional")
    assert r.returncode == 0 and "temperature_decay" in r.stdout and "approximat" in r.stdout


def test_sample_help_mentions_budget_and_key():
    r = _cli("sample", "--help")
    assert r.returncode == 0
    for flag in ("--max-dollars", "--gpu-hourly-usd", "--api-key-env", "--resume", "--param"):
        assert flag in r.stdout


def test_discoverable_np_sampling_on_a_corpus(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    with FlakyServer(faults=("500",), max_failures=1, support_n=True) as srv:
        rc = main(["sample", "--endpoint", srv.base_url, "--model", srv.model, "--out", str(tmp_path / "run"),
                   "--attack", "discoverable", "--param", f"corpus={corpus}", "--param", "documents=3",
                   "--param", "prefix_tokens=8", "--param", "suffix_tokens=6", "--param", "samples=4",
                   "--param", "temperature=1.0", "--param", "np_n=1,10", "--no-progress", "--json",
                   "--timeout", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    d = out["attacks"]["discoverable"]
    assert out["finished"] == 12 and d["documents"] == 3 and d["generations"] == 12
    assert set(d["np_extraction"]) == {"1", "10"}
    assert 0.0 <= d["np_extraction"]["1"] <= d["np_extraction"]["10"] <= 1.0


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    with FlakyServer(faults=(), delay=0.2) as srv:
        args = ["sample", "--endpoint", srv.base_url, "--model", srv.model, "--out", str(tmp_path / "run"),
                "--attack", "divergence", "--param", "words=a,b,c,d", "--param", "samples=5",
                "--param", "max_tokens=5", "--concurrency", "2", "--no-progress"]
        proc = subprocess.Popen([sys.executable, "-m", "extractor.cli", *args], env=ENV, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_ready)
        deadline = time.monotonic() + 60
        while not ((tmp_path / "run" / "generations").exists() and stored_count(tmp_path / "run") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
        st = json.loads((tmp_path / "run" / "run.json").read_text())
        assert st["status"] == "interrupted" and st["stop_reason"] == "interrupted" and 3 <= st["finished"] < 20
        r = _cli(*args, "--resume")
        assert r.returncode == 0, r.stderr
    st = json.loads((tmp_path / "run" / "run.json").read_text())
    assert st["status"] == "finished" and st["finished"] == 20


def test_cli_replicas(tmp_path, capsys):
    with FlakyServer(faults=()) as a, FlakyServer(faults=()) as b:
        rc = main(["sample", "--endpoint", a.base_url, "--endpoint", b.base_url, "--model", a.model,
                   "--out", str(tmp_path / "run"), "--attack", "divergence", "--param", "words=a,b,c",
                   "--param", "samples=4", "--param", "max_tokens=4", "--concurrency", "4", "--no-progress", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finished"] == 12


@pytest.mark.parametrize("flag,value,pattern", [
    ("--timeout", "0", "timeout must be a number of seconds > 0"),
    ("--timeout", "-1", "timeout must be a number of seconds > 0"),
    ("--timeout", "nan", "timeout must be a number of seconds > 0"),
    ("--concurrency", "0", "concurrency must be an integer from 1 to 4096"),
    ("--max-retries", "-1", "max_retries must be an integer >= 0"),
    ("--max-seconds", "-5", "budget max_seconds must be >= 0"),
    ("--max-dollars", "nan", "--max-dollars must be a finite number, got nan"),
    ("--price-input-per-mtok", "-1", "price input_per_mtok must be >= 0, got -1"),
])
def test_bad_settings_refused_before_anything_is_written(tmp_path, flag, value, pattern):
    with FlakyServer(faults=()) as srv:
        r = _cli("sample", "--endpoint", srv.base_url, "--model", srv.model, "--out", str(tmp_path / "r"),
                 "--no-progress", "--attack", "divergence", flag, value)
    _one_error_line(r, pattern)
    assert not (tmp_path / "r").exists()


def test_unset_api_key_variable_is_named_as_unset(tmp_path, monkeypatch):
    from extractor.errors import TrawlError
    from extractor.sampling import run_attacks

    monkeypatch.delenv("MYKEY", raising=False)
    with FlakyServer(faults=(), require_key="sk-x") as srv:
        with pytest.raises(TrawlError, match=r"HTTP 401.*\$MYKEY is not set") as ei:
            run_attacks(str(tmp_path / "r"), endpoint=srv.base_url, model=srv.model, attacks=["divergence"],
                        api_key_env="MYKEY", progress=False, max_retries=1)
        assert "check the API key" not in str(ei.value)
        monkeypatch.setenv("MYKEY", "sk-wrong")
        with pytest.raises(TrawlError, match=r"HTTP 401.*check the API key in \$MYKEY"):
            run_attacks(str(tmp_path / "r2"), endpoint=srv.base_url, model=srv.model, attacks=["divergence"],
                        api_key_env="MYKEY", progress=False, max_retries=1)


def test_help_states_defaults_and_drain(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prompt sampling; default: 0)" in text
    for flag in ("--max-generations", "--max-tokens", "--max-dollars", "--max-seconds"):
        after = text.split("budget (", 1)[1].split(flag + " ", 1)[1]
        assert "(default: no cap)" in after.split(" --max-", 1)[0], flag
    assert "USD per 1M prompt tokens (default: 0)" in text and "USD per 1M completion tokens (default: 0)" in text
    assert "requests in flight may finish, for up to the drain time (60 s)" in text


def test_backend_choice_is_checked_in_one_line(tmp_path):
    """--backend vllm takes no --endpoint; openai needs one; a missing vLLM is one clear line."""
    import importlib.util

    base = [sys.executable, "-m", "extractor.cli", "sample", "--model", "m", "--attack", "divergence",
            "--out", str(tmp_path / "r")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = [(base, "--endpoint URL is required"),
             (base + ["--backend", "vllm", "--endpoint", "http://127.0.0.1:9"], "drop --endpoint"),
             (base + ["--endpoint", "http://127.0.0.1:9", "--dtype", "float32"], "dtype is for the in-process vllm")]
    if importlib.util.find_spec("vllm") is None:
        cases.append((base + ["--backend", "vllm"], "backend vllm needs vLLM installed"))
    for cmd, message in cases:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("trawl: error: ") and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
