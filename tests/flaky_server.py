"""A real, deliberately unreliable OpenAI-compatible HTTP server on 127.0.0.1, for tests.

It runs in a thread (``with FlakyServer(...) as srv: srv.base_url``) and serves:

* ``POST /v1/completions``: a deterministic fake model. The completion for
  (prompt, seed, temperature, sample index) is a sequence of ``max_tokens``
  tokens drawn from a small vocabulary by SHA-256 (some multi-byte: ``é``,
  ``中文``, an emoji), so a test can recompute exactly what each request must
  have produced. Optional OpenAI-style ``logprobs`` (tokens, token_logprobs,
  text_offset), ``n``, and ``usage``.
* ``POST /extras/tokenize`` and ``/extras/detokenize`` (llama-cpp-python style,
  a BOS id 1 prepended), unless ``tokenize=False``.

Faults: each distinct completion request (keyed by prompt, seed, n) fails its
first ``k`` attempts, with k in 0..``max_failures`` and the fault kinds chosen
by hashing the key, so every request eventually succeeds within the client's
retry budget and the test is deterministic. Kinds: ``500``, ``502``, ``503``
(with Retry-After), ``429`` (with Retry-After), ``garbage`` (200 with invalid
JSON), ``bad_shape`` (200 with JSON but no choices), ``drop`` (connection closed
without an answer), ``stall`` (no answer until after the client's timeout),
``trickle`` (headers, then the body one byte at a time past the timeout); and, only
when named in ``faults``: ``echo_key`` (HTTP 500 whose error message echoes the
request's ``Authorization`` header so that its 200th character falls inside the key)
and ``huge`` (200 with a valid answer whose text is ``huge_bytes`` long). The
capability probe's prompts are never faulted. ``mutate(path, request, body) -> body``
rewrites every 200 answer (probe, completions, tokenize, detokenize, version) before it
is sent; ``srv.sent`` keeps (path, request, body sent) of each. ``version`` makes ``GET /version``
answer as vLLM does; ``port`` picks the port (default: a free one). ``delay`` adds latency to each
good answer (to make a run last long enough to be killed).

Every attempt is logged in ``srv.log`` as (monotonic time, key, outcome).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from draw_server import hash_tokens, send_body

VOCAB = [" the", " of", " and", " poem", " company", " data", " é", " 中文", " 🙂", "\n", " x", ",", " memorized",
         " training", " text", " model"]
PROBE_PROMPTS = ("The quick brown fox", "Once upon a time")
FAULTS = ("500", "502", "503", "429", "garbage", "bad_shape", "drop", "stall", "trickle")
_TOKEN_RE = re.compile(r"\s*\S+|\s+", re.S)


def fake_tokens(prompt: str, seed, temperature, sample: int, max_tokens: int) -> list[str]:
    return hash_tokens(f"{prompt}\x00{seed}\x00{temperature}\x00{sample}", VOCAB, max_tokens)


def expected_completion(prompt: str, seed, temperature, max_tokens: int, sample: int = 0) -> str:
    return "".join(fake_tokens(prompt, seed, temperature, sample, max_tokens))


class FlakyServer:
    model = "flaky-model"

    def __init__(self, *, faults=FAULTS, max_failures: int = 2, logprobs: bool = True, tokenize: bool = True,
                 support_n: bool = False, retry_after: str = "1", stall_s: float = 3.0, delay: float = 0.0,
                 require_key: str | None = None, version: str | None = None, port: int = 0,
                 mutate=None, huge_bytes: int = 8 << 20):
        self.faults = tuple(faults)
        self.max_failures = max_failures
        self.logprobs = logprobs
        self.tokenize = tokenize
        self.support_n = support_n
        self.retry_after = retry_after
        self.stall_s = stall_s
        self.delay = delay
        self.require_key = require_key
        self.version = version  # answer GET /version as vLLM does (vLLM detection)
        self.port = port
        self.mutate = mutate
        self.huge_bytes = huge_bytes
        self.sent: list[tuple[str, dict, bytes]] = []
        self.log: list[tuple[float, str, str]] = []
        self.attempts: dict[str, int] = {}
        self.auth_headers: set[str] = set()
        self._lock = threading.Lock()
        self._vocab: dict[str, int] = {}
        self._pieces: dict[int, str] = {}
        self._httpd = None
        self._thread = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        server = self

        class Handler(_Handler):
            srv = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- model ----------------------------------------------------------------------------
    def token_id(self, piece: str) -> int:
        with self._lock:
            i = self._vocab.get(piece)
            if i is None:
                i = len(self._vocab) + 10
                self._vocab[piece] = i
                self._pieces[i] = piece
            return i

    def fault_for(self, key: str) -> str | None:
        """The fault of this attempt of this request, or None (answer properly)."""
        with self._lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
        h = hashlib.sha256(key.encode()).digest()
        failures = h[0] % (self.max_failures + 1) if self.faults else 0
        if attempt < failures:
            return self.faults[h[1 + attempt] % len(self.faults)]
        return None

    def record(self, key: str, outcome: str) -> None:
        with self._lock:
            self.log.append((time.monotonic(), key, outcome))


class _Handler(BaseHTTPRequestHandler):
    srv: FlakyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        if status == 200 and self.srv.mutate is not None:
            body = self.srv.mutate(self.path, getattr(self, "req", None), body)
        if status == 200:
            with self.srv._lock:
                self.srv.sent.append((self.path, getattr(self, "req", None), body))
        send_body(self, status, body, headers)

    def _json(self, status: int, obj, headers=None):
        self._send(status, json.dumps(obj).encode(), headers)

    def do_GET(self):
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": self.srv.model}]})
        if self.path == "/version" and self.srv.version:
            return self._json(200, {"version": self.srv.version})
        self._json(404, {"detail": "Not Found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        auth = self.headers.get("Authorization")
        if auth:
            self.srv.auth_headers.add(auth)
        if self.srv.require_key and auth != "Bearer " + self.srv.require_key:
            return self._json(401, {"error": {"message": "invalid api key"}})
        try:
            req = self.req = json.loads(body)
        except ValueError:
            return self._json(400, {"error": {"message": "bad json"}})
        if self.path == "/v1/completions":
            return self._completions(req)
        if self.path == "/extras/tokenize" and self.srv.tokenize:
            text = req.get("input", "")
            return self._json(200, {"tokens": [1] + [self.srv.token_id(p) for p in _TOKEN_RE.findall(text)]})
        if self.path == "/extras/detokenize" and self.srv.tokenize:
            return self._json(200, {"text": "".join(self.srv._pieces.get(i, "") for i in req.get("tokens", []))})
        self._json(404, {"detail": "Not Found"})

    def _completions(self, req):
        srv = self.srv
        prompt = req.get("prompt", "")
        if isinstance(prompt, list):
            return self._json(500, {"error": {"message": "prompt lists are not supported"}})
        n = int(req.get("n", 1) or 1) if srv.support_n else 1
        seed = req.get("seed")
        temperature = req.get("temperature", 1.0)
        max_tokens = int(req.get("max_tokens", 16))
        key = json.dumps([prompt, seed, temperature, max_tokens, n])
        fault = None if prompt.startswith(PROBE_PROMPTS) else srv.fault_for(key)
        srv.record(key, fault or "ok")
        if fault in ("500", "502"):
            return self._json(int(fault), {"error": {"message": "internal error"}})
        if fault in ("503", "429"):
            return self._json(int(fault), {"error": {"message": "busy"}}, {"Retry-After": srv.retry_after})
        if fault == "garbage":
            return self._send(200, b'{"choices": [ {"text": "oops"')
        if fault == "echo_key":
            auth = self.headers.get("Authorization") or ""
            msg = "x" * (200 - len("invalid token ") - len(auth) // 2) + " invalid token " + auth + " rejected"
            return self._json(500, {"error": {"message": msg}})
        if fault == "bad_shape":
            return self._json(200, {"object": "error", "detail": "something"})
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "stall":
            time.sleep(srv.stall_s)
        choices = []
        total = 0
        for i in range(n):
            toks = fake_tokens(prompt, seed, temperature, i, max_tokens)
            text = "".join(toks)
            total += len(toks)
            ch = {"text": text, "index": i, "finish_reason": "length", "logprobs": None}
            if srv.logprobs and req.get("logprobs") is not None:
                offs, pos = [], len(prompt)
                for t in toks:
                    offs.append(pos)
                    pos += len(t)
                ch["logprobs"] = {"tokens": toks, "token_logprobs": [-0.5] * len(toks), "text_offset": offs,
                                  "top_logprobs": None}
            choices.append(ch)
        out = {"id": "cmpl-x", "object": "text_completion", "model": srv.model, "choices": choices,
               "usage": {"prompt_tokens": len(_TOKEN_RE.findall(prompt)) + 1, "completion_tokens": total,
                         "total_tokens": total + len(_TOKEN_RE.findall(prompt)) + 1}}
        if fault == "huge":
            out["choices"][0]["text"] = "x" * srv.huge_bytes
            out["choices"][0]["logprobs"] = None
        if srv.delay:
            time.sleep(srv.delay)
        if fault == "trickle":
            body = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            deadline = time.monotonic() + srv.stall_s
            try:
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.1)
                    if time.monotonic() > deadline:
                        break
            except OSError:
                pass
            self.close_connection = True
            return
        self._json(200, out)
