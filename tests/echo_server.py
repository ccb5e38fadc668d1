"""A local OpenAI-compatible server that scores prompts by ``echo`` with known logprobs.

``EchoServer`` answers ``POST /v1/completions`` with ``echo: true`` the way llama-cpp-python's
server does: the prompt's tokens (:func:`echo_tokens`: each run of spaces joined to the next
word, punctuation alone), ``null`` for the first token and ``token_logprobs`` given by
:func:`known_logprob` (a function of the token's text only, so a test computes every signal by
hand), top logprobs of the token and one alternative, plus one generated token ``"!"``.
``usage.prompt_tokens`` counts the prompt's tokens. ``fail_after``: every echo request after that many
answers gets HTTP 500 (a server that dies mid-run); ``bad_body``: bytes sent instead of the answer;
``delay``: seconds each echo request waits before its answer (settable while serving: a slow server
gives a test time to kill its client mid-run). ``requests`` records every request body.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.draw_server import send_body

_TOKEN = re.compile(r"\s*[A-Za-z]+|\s*[0-9]|\s*[^\sA-Za-z0-9]|\s+$")


def echo_tokens(text: str) -> list[str]:
    toks = _TOKEN.findall(text)
    assert "".join(toks) == text, text
    return toks


def known_logprob(tok: str) -> float:
    """-(1 + len % 4 / 2) for words, -3 for anything else; lowercase words score higher (-0.5)."""
    w = tok.strip()
    if w.isalpha():
        return -0.5 if w.islower() else -(1 + (len(w) % 4) / 2)
    return -3.0


class EchoServer:
    def __init__(self, *, fail_after: int | None = None, bad_body: bytes | None = None, delay: float = 0.0):
        self.fail_after = fail_after
        self.delay = delay
        self.bad_body = bad_body
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def __enter__(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                send_body(self, 404, b'{"error": "not found"}')

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n))
                if self.path.rstrip("/") != "/v1/completions" or "prompt" not in req:
                    send_body(self, 404, b'{"error": "not found"}')
                    return
                with srv._lock:
                    srv.requests.append(req)
                    count = sum(1 for q in srv.requests if q.get("echo"))
                if srv.fail_after is not None and req.get("echo") and count > srv.fail_after:
                    send_body(self, 500, b'{"error": "down"}')
                    return
                if srv.delay and req.get("echo"):
                    time.sleep(srv.delay)
                if srv.bad_body is not None:
                    send_body(self, 200, srv.bad_body)
                    return
                prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
                choices = []
                ptoks = 0
                for i, p in enumerate(prompts):
                    toks = echo_tokens(p) + ["!"]
                    vals = [known_logprob(t) for t in toks]
                    vals[0] = None
                    tops = [None] + [{t: v, " alt": -4.0} for t, v in zip(toks[1:], vals[1:])]
                    choices.append({"index": i, "text": p + "!", "finish_reason": "length",
                                    "logprobs": {"tokens": toks, "token_logprobs": vals, "top_logprobs": tops,
                                                 "text_offset": []}})
                    ptoks += len(toks) - 1
                send_body(self, 200, json.dumps({"choices": choices, "usage": {"prompt_tokens": ptoks,
                                                                               "completion_tokens": len(prompts)}}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
