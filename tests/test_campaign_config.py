"""Campaign and sweep configuration: strict schema, one clear error line naming the key.

No model server is needed: configurations are validated before anything is contacted.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from campaign_helpers import make_index, q, trawl
from extractor.campaign import SCHEMA, dump_toml, load_campaign, validate_campaign
from extractor.errors import TrawlError
from extractor.sweep import SWEEP_SCHEMA, load_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return make_index(tmp_path_factory.mktemp("cfg-index"))


def good(index_path, **over) -> str:
    parts = {
        "campaign": '[campaign]\nname = "audit"\n',
        "target": '[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9/v1"]\n',
        "attacks": '[[attacks]]\nname = "divergence"\nwords = ["poem"]\nsamples = 2\nmax_tokens = 16\n',
        "index": f"[index]\npath = {q(index_path)}\n",
    }
    parts.update(over)
    return "\n".join(v for v in parts.values() if v)


def write(tmp_path, text, name="campaign.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def err(tmp_path, text) -> str:
    p = write(tmp_path, text)
    with pytest.raises(TrawlError) as ei:
        load_campaign(p)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_good_config_resolves_defaults_and_paths(tmp_path, index):
    p = write(tmp_path, good(index, attacks='[[attacks]]\nname = "discoverable"\ncorpus = "corp"\n'
                                             'documents = 2\n'))
    c = load_campaign(p)
    cfg = c.config
    assert cfg["target"]["endpoints"] == ["http://127.0.0.1:9"]      # normalized, /v1 dropped
    assert cfg["target"]["concurrency"] == SCHEMA["target"]["concurrency"].default
    assert cfg["index"]["min_tokens"] == 10 and cfg["report"]["window_tokens"] == 50
    assert cfg["attacks"][0]["params"]["corpus"] == str((tmp_path / "corp").resolve())  # relative to the file
    assert c.out == (tmp_path / "trawl-out" / "audit").resolve()
    assert cfg["history"]["ledger"] == str((tmp_path / "trawl-out" / "ledger.parquet").resolve())
    # the frozen copy is valid TOML that resolves to the same configuration
    again = validate_campaign(load_toml_text(dump_toml(cfg)), file="frozen", base_dir=tmp_path, default_name="x")
    assert again == cfg
    assert c.run_id == load_campaign(p).run_id


def test_frozen_copy_round_trips_awkward_strings(tmp_path, index):
    import string

    words = list(string.printable) + ['"', "\\", "é", "🙂", "\x7f", 'a"b\\c\nd', "'''", "\x00"]
    data = load_toml_text(good(index))
    data["attacks"][0]["words"] = words
    data["campaign"]["description"] = 'line1\nline2 "quoted" \\ tab\t'
    cfg = validate_campaign(data, file="x.toml", base_dir=tmp_path, default_name="x")
    text = dump_toml(cfg)
    again = validate_campaign(load_toml_text(text), file="frozen", base_dir=tmp_path, default_name="x")
    assert again == cfg and again["attacks"][0]["params"]["words"] == words


def load_toml_text(text):
    import tomllib

    return tomllib.loads(text)


def test_unknown_keys_are_named_with_the_known_ones(tmp_path, index):
    msg = err(tmp_path, good(index, target='[target]\nmodle = "m"\nversion = "v1"\nendpoints = ["http://h:1"]\n'))
    assert msg.startswith("unknown key 'target.modle' in ") and msg.endswith(
        "(known: model, version, endpoints, embedded, model_path, api_key_env, concurrency, timeout, max_retries, "
        "token_info)")
    assert "unknown key 'reprot' in" in err(tmp_path, good(index) + "\n[reprot]\nredact = true\n")
    msg = err(tmp_path, good(index, attacks='[[attacks]]\nname = "divergence"\nwrds = ["poem"]\n'))
    assert msg.startswith("unknown key 'attacks[0].wrds' in ") and "words" in msg
    msg = err(tmp_path, good(index, attacks='[[attacks]]\nname = "nosuch"\n'))
    assert "attacks[0].name: unknown attack 'nosuch'" in msg and "divergence" in msg


def test_wrong_types_name_the_key_and_both_types(tmp_path, index):
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v1"\nendpoints = 8080\n'))
    assert msg.startswith("target.endpoints must be a list of strings, got int")
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://h:1", 2]\n'))
    assert msg.startswith("target.endpoints must be a list of strings, got a list holding int 2")
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = 2\nendpoints = ["http://h:1"]\n'))
    assert msg.startswith("target.version must be a string, got int")
    msg = err(tmp_path, good(index) + '\n[budget]\nmax_seconds = "ten"\n')
    assert msg.startswith("budget.max_seconds must be a number, got str")
    msg = err(tmp_path, good(index, attacks='[[attacks]]\nname = "divergence"\nsamples = "2"\n'))
    assert msg.startswith("attacks[0].samples must be an integer, got str")
    msg = err(tmp_path, good(index) + "\n[report]\nredact = 1\n")
    assert msg.startswith("report.redact must be true or false, got int")
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v"\nendpoints = ["h"]\nconcurrency = 0\n'))
    assert msg.startswith("target.concurrency must be >= 1")
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v"\nendpoints = ["h:1"]\n'))
    assert msg.startswith("target.endpoints[0]:") and "not a URL" in msg


def test_missing_or_bad_index(tmp_path, index):
    assert err(tmp_path, good(index, index="")).startswith("missing key 'index.path' in ")
    msg = err(tmp_path, good(index, index='[index]\npath = "nowhere"\n'))
    assert msg.startswith("index.path ") and "does not exist" in msg and "nowhere" in msg
    (tmp_path / "empty").mkdir()
    msg = err(tmp_path, good(index, index='[index]\npath = "empty"\n'))
    assert msg.startswith("index.path ") and "is not a usable index" in msg


def test_target_consistency(tmp_path, index):
    assert "give either endpoints or embedded = true" in err(
        tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v"\nendpoints = ["http://h:1"]\n'
                                     'embedded = true\n'))
    assert "give endpoints" in err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v"\n'))
    assert err(tmp_path, good(index, target='[target]\nmodel = "m"\nendpoints = ["http://h:1"]\n')).startswith(
        "missing key 'target.version'")
    assert err(tmp_path, good(index, attacks="")).startswith("missing [[attacks]]")
    msg = err(tmp_path, good(index, attacks='[[attacks]]\nname = "divergence"\n[[attacks]]\nname = "divergence"\n'))
    assert "labelled 'divergence'" in msg
    msg = err(tmp_path, good(index) + '\n[report]\nfail_if = ["memorized_token_fraction >"]\n')
    assert msg.startswith("report.fail_if[0]")
    assert "not valid TOML" in err(tmp_path, good(index) + "\n[target\n")


def test_sweep_errors_name_the_target(tmp_path, index):
    base = (f'[defaults.index]\npath = {q(index)}\n\n[[attacks]]\nname = "divergence"\n\n'
            '[[targets]]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://h:1"]\n\n[[targets]]\nmodel = "m"\n'
            'endpoints = ["http://h:2"]\n')
    p = write(tmp_path, base, "sweep.toml")
    with pytest.raises(TrawlError, match=r"^missing key 'targets\[1\]\.version'"):
        load_sweep(p)
    p = write(tmp_path, base.replace('model = "m"\nendpoints = ["http://h:2"]', 'model = "m"\nversion = "v2"\n'
                                     'endpoints = "http://h:2"'), "sweep.toml")
    with pytest.raises(TrawlError, match=r"^targets\[1\]\.endpoints must be a list of strings, got str"):
        load_sweep(p)
    p = write(tmp_path, "[defaults.tagret]\nmodel = 'm'\n" + base, "sweep.toml")
    with pytest.raises(TrawlError, match=r"^unknown key 'defaults\.tagret'"):
        load_sweep(p)
    p = write(tmp_path, base.replace('model = "m"\nendpoints = ["http://h:2"]',
                                     'model = "m"\nversion = "v2"\nendpoints = ["http://h:2"]'), "sweep.toml")
    sw = load_sweep(p)
    assert [c.name for c in sw.campaigns] == ["m-v1-divergence", "m-v2-divergence"]
    assert sw.version_order == {"m": ["v1", "v2"]}
    assert {c.config["campaign"]["suite"] for c in sw.campaigns} == {"sweep/divergence"}


def test_cli_bad_configs_are_one_line_without_traceback(tmp_path, index):
    cases = {
        "unknown.toml": (good(index, target='[target]\nmodle = "m"\nversion = "v"\nendpoints = ["http://h:1"]\n'),
                         "unknown key 'target.modle'"),
        "type.toml": (good(index, target='[target]\nmodel = "m"\nversion = "v"\nendpoints = 1\n'),
                      "target.endpoints must be a list of strings, got int"),
        "noindex.toml": (good(index, index='[index]\npath = "missing-index"\n'), "index.path"),
    }
    for name, (text, needle) in cases.items():
        write(tmp_path, text, name)
        proc = trawl("run", name, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("trawl: error: ") and needle in lines[0]
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    write(tmp_path, "[sweep]\nnmae = 'x'\n", "s.toml")
    proc = trawl("sweep", "s.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("trawl: error: unknown key 'sweep.nmae'")
    assert len(proc.stderr.splitlines()) == 1


def test_docs_describe_every_key():
    text = (ROOT / "README.md").read_text()
    for section, keys in SCHEMA.items():
        for k in keys:
            assert re.search(rf"`{section}\.{k}`", text), f"{section}.{k} missing from README.md's configuration reference"
    for section, keys in SWEEP_SCHEMA.items():
        for k in keys:
            assert re.search(rf"`{section}\.{k}`", text), f"sweep {section}.{k} missing from README.md's configuration reference"
    for k in ("attacks", "targets", "defaults"):
        assert k in text


def test_examples_validate(tmp_path, index):
    """Every examples/*.toml is a valid campaign or sweep (its index path swapped for a real one)."""
    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert examples
    for ex in examples:
        text = ex.read_text()
        text = re.sub(r'(?m)^path = ".*index.*"$', f"path = {q(index)}", text)
        p = write(tmp_path, text, ex.name)
        if "[[targets]]" in text:
            load_sweep(p)
        else:
            load_campaign(p)
