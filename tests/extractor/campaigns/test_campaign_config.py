"""Campaign and sweep configuration: strict schema, one clear error line naming the key.

No model server is needed: configurations are validated before anything is contacted.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

from campaign_helpers import make_index, q, trawl
from extractor.campaigns.config import SCHEMA, dump_toml, identity, load_campaign, validate_campaign
from extractor.errors import TrawlError
from extractor.campaigns.sweep import SWEEP_SCHEMA, load_sweep
from repo import ROOT



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
        "(known: model, version, backend, dtype, endpoints, embedded, model_path, api_key_env, concurrency, timeout, "
        "max_retries, token_info, api)")
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
    assert "give endpoints = [\"http://...\"], embedded = true or backend = \"vllm\"" in err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v"\n'))
    assert err(tmp_path, good(index, target='[target]\nmodel = "m"\nendpoints = ["http://h:1"]\n')).startswith(
        "missing key 'target.version'")
    assert err(tmp_path, good(index, attacks="")).startswith("missing [[attacks]]")
    msg = err(tmp_path, good(index, attacks='[[attacks]]\nname = "divergence"\n[[attacks]]\nname = "divergence"\n'))
    assert "labelled 'divergence'" in msg
    msg = err(tmp_path, good(index) + '\n[report]\nfail_if = ["memorized_token_fraction >"]\n')
    assert msg.startswith("report.fail_if[0]")
    assert "not valid TOML" in err(tmp_path, good(index) + "\n[target\n")


def hf_folder(path: Path) -> Path:
    """A folder that looks like an HF-format model to the configuration check (config.json)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


def vllm_target(model='"models/smol"', extra="") -> str:
    return f'[target]\nbackend = "vllm"\nmodel = {model}\nversion = "v1"\n{extra}'


def test_openai_run_ids_are_unchanged_by_the_backend_key(tmp_path, index):
    """Ledgers and campaign folders made before target.backend existed keep their run ids: the
    identity of an openai campaign is exactly the one it always was (no backend entry)."""
    cfg = load_campaign(write(tmp_path, good(index))).config
    assert cfg["target"]["backend"] == "openai"
    old = {"name": "audit", "seed": 0, "model": "m", "version": "v1", "attacks": cfg["attacks"],
           "index": cfg["index"], "window_tokens": 50}
    canonical = json.dumps(old, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert identity(cfg) == old
    assert load_campaign(write(tmp_path, good(index))).run_id == hashlib.sha1(canonical.encode()).hexdigest()[:12]
    explicit = good(index, target='[target]\nmodel = "m"\nversion = "v1"\nbackend = "openai"\n'
                                  'endpoints = ["http://127.0.0.1:9/v1"]\n')
    assert load_campaign(write(tmp_path, explicit)).run_id == load_campaign(write(tmp_path, good(index))).run_id


def test_vllm_target_resolves_the_model_folder(tmp_path, index):
    folder = hf_folder(tmp_path / "models" / "smol")
    c = load_campaign(write(tmp_path, good(index, target=vllm_target())))
    t = c.config["target"]
    assert t["backend"] == "vllm" and t["endpoints"] == [] and not t["embedded"]
    assert t["model"] == str(folder.resolve())                     # relative to the file, made absolute
    assert identity(c.config)["backend"] == "vllm" and identity(c.config)["model"] == str(folder.resolve())
    again = validate_campaign(load_toml_text(dump_toml(c.config)), file="frozen", base_dir=tmp_path / "models",
                              default_name="x")
    assert again == c.config                                       # the frozen copy keeps the absolute folder
    hub = load_campaign(write(tmp_path, good(index, target=vllm_target('"HuggingFaceTB/SmolLM2-135M"'))))
    assert hub.config["target"]["model"] == "HuggingFaceTB/SmolLM2-135M"   # a hub name goes to vLLM as is
    # model_path: the folder loaded; model only names it (not checked as a folder)
    named = load_campaign(write(tmp_path, good(index, target=vllm_target('"acme"', 'model_path = "models/smol"\n'))))
    assert named.config["target"]["model"] == "acme"
    assert named.config["target"]["model_path"] == str(folder.resolve())
    assert identity(named.config)["model_path"] == str(folder.resolve()) and identity(named.config)["model"] == "acme"


def test_dtype_is_for_the_vllm_backend(tmp_path, index):
    """target.dtype reaches the in-process engine (float32 for exact (n,p)); a server's target refuses it in
    one line (its dtype is set where it is started), and a value vLLM does not take is named."""
    from extractor.campaigns.pipeline import served_target

    hf_folder(tmp_path / "models" / "smol")
    c = load_campaign(write(tmp_path, good(index, target=vllm_target(extra='dtype = "float32"\n'))))
    assert c.config["target"]["dtype"] == "float32"
    with served_target(c.config["target"], log_path=tmp_path / "log") as served:
        assert served["dtype"] == "float32" and served["backend"] == "vllm"
    assert load_campaign(write(tmp_path, good(index))).config["target"]["dtype"] == "auto"
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9"]\n'
                                           'dtype = "float32"\n'))
    assert msg.startswith('target.dtype is for backend = "vllm"') and "campaign.toml" in msg
    msg = err(tmp_path, good(index, target=vllm_target(extra='dtype = "float64"\n')))
    assert "target.dtype" in msg and "float32" in msg


