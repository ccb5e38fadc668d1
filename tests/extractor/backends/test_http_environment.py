"""The HTTP client reads the proxy and CA settings from the environment once per endpoint (not on every
request) with requests' own rules, and never lets a ~/.netrc entry replace the API key's header."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from extractor.backends.http import HTTPClient


class Recorder:
    """Answers every GET with {"ok": true} and records (request target, Authorization header)."""

    def __init__(self):
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.seen.append((self.path, self.headers.get("Authorization")))
                body = json.dumps({"ok": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def rec():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture()
def clean_env(monkeypatch):
    for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
              "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_http_proxy_from_the_environment_is_used(rec, clean_env):
    clean_env.setenv("HTTP_PROXY", rec.url)
    c = HTTPClient("http://trawl-proxied.invalid:9", api_key_env=None, max_retries=0, timeout=5)
    for _ in range(2):
        data, _ = c.request("GET", "/v1/models")
        assert data == {"ok": True}
    # a proxy gets the absolute URL: the request went through it, both times
    assert [p for p, _ in rec.seen] == ["http://trawl-proxied.invalid:9/v1/models"] * 2


def test_no_proxy_bypasses_it(rec, clean_env):
    clean_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")          # nothing listens there
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    c = HTTPClient(rec.url, api_key_env=None, max_retries=0, timeout=5)
    assert c.request("GET", "/v1/models")[0] == {"ok": True}
    assert rec.seen == [("/v1/models", None)]


def test_ca_bundle_from_the_environment(clean_env, tmp_path):
    clean_env.setenv("CURL_CA_BUNDLE", str(tmp_path / "ca.pem"))
    assert HTTPClient("https://example.invalid", api_key_env=None)._session().verify == str(tmp_path / "ca.pem")
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "other.pem"))      # requests' order: this one first
    assert HTTPClient("https://example.invalid", api_key_env=None)._session().verify == str(tmp_path / "other.pem")
    clean_env.delenv("REQUESTS_CA_BUNDLE")
    clean_env.delenv("CURL_CA_BUNDLE")
    assert HTTPClient("https://example.invalid", api_key_env=None)._session().verify is True


def test_netrc_never_replaces_the_api_key(rec, clean_env, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    clean_env.setenv("NETRC", str(netrc))
    clean_env.setenv("TRAWL_TEST_KEY", "sk-test-123")
    c = HTTPClient(rec.url, api_key_env="TRAWL_TEST_KEY", max_retries=0, timeout=5)
    c.request("GET", "/v1/models")
    assert rec.seen == [("/v1/models", "Bearer sk-test-123")]
