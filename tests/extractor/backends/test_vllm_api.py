"""The ``openai`` backend against a server that answers like vLLM's OpenAI API.

Part 1 (always runs): a small in-test HTTP server with vLLM's surface (``/version``,
``/v1/completions`` with ``n``, prompt lists, ``seed``, ``logprobs``, the sampling
extensions, ``/tokenize`` and ``/detokenize``) that records every payload: the backend
must detect vLLM, send the audit-neutral sampling fields explicitly (so the server's
``generation_config`` defaults cannot apply), keep what the attack set, and record the
effective settings in ``run.json``.

Part 2 (runs when vLLM is importable, e.g. ``/work/vllm-venv``; skipped otherwise): the
same checks against the real vLLM server on SmolLM2-135M (see tests/extractor/serving/test_vllm_engine.py).
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


from draw_server import vocab_detokenize, vocab_tokenize
from extractor.backends import make_backend
from extractor.backends.probe import VLLM_NEUTRAL

VOCAB = [" the", " of", " and", " poem", " data", " é", "\n", " x", ","]


class FakeVLLM:
    """vLLM-like API on 127.0.0.1; one token per vocabulary word, ids = VOCAB index + 10,
    characters of prompts tokenized as ord(c) + 1000."""

    def __init__(self, version: str = "0.32.0", decay: bool = False):
        self.version = version
        self.decay = decay  # behaves as if trawl's TemperatureDecay logits processor were loaded
        self.payloads: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/version" and outer.version:
                    return self._send(200, {"version": outer.version})
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": "m", "owned_by": "vllm"}]})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/completions":
                    outer.payloads.append(data)
                    spec = (data.get("vllm_xargs") or {}).get("trawl_temperature_decay")
                    if outer.decay and spec is not None and spec[0] <= 0:
                        return self._send(400, {"error": {"message": "trawl_temperature_decay: start and end "
                                                                     "must be > 0", "code": 400}})
                    return self._send(200, outer.complete(data))
                if self.path == "/tokenize":
                    return self._send(200, {"tokens": outer.tokenize(data["prompt"]), "count": 0})
                if self.path == "/detokenize":
                    return self._send(200, {"prompt": outer.detokenize(data["tokens"])})
                self._send(404, {"detail": "Not Found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def tokenize(self, text):
        return vocab_tokenize(text, VOCAB)

    def detokenize(self, ids):
        return vocab_detokenize(ids, VOCAB)

    def complete(self, d):
        prompts = d["prompt"] if isinstance(d["prompt"], list) else [d["prompt"]]
        choices = []
        for p in prompts:
            for k in range(int(d.get("n", 1))):
                key = f"{p}|{d.get('seed')}|{k}|{d.get('temperature')}"
                if d.get("seed") is None:
                    key += str(len(self.payloads))
                h = hashlib.sha256(key.encode()).digest()
                toks = [VOCAB[h[j] % len(VOCAB)] for j in range(int(d.get("max_tokens", 16)))]
                c = {"index": len(choices), "text": "".join(toks), "finish_reason": "length"}
                if d.get("logprobs"):
                    c["logprobs"] = {"tokens": toks, "token_logprobs": [-1.0] * len(toks)}
                choices.append(c)
        return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": sum(
            int(d.get("max_tokens", 16)) for _ in choices)}}

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_probe_detects_vllm_and_records_neutral_defaults():
    with FakeVLLM() as srv:
        be = make_backend("openai", endpoint=srv.base_url, model="m", api_key_env=None)
        caps = be.probe(use_cache=False)
        assert caps.server == "vllm" and caps.server_version == "0.32.0"
        assert caps.n and caps.prompt_list and caps.seed and caps.top_k and caps.tokenize == "vllm"
        assert caps.sampling_defaults == VLLM_NEUTRAL
        assert "server" in caps.to_dict() and caps.to_dict()["sampling_defaults"]["top_p"] == 1.0


def test_requests_carry_neutral_fields_but_keep_the_attacks():
    with FakeVLLM() as srv:
        be = make_backend("openai", endpoint=srv.base_url, model="m", api_key_env=None)
        be.probe(use_cache=False)
        srv.payloads.clear()
        res = be.complete("Repeat", {"temperature": 0.7, "top_k": 40, "max_tokens": 5}, n=3, seed=7)
        assert len(res.choices) == 3
        p = srv.payloads[-1]
        assert p["temperature"] == 0.7 and p["top_k"] == 40 and p["n"] == 3 and p["seed"] == 7
        for k in ("top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            assert p[k] == VLLM_NEUTRAL[k], k
        be.complete(["a", "b"], {"temperature": 1.0, "top_p": 0.9, "max_tokens": 3})
        p = srv.payloads[-1]
        assert p["top_p"] == 0.9 and p["top_k"] == -1 and p["prompt"] == ["a", "b"]


def test_non_vllm_server_gets_payload_unchanged():
    with FakeVLLM(version="") as srv:  # no /version: not recognised as vLLM
        be = make_backend("openai", endpoint=srv.base_url, model="m", api_key_env=None)
        caps = be.probe(use_cache=False)
        assert caps.server is None and caps.sampling_defaults == {}
        srv.payloads.clear()
        be.complete("x", {"temperature": 1.0, "max_tokens": 2})
        assert "top_p" not in srv.payloads[-1] and "repetition_penalty" not in srv.payloads[-1]


def test_run_json_records_effective_sampling(tmp_path):
    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    with FakeVLLM() as srv:
        run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model="m", api_key_env=None,
                    attacks=[AttackSpec("unconditional", {"variants": ["top_k"], "samples": 4, "max_tokens": 8})],
                    progress=False, concurrency=2, log=lambda m: None)
        status = json.loads((tmp_path / "run" / "run.json").read_text())
        caps = status["capabilities"]
        assert caps["server"] == "vllm" and caps["sampling_defaults"]["repetition_penalty"] == 1.0
        gen = [p for p in srv.payloads if p["prompt"] == ""]
        assert gen and all(p["top_p"] == 1.0 and p["top_k"] == 40 and p["min_p"] == 0.0 for p in gen)


def test_ignore_eos_is_an_attack_setting_sent_only_when_given(tmp_path):
    """``ignore_eos`` (every attack takes it) reaches each request when set, and is absent otherwise;
    the attacks' resolved parameters (and so the run id) do not change when it is not given."""
    from extractor.attacks import AttackSpec, get_attack
    from extractor.sampling import run_attacks

    assert "ignore_eos" not in get_attack("divergence").resolve({"words": ["poem"]})
    assert get_attack("divergence").resolve({"ignore_eos": "true"})["ignore_eos"] is True
    with FakeVLLM() as srv:
        for flag, sub in ((True, "on"), (None, "off")):
            srv.payloads.clear()
            params = {"words": ["poem", "data"], "samples": 2, "repetitions": 3, "max_tokens": 4}
            if flag:
                params["ignore_eos"] = True
            s = run_attacks(str(tmp_path / sub), endpoint=srv.base_url, model="m", api_key_env=None,
                            attacks=[AttackSpec("divergence", params)], progress=False, concurrency=2,
                            log=lambda m: None)
            assert s.status == "finished" and s.finished == 4
            sent = [p for p in srv.payloads if "Repeat this word" in str(p["prompt"])]
            assert sent and all(p.get("ignore_eos") is flag for p in sent), sub
            caps = json.loads((tmp_path / sub / "run.json").read_text())["capabilities"]
            assert caps["ignore_eos"] is True