def test_vllm_target_errors_name_the_key(tmp_path, index):
    hf_folder(tmp_path / "models" / "smol")
    msg = err(tmp_path, good(index, target=vllm_target(extra='endpoints = ["http://127.0.0.1:9"]\n')))
    assert msg.startswith('target.endpoints: backend = "vllm" runs the model in the trawl process') and \
        "campaign.toml" in msg
    msg = err(tmp_path, good(index, target=vllm_target(extra="embedded = true\n")))
    assert msg.startswith('target.embedded: backend = "vllm" and embedded = true exclude each other')
    msg = err(tmp_path, good(index, target=vllm_target('"./models/missing"')))
    assert msg.startswith(f"target.model {str(tmp_path / 'models' / 'missing')!r} does not exist") and \
        "campaign.toml" in msg
    msg = err(tmp_path, good(index, target=vllm_target('"models/typo"')))   # models/ is here: a path, not a hub name
    assert msg.startswith(f"target.model {str(tmp_path / 'models' / 'typo')!r} does not exist")
    (tmp_path / "models" / "empty").mkdir()
    msg = err(tmp_path, good(index, target=vllm_target('"models/empty"')))
    assert msg.startswith("target.model ") and "has no config.json" in msg
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    assert "is a file" in err(tmp_path, good(index, target=vllm_target('"w.gguf"')))
    msg = err(tmp_path, good(index, target='[target]\nbackend = "vllm"\nversion = "v1"\n'))
    assert msg.startswith("missing key 'target.model' in ") and "HF-format model folder or hub name" in msg
    msg = err(tmp_path, good(index, target=vllm_target('"acme"', extra='model_path = "w.gguf"\n')))
    assert msg.startswith(f"target.model_path {str(tmp_path / 'w.gguf')!r} is a file: backend = \"vllm\" loads")
    msg = err(tmp_path, good(index, target=vllm_target('"acme"', extra='model_path = "ckpt/none"\n')))
    assert msg.startswith(f"target.model_path {str(tmp_path / 'ckpt' / 'none')!r} does not exist")
    msg = err(tmp_path, good(index, target=vllm_target('"acme"', extra='model_path = "models/empty"\n')))
    assert msg.startswith("target.model_path ") and "has no config.json" in msg
    msg = err(tmp_path, good(index, target='[target]\nbackend = "vllm"\nmodel_path = "models/smol"\nversion = "1"\n'))
    assert msg.startswith("missing key 'target.model' in ") and "the model's name" in msg
    msg = err(tmp_path, good(index, target='[target]\nmodel = "m"\nversion = "v"\nendpoints = ["http://h:1"]\n'
                                          'model_path = "models/smol"\n'))
    assert msg.startswith('target.model_path is only for embedded = true or backend = "vllm" (in ')
    msg = err(tmp_path, good(index, target=vllm_target().replace('"vllm"', '"vLLM"')))
    assert msg.startswith("target.backend must be one of openai, vllm, got 'vLLM' (in ")


