"""What a started server answers on ``/v1/models`` decides whether trawl calls it ready: an answer
that is not the OpenAI model list naming this server's model (another program on the port) is one
line, never a traceback and never "ready" (issue 17). The "server" here is a tiny HTTP process that
answers a fixed body, started through the same spawn and wait code as the real engines."""
from __future__ import annotations

import sys

import pytest

from extractor.errors import TrawlError, is_user_error
from extractor.serving.embedded import EmbeddedServer

_SCRIPT = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = ("[" * 100000 + "]" * 100000 if sys.argv[2] == "DEEP" else sys.argv[2]).encode("latin-1")
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class _FakeServer(EmbeddedServer):
    def __init__(self, body: str, tmp_path):
        super().__init__(alias="the-model", startup_timeout=30, log_path=tmp_path / "log")
        self.body = body

    def command(self):
        return [sys.executable, "-c", _SCRIPT, str(self.port), self.body]

    def start(self):
        return self._spawn("trawl-test-")


GARBAGE = [
    ("<html>hello</html>", "not JSON"),
    ("[1, 2, 3]", "not a model list (list)"),
    ('{"data": "x"}', "not a model list (dict)"),
    ('{"data": [{"name": 1}]}', "not a model list"),
    ("DEEP", "not JSON"),   # 100,000 nested lists: json's RecursionError
    ('{"object": "list", "data": [{"id": "other\\u001b[31m-model"}]}', "serves other\\x1b[31m-model, not the-model"),
]


@pytest.mark.parametrize("body,message", GARBAGE, ids=[m for _, m in GARBAGE])
def test_a_garbage_model_list_is_one_line(body, message, tmp_path):
    srv = _FakeServer(body, tmp_path)
    with pytest.raises(TrawlError) as e:
        srv.start()
    text = str(e.value)
    assert is_user_error(e.value) and message in text and "\n" not in text
    assert "another" in text and str(srv.port) in text
    assert srv._proc is None   # the process trawl started was stopped


def test_the_model_list_naming_the_model_is_ready(tmp_path):
    srv = _FakeServer('{"object": "list", "data": [{"id": "x"}, {"id": "the-model"}]}', tmp_path)
    try:
        assert srv.start()._proc is not None
    finally:
        srv.stop()


# -- gguf_to_hf's output folder follows the --force rule (issue 17) ---------------------------
def _gguf(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF not really")
    return g


def test_gguf_to_hf_never_replaces_a_folder_it_did_not_make(tmp_path, monkeypatch):
    from extractor.serving.serve import gguf_to_hf

    g = _gguf(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for overwrite, message in ((True, "not a converted model folder trawl made"), (False, "already exists")):
        with pytest.raises(TrawlError, match=message):
            gguf_to_hf(g, mine, overwrite=overwrite)
        assert (mine / "thesis.tex").read_text() == "years of work"
    monkeypatch.chdir(mine)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(TrawlError):
            gguf_to_hf(g, out, overwrite=True)
    assert (mine / "thesis.tex").exists() and g.exists()


def test_gguf_to_hf_passes_its_own_folder_to_the_converter(tmp_path, monkeypatch):
    """A folder holding trawl-source.json (or an empty one) may be replaced: the check lets it through
    to the conversion (stopped here by a missing converter, so no weights are needed)."""
    import builtins

    from extractor.serving import serve

    g = _gguf(tmp_path)
    made = tmp_path / "made"
    made.mkdir()
    (made / serve.SOURCE_MARKER).write_text("{}")
    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    for out in (made, tmp_path / "empty", tmp_path / "new"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(TrawlError, match="needs torch"):
            serve.gguf_to_hf(g, out, overwrite=True)