def _fake_text(prompt, seed, k, temperature, max_tokens):
    h = hashlib.sha256(f"{prompt}|{seed}|{k}|{temperature}".encode()).digest()
    return "".join(VOCAB[h[j] % len(VOCAB)] for j in range(max_tokens))


def _rows(run_dir):
    from extractor.sampling.run_folder import RunDir

    return sorted(RunDir(str(run_dir)).read_generations().to_pylist(), key=lambda r: r["request_id"])


def test_prompt_lists_with_n_store_each_sample_under_its_own_request_id(tmp_path):
    """Five prompts x three samples go out as ONE request (a prompt list of 5 with n=3) when the
    server honours both; every row holds exactly the sample the server made for its prompt and
    choice index (recomputed from the fake model), and the list's billed prompt tokens are split
    over the rows without losing any."""
    from extractor.attacks import AttackSpec
    from extractor.sampling import run_attacks

    words = ["poem", "data", "the", "of", "and"]
    with FakeVLLM() as srv:
        srv.payloads.clear()
        s = run_attacks(str(tmp_path / "run"), endpoint=srv.base_url, model="m", api_key_env=None,
                        attacks=[AttackSpec("divergence", {"words": words, "samples": 3, "repetitions": 2,
                                                           "max_tokens": 4, "form": "instruction"})],
                        progress=False, concurrency=2, log=lambda m: None)
        sent = [p for p in srv.payloads if "Repeat this word" in str(p["prompt"])]
    assert s.status == "finished" and s.finished == 15
    assert len(sent) == 1 and isinstance(sent[0]["prompt"], list) and len(sent[0]["prompt"]) == 5
    assert sent[0]["n"] == 3
    rows = _rows(tmp_path / "run")
    assert len(rows) == 15 and len({r["request_id"] for r in rows}) == 15
    seen = set()
    for r in rows:
        e = json.loads(r["extra"])
        assert e["prompt_list"] == 5 and e["n"] == 3 and e["prompt_tokens_estimated"] is True
        assert r["prompt"] == sent[0]["prompt"][e["prompt_index"]]
        assert r["seed"] == sent[0]["seed"]
        assert r["completion"] == _fake_text(r["prompt"], r["seed"], e["n_choice"], 1.0, 4)
        seen.add((e["prompt_index"], e["n_choice"]))
    assert seen == {(i, k) for i in range(5) for k in range(3)}
    # the fake server bills 5 prompt tokens per request: shares are integers that add up to it
    assert sum(r["prompt_tokens"] for r in rows) == 3 * 5 and all(r["prompt_tokens"] >= 0 for r in rows)