def test_sweep_targets_pass_the_backend_through(tmp_path, index):
    a, b = hf_folder(tmp_path / "ckpt" / "step-100"), hf_folder(tmp_path / "ckpt" / "step-200")
    text = (f'[defaults.index]\npath = {q(index)}\n\n[defaults.target]\nbackend = "vllm"\nconcurrency = 8\n\n'
            '[[attacks]]\nname = "divergence"\n\n'
            '[[targets]]\nmodel = "ckpt/step-100"\nversion = "100"\n\n'
            '[[targets]]\nmodel = "ckpt/step-200"\nversion = "200"\n\n'
            '[[targets]]\nbackend = "openai"\nmodel = "m"\nversion = "v1"\nendpoints = ["http://h:1"]\n')
    sw = load_sweep(write(tmp_path, text, "sweep.toml"))
    targets = [c.config["target"] for c in sw.campaigns]
    assert [(t["backend"], t["model"], t["concurrency"]) for t in targets] == [
        ("vllm", str(a.resolve()), 8), ("vllm", str(b.resolve()), 8), ("openai", "m", 8)]
    assert "backend" not in identity(sw.campaigns[2].config)
    # checkpoints of one model: model_path loads each, model names the series the history compares
    named = text.replace('model = "ckpt/step-100"', 'model = "acme"\nmodel_path = "ckpt/step-100"').replace(
        'model = "ckpt/step-200"', 'model = "acme"\nmodel_path = "ckpt/step-200"')
    sw = load_sweep(write(tmp_path, named, "sweep.toml"))
    assert [c.name for c in sw.campaigns] == ["acme-100-divergence", "acme-200-divergence", "m-v1-divergence"]
    assert [c.config["target"]["model_path"] for c in sw.campaigns[:2]] == [str(a.resolve()), str(b.resolve())]
    assert sw.version_order == {"acme": ["100", "200"], "m": ["v1"]}
    bad = text.replace('model = "ckpt/step-200"', 'model = "ckpt/step-300"')
    with pytest.raises(TrawlError, match=r"^targets\[1\]\.model .*step-300' does not exist"):
        load_sweep(write(tmp_path, bad, "sweep.toml"))
    bad = text.replace('backend = "vllm"\n', 'backend = "vllm"\nendpoints = ["http://h:9"]\n', 1)
    with pytest.raises(TrawlError, match=r'^targets\[0\]\.endpoints: backend = "vllm"'):
        load_sweep(write(tmp_path, bad, "sweep.toml"))


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
    hf_folder(tmp_path / "models" / "smol")
    vcases = {
        "v-endpoints.toml": (vllm_target(extra='endpoints = ["http://h:1"]\n'), "target.endpoints: backend"),
        "v-embedded.toml": (vllm_target(extra="embedded = true\n"), "target.embedded: backend"),
        "v-missing.toml": (vllm_target('"models/gone"'), "target.model '"),
        "v-unknown.toml": (vllm_target().replace('"vllm"', '"tgi"'), "target.backend must be one of openai, vllm"),
    }
    for name, (target, needle) in vcases.items():
        write(tmp_path, good(index, target=target), name)
        proc = trawl("run", name, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"trawl: error: {needle}") and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"(in {name})" in proc.stderr and proc.stdout == ""
    write(tmp_path, "[sweep]\nnmae = 'x'\n", "s.toml")
    proc = trawl("sweep", "s.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("trawl: error: unknown key 'sweep.nmae'")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here: the run would "
                                                                         "start its engine")
def test_cli_vllm_campaign_without_vllm_is_one_line(tmp_path, index):
    """A valid backend = "vllm" campaign where vLLM is not installed: vLLM's backend error, one line, exit 2;
    the campaign records the failed step and nothing was sampled."""
    hf_folder(tmp_path / "models" / "smol")
    write(tmp_path, good(index, target=vllm_target()), "v.toml")
    assert trawl("run", "v.toml", "--check", cwd=tmp_path).returncode == 0   # the file is fine
    proc = trawl("run", "v.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.splitlines() == ["trawl: error: backend vllm needs vLLM installed in this Python "
                                        "(No module named 'vllm')"], proc.stderr
    st = json.loads((tmp_path / "trawl-out" / "audit" / "campaign.json").read_text())
    assert st["status"] == "failed" and st["steps"]["sample"]["status"] == "failed"
    assert "needs vLLM installed" in st["steps"]["sample"]["error"]
    assert not list((tmp_path / "trawl-out" / "audit").rglob("*.parquet"))


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
