"""A local OpenAI-compatible server whose every sample is a known function of its draw.

``DrawServer`` answers like vLLM's OpenAI API (``/version``, ``/v1/models``,
``/v1/completions`` with prompt lists, ``n``, ``seed`` and ``logprobs``,
``/tokenize`` and ``/detokenize``) and has vLLM's sampling semantics:

* every prompt of a prompt list gets the request's parameters, seed included;
* choice ``k`` of a request with ``n`` choices and seed ``s`` is drawn with seed ``s + k``;
* without a seed, every choice is a fresh random draw;
* at temperature 0 the draw is greedy: the seed plays no part.

So the text of a choice is :func:`draw_text` of (prompt, sampling parameters, effective
seed) and nothing else: two stored samples with equal text are the same draw (or a hash
collision: with 256 tokens a 4-token sample has 2**32 possible texts; the draws are
seeded, so a test that passes once passes every time). Tests use it to check that trawl gives every sample its own draw.

Chat (``chat=True``): ``/v1/chat/completions`` too, with the same semantics: the reply of
choice ``k`` is :func:`chat_expected_text` of (messages, parameters, seed, k); its logprobs
(``logprobs: true``) carry each token's ``bytes`` unless ``chat_bytes=False`` (llama-cpp-python
gives ``null``); ``completions=False`` makes a chat-only server (``/v1/completions`` 404).

Faults (optional, deterministic per request body): ``faults=("500", "503", "stall")`` and
``max_failures``; a faulted attempt is answered with the status (503 with Retry-After 0),
or ``stall``: no answer until ``stall_s`` has passed. ``delay`` slows every good answer.
``payloads`` records every completion request as answered.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# 256 tokens (one per byte of the draw's hash): a 4-token sample has 2**32 possible texts, so texts
# of distinct draws collide with odds of about k**2 / 2**33 among k samples
VOCAB = [" the", " of", " and", " poem", " data", " é", "\n", " x", ",", " 中文", " memorized", " text",
         " model", " 🙂", " word", " one"] + [f" t{i:03d}" for i in range(240)]
# request fields that are not sampling parameters of one draw
_NOT_PARAMS = {"prompt", "messages", "n", "seed", "logprobs", "top_logprobs", "model", "stream", "echo", "user"}


def send_body(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
    """Answer a request with a JSON body (a client that hung up is not an error here)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except OSError:
        pass


def vocab_tokenize(text: str, vocab: list[str]) -> list[int]:
    """Greedy tokenization over ``vocab`` (id = index + 10); other characters are ord + 1000."""
    ids, i = [], 0
    while i < len(text):
        for k, w in enumerate(vocab):
            if text.startswith(w, i):
                ids.append(k + 10)
                i += len(w)
                break
        else:
            ids.append(ord(text[i]) + 1000)
            i += 1
    return ids


def vocab_detokenize(ids: list[int], vocab: list[str]) -> str:
    return "".join(vocab[i - 10] if 10 <= i < 10 + len(vocab) else chr(i - 1000) for i in ids)


def draw_text(prompt: str, params: dict, seed: int | None, max_tokens: int) -> list[str]:
    """The tokens of the draw (prompt, params, seed); ``seed`` is None for a greedy draw."""
    key = json.dumps([prompt, {k: v for k, v in params.items() if k not in _NOT_PARAMS}, seed], sort_keys=True)
    return hash_tokens(key, VOCAB, max_tokens)


def hash_tokens(key: str, vocab: list[str], max_tokens: int) -> list[str]:
    """``max_tokens`` tokens of ``vocab`` chosen by the SHA-256 stream of ``key`` (a fake model)."""
    h = hashlib.sha256(key.encode()).digest()
    out: list[str] = []
    while len(out) < max_tokens:
        for b in h:
            out.append(vocab[b % len(vocab)])
            if len(out) == max_tokens:
                break
        h = hashlib.sha256(h).digest()
    return out


def expected_text(prompt: str, params: dict, seed: int | None, choice: int) -> str:
    """What the server answers for choice ``choice`` of ``prompt`` under ``params`` and ``seed``."""
    greedy = float(params.get("temperature", 1.0)) == 0
    eff = None if greedy else seed + choice
    return "".join(draw_text(prompt, params, eff, int(params.get("max_tokens", 16))))


def chat_key(messages: list[dict]) -> str:
    """The conversation as the fake model sees it (canonical JSON)."""
    return json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chat_max_tokens(params: dict) -> int:
    return int(params.get("max_completion_tokens", params.get("max_tokens", 16)))


def chat_expected_text(messages: list[dict], params: dict, seed: int | None, choice: int) -> str:
    """The assistant reply of choice ``choice`` to ``messages`` under ``params`` and ``seed``."""
    greedy = float(params.get("temperature", 1.0)) == 0
    eff = None if greedy else seed + choice
    return "".join(draw_text(chat_key(messages), _chat_params(params), eff, chat_max_tokens(params)))


def _chat_params(params: dict) -> dict:
    """The sampling parameters of a chat draw (the max-tokens field under one name)."""
    out = {k: v for k, v in params.items() if k not in ("max_completion_tokens", "max_tokens")}
    out["max_tokens"] = chat_max_tokens(params)
    return out