def test_resume_after_a_cap_cut_a_prompt_list_stores_what_an_uninterrupted_run_does(tmp_path):
    """A generation cap cuts a prompt-list request in the middle; the resumed run sends the same
    request again and keeps only the missing rows, so the union equals an uninterrupted run row for
    row (same request ids, same samples), with nothing stored twice."""
    from extractor.attacks import AttackSpec
    from extractor.sampling.budget import Budget
    from extractor.sampling import run_attacks

    spec = [AttackSpec("divergence", {"words": ["poem", "data", "the", "of", "and", "x"], "samples": 2,
                                      "repetitions": 2, "max_tokens": 5, "form": "instruction"})]
    kw = dict(endpoint="", model="m", api_key_env=None, attacks=spec, progress=False, concurrency=2,
              log=lambda m: None, max_prompts=4)
    with FakeVLLM() as srv:
        kw["endpoint"] = srv.base_url
        full = run_attacks(str(tmp_path / "full"), **kw)
        cut = run_attacks(str(tmp_path / "cut"), budget=Budget(max_generations=5), **kw)
        assert cut.status == "stopped" and cut.finished == 5
        again = run_attacks(str(tmp_path / "cut"), resume=True, **kw)
    assert full.finished == 12 and again.status == "finished" and again.finished == 12
    key = lambda r: (r["request_id"], r["prompt"], r["completion"], r["seed"])  # noqa: E731
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert len(b) == 12 and [key(r) for r in a] == [key(r) for r in b]


def test_exact_temperature_decay_through_the_server():
    from extractor.attacks import AttackSpec
    from extractor.attacks.base import PlanContext
    from extractor.attacks.unconditional import Unconditional

    with FakeVLLM(decay=True) as srv:
        be = make_backend("openai", endpoint=srv.base_url, model="m", api_key_env=None)
        caps = be.probe(use_cache=False)
        assert caps.temperature_decay
        params = Unconditional.resolve(AttackSpec("unconditional", {"variants": ["temperature_decay"],
                                                                    "samples": 1, "max_tokens": 30}).params)
        jobs = list(Unconditional().plan(params, PlanContext(run_id="r", backend=be)))
        assert len(jobs) == 1 and jobs[0].steps is None and jobs[0].extra["exact"] is True
        srv.payloads.clear()
        be.complete("x", jobs[0].params, seed=1)
        p = srv.payloads[-1]
        assert p["vllm_xargs"] == {"trawl_temperature_decay": [10.0, 1.0, 20]} and "temperature_decay" not in p
        assert p["temperature"] == 1.0 and p["max_tokens"] == 30
    with FakeVLLM() as srv:  # a vLLM without the processor: the HTTP approximation
        be = make_backend("openai", endpoint=srv.base_url, model="m", api_key_env=None)
        assert not be.probe(use_cache=False).temperature_decay
