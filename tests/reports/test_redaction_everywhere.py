"""Issue 17, item 4: `--redact` holds in every output file. Secrets planted in memorized text
(emails, phones, IPs, keys, `password: hunter2`, `api_key="..."`, PEM blocks) appear in none of
report.html, report.md, metrics.json and memorized_spans.jsonl: the category examples once kept
`="..."` without its keyword, which redact() could then not match again."""
from __future__ import annotations

import html
import json
import random
import re

import pytest

from reports import write_report
from reports.categories import find_all, redact
from synthetic_runs import Corpus, Gen, write_run

SECRETS = {
    "email": "jane.roe@example.org",
    "phone": "+1 (555) 010-4477",
    "ip": "203.0.113.77",
    "openai_key": "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
    "aws_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "k" * 36,
    "password": "hunter2",
    "quoted_api_key": "Xq7.not/a real key",
    "json_password": "correct-horse",
    "short_secret": "s3cr3t!",
    "pem_body": "MIIEowIBAAKCAQEA7qZ",
}
PLANTED = (f"Contact {SECRETS['email']} or call {SECRETS['phone']} from {SECRETS['ip']}; "
           f"OPENAI_API_KEY={SECRETS['openai_key']} aws {SECRETS['aws_key']} gh {SECRETS['github_token']}\n"
           f"login: admin password: {SECRETS['password']}\n"
           f"config = {{api_key=\"{SECRETS['quoted_api_key']}\"}}\n"
           f"{{\"user\": \"bob\", \"password\": \"{SECRETS['json_password']}\"}}\n"
           f"db_secret = '{SECRETS['short_secret']}'\n"
           f"-----BEGIN RSA PRIVATE KEY-----\n{SECRETS['pem_body']}\n-----END RSA PRIVATE KEY-----\n")


def _tokens(text):
    return re.findall(r"\s*\S+|\s+", text)


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    rng = random.Random(7)
    words = lambda n: "".join(f" w{rng.randrange(300)}" for _ in range(n))  # noqa: E731
    doc = words(20) + " " + PLANTED + words(40)
    other = words(30) + f" password: {SECRETS['password']} and api_key=\"{SECRETS['quoted_api_key']}\"" + words(60)
    filler = lambda n: [f" z{rng.randrange(500)}" for _ in range(n)]  # noqa: E731
    gens = [Gen(filler(10) + _tokens(doc) + filler(10), "divergence", "poem"),
            Gen(filler(5) + _tokens(other) + filler(5), "divergence", f"company {SECRETS['email']}")]
    run = tmp_path_factory.mktemp("secrets") / "run"
    write_run(str(run), Corpus([doc, other], sources=[f"people-{SECRETS['email']}.csv", "cfg.ini"]), gens,
              min_tokens=10)
    return str(run)


def test_every_planted_secret_is_a_finding():
    found = [x for xs in find_all(PLANTED).values() for x in xs]
    blob = "\n".join(found)
    for name, secret in SECRETS.items():
        assert secret[:8] in blob, name          # a PEM finding is its first 40 characters
    # a finding is masked when redacted again, on its own (a category example)
    for x in found:
        for name, secret in SECRETS.items():
            assert secret not in redact(x), (name, x)


def test_redaction_holds_in_every_output_file(secret_run, tmp_path):
    plain = write_report(secret_run, out_dir=tmp_path / "plain")
    assert SECRETS["password"] in open(plain.json, encoding="utf-8").read()      # planted and memorized
    red = write_report(secret_run, out_dir=tmp_path / "red", redact=True)
    assert red.spans
    for path in (red.html, red.md, red.json, red.spans):
        text = open(path, encoding="utf-8").read()
        assert "[KEY]" in text or path == red.md, path
        for name, secret in SECRETS.items():
            for form in {secret, html.escape(secret, quote=True), json.dumps(secret)[1:-1]}:
                assert form not in text, (name, path)
    cats = json.load(open(red.json, encoding="utf-8"))["categories"]
    assert any("password" in x for x in cats["keys"]["examples"])           # the keyword stays, the value goes