class DrawServer:
    model = "draw-model"

    def __init__(self, *, faults: tuple = (), max_failures: int = 1, stall_s: float = 2.0, version: str = "0.32.0",
                 delay: float = 0.0, chat: bool = False, chat_bytes: bool = True, completions: bool = True,
                 mutate=None):
        self.chat, self.chat_bytes, self.completions = chat, chat_bytes, completions
        self.mutate = mutate   # mutate(path, request, body bytes) -> bytes: rewrites every chat answer (fuzz tests)
        self.faults, self.max_failures, self.stall_s, self.version = tuple(faults), max_failures, stall_s, version
        self.delay = delay  # seconds added to every good answer (a run that lasts long enough to be killed)
        self.payloads: list[dict] = []
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._random = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, obj, headers=None):
                send_body(self, code, json.dumps(obj).encode(), headers)

            def do_GET(self):
                if self.path == "/version" and outer.version:
                    return self._send(200, {"version": outer.version})
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": outer.model, "owned_by": "vllm"}]})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = json.loads(raw)
                if self.path == "/v1/chat/completions" and outer.chat:
                    fault = outer._fault(raw)
                    if fault == "stall":
                        time.sleep(outer.stall_s)
                    elif fault in ("500", "503"):
                        return self._send(int(fault), {"error": {"message": "injected"}}, {"Retry-After": "0"})
                    with outer._lock:
                        outer.payloads.append(data)
                    if outer.delay:
                        time.sleep(outer.delay)
                    body = json.dumps(outer.chat_complete(data)).encode()
                    if outer.mutate is not None:
                        body = outer.mutate(self.path, data, body)
                    return send_body(self, 200, body)
                if self.path == "/v1/completions" and outer.completions:
                    fault = outer._fault(raw)
                    if fault == "stall":
                        time.sleep(outer.stall_s)
                    elif fault in ("500", "503"):
                        return self._send(int(fault), {"error": {"message": "injected"}}, {"Retry-After": "0"})
                    with outer._lock:
                        outer.payloads.append(data)
                    if outer.delay:
                        time.sleep(outer.delay)
                    return self._send(200, outer.complete(data))
                if self.path == "/tokenize" and "messages" in data:
                    text = "".join(f"<{m['role']}>{m['content']}</s>" for m in data["messages"]) + "<assistant>"
                    return self._send(200, {"tokens": outer.tokenize(text), "count": 0})
                if self.path == "/tokenize":
                    return self._send(200, {"tokens": outer.tokenize(data["prompt"]), "count": 0})
                if self.path == "/detokenize":
                    return self._send(200, {"prompt": outer.detokenize(data["tokens"])})
                self._send(404, {"detail": "Not Found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _fault(self, raw: bytes) -> str | None:
        if not self.faults or b"The quick brown fox" in raw or b"Once upon a time" in raw:
            return None
        key = hashlib.sha256(raw).hexdigest()
        with self._lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
        h = bytes.fromhex(key)
        if attempt < h[0] % (self.max_failures + 1):
            return self.faults[h[1 + attempt] % len(self.faults)]
        return None

    # -- the model -------------------------------------------------------------------------
    @staticmethod
    def tokenize(text: str) -> list[int]:
        return vocab_tokenize(text, VOCAB)

    @staticmethod
    def detokenize(ids: list[int]) -> str:
        return vocab_detokenize(ids, VOCAB)

    def complete(self, d: dict) -> dict:
        prompts = d["prompt"] if isinstance(d["prompt"], list) else [d["prompt"]]
        greedy = float(d.get("temperature", 1.0)) == 0
        choices = []
        for p in prompts:
            for k in range(int(d.get("n", 1) or 1)):
                if greedy:
                    eff = None
                elif d.get("seed") is not None:
                    eff = int(d["seed"]) + k
                else:
                    with self._lock:
                        self._random += 1
                        eff = f"random-{self._random}"
                toks = draw_text(p, d, eff, int(d.get("max_tokens", 16)))
                c = {"index": len(choices), "text": "".join(toks), "finish_reason": "length"}
                if d.get("logprobs") is not None:
                    c["logprobs"] = {"tokens": toks, "token_logprobs": [-1.0] * len(toks)}
                choices.append(c)
        n_prompt = sum(len(self.tokenize(p)) for p in prompts)
        n_out = sum(int(d.get("max_tokens", 16)) for _ in choices)
        return {"id": "cmpl-draw", "object": "text_completion", "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}

    def chat_complete(self, d: dict) -> dict:
        msgs = d["messages"]
        greedy = float(d.get("temperature", 1.0)) == 0
        params = _chat_params(d)
        choices = []
        for k in range(int(d.get("n", 1) or 1)):
            if greedy:
                eff = None
            elif d.get("seed") is not None:
                eff = int(d["seed"]) + k
            else:
                with self._lock:
                    self._random += 1
                    eff = f"random-{self._random}"
            toks = draw_text(chat_key(msgs), params, eff, chat_max_tokens(d))
            c = {"index": k, "message": {"role": "assistant", "content": "".join(toks)}, "finish_reason": "length",
                 "logprobs": None}
            if d.get("logprobs"):
                c["logprobs"] = {"content": [{"token": t, "logprob": -1.0,
                                              "bytes": list(t.encode()) if self.chat_bytes else None,
                                              "top_logprobs": []} for t in toks]}
            choices.append(c)
        n_prompt = sum(len(self.tokenize(m["content"])) + 3 for m in msgs)
        n_out = chat_max_tokens(d) * len(choices)
        return {"id": "chatcmpl-draw", "object": "chat.completion", "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()
