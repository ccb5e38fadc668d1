"""The campaign TOML file: its schema, its checks, the frozen copy and the campaign's identity.

:func:`load_campaign` reads a campaign file, checks it strictly against :data:`SCHEMA`
(:func:`validate_campaign`) and returns a :class:`Campaign` holding the resolved
configuration: defaults filled, paths absolute, the target's cross-key rules applied
(:func:`finish_target`). Unknown keys, wrong types, a missing or invalid index are
one-line :class:`~extractor.errors.TrawlError` messages naming the key and the file.
README.md's "Configuration reference" documents every key (a test keeps the two in step).

:func:`dump_toml` writes the resolved configuration back as TOML (the campaign folder's
frozen ``campaign.toml``); :func:`identity` is what makes two configurations the same
campaign, and :attr:`Campaign.run_id` (a hash of it) the run id and thus the request ids.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpora.locations import is_url
from extractor.errors import TrawlError
from extractor.sampling.settings import DTYPES, MAX_CONCURRENCY

# ============================================================================ schema

@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, meaning."""

    type: str                      # str, int, float, bool, path, list[str], list[int]
    default: Any = None
    help: str = ""
    required: bool = False
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


SCHEMA: dict[str, dict[str, Key]] = {
    "campaign": {
        "name": Key("str", None, "campaign name, used in the ledger and as the folder name; default: the file's "
                                 "name without .toml"),
        "out": Key("path", None, "campaign folder; default: trawl-out/<name> next to the file"),
        "suite": Key("str", "", "series this campaign belongs to in the history (campaigns of the same suite, "
                                "model and attack are compared version to version); sweeps set it"),
        "seed": Key("int", 0, "run seed (document selection, prompt sampling); part of the run id"),
        "description": Key("str", "", "free text shown nowhere but kept in the frozen copy"),
    },
    "target": {
        "model": Key("str", None, "model name sent in every request (required unless embedded = true, where it "
                                  "defaults to gemma-3-270m); with backend = \"vllm\": the HF-format model folder "
                                  "(relative to the file) or hub name to load"),
        "version": Key("str", None, "model version or checkpoint label; a ledger key", required=True),
        "backend": Key("str", "openai", "openai: OpenAI-compatible servers at endpoints, or embedded = true; vllm: "
                                        "vLLM's engine in the trawl process (vllm.LLM, on a GPU host), no server, "
                                        "no endpoints", choices=("openai", "vllm")),
        "dtype": Key("str", "auto", "backend = \"vllm\": the engine's dtype (auto: vLLM's choice, bfloat16 on the "
                                    "CPU build; float32 for exact (n,p), see README)",
                     choices=DTYPES),
        "endpoints": Key("list[str]", [], "base URLs of OpenAI-compatible /v1/completions servers that serve "
                                          "this model (replicas: the load is spread, a dead one is routed around)"),
        "embedded": Key("bool", False, "serve the embedded Gemma-3-270m (or model_path) with the local "
                                       "llama.cpp server for the duration of the campaign"),
        "model_path": Key("path", None, "embedded = true: a GGUF file to serve instead of the shipped model; "
                                        "backend = \"vllm\": the HF-format model folder to load, model then only "
                                        "naming it (ledger, sweep series: checkpoints of one model)"),
        "api_key_env": Key("str", "OPENAI_API_KEY", "environment variable holding the API key (never written)"),
        "concurrency": Key("int", 4, "requests in flight over all endpoints", minimum=1,
                           maximum=MAX_CONCURRENCY),   # the sampler's own bound: refused at --check, not at run time
        "timeout": Key("float", 300.0, "total time limit of one request, seconds", minimum=0.001, maximum=1e6),
        "max_retries": Key("int", 6, "retries of a failed request (over the endpoints, with backoff)", minimum=0,
                           maximum=1000),
        "token_info": Key("str", "auto", "where token boundaries come from", choices=("auto", "logprobs", "tokenize")),
        "api": Key("str", "completions", "completions: /v1/completions; chat: /v1/chat/completions (a chat model; "
                                         "see trawl sample --api); auto: completions where the server answers "
                                         "them, else chat", choices=("completions", "chat", "auto")),
    },
    "budget": {
        "max_generations": Key("int", None, "generations in the whole campaign", minimum=0),
        "max_tokens": Key("int", None, "prompt + completion tokens billed in the whole campaign", minimum=0),
        "max_dollars": Key("float", None, "spend in the whole campaign, USD", minimum=0),
        "max_seconds": Key("float", None, "wall time of one sampling session, seconds", minimum=0),
    },
    "pricing": {
        "input_per_mtok": Key("float", 0.0, "USD per million prompt tokens", minimum=0),
        "output_per_mtok": Key("float", 0.0, "USD per million completion tokens", minimum=0),
        "gpu_hourly_usd": Key("float", None, "USD per hour of wall time (self-hosted; instead of token prices)",
                              minimum=0),
    },
    "index": {
        "path": Key("location", None, "suffix-array index folder (trawl index build), or its URL on an object store "
                                      "(s3://, gs://, file://: read through the node's cache)", required=True),
        "min_tokens": Key("int", 10, "matcher threshold: fewest whole tokens in a reported span (10 fills the "
                                     "report's 10-50 token histogram)", minimum=1, maximum=1_000_000),
        "min_bytes": Key("int", None, "threshold for generations without token offsets (default 4 x min_tokens)",
                         minimum=1, maximum=1 << 40),
    },
    "report": {
        "window_tokens": Key("int", 50, "tokens in a memorized window (50, as in Nasr et al. 2023)", minimum=1,
                             maximum=1_000_000),
        "redact": Key("bool", False, "mask personal data and secrets in the report"),
        "fail_if": Key("list[str]", [], "release gates (trawl report --fail-if grammar); exit code 3 when any holds"),
    },
    "rank": {
        "enabled": Key("bool", False, "score every generation with the model and rank them by membership signals "
                                      "(trawl rank) before the report; a [rank] table turns it on unless false"),
        "k": Key("float", 20.0, "min-k% and min-k%++: percentage of lowest-scoring tokens averaged", minimum=0.001,
                 maximum=100),
        "window": Key("int", 50, "sliding-window perplexity: window length in tokens", minimum=1, maximum=1_000_000),
        "top_k": Key("int", 20, "alternatives per position asked of a server (min-k%++'s approximation)", minimum=0,
                     maximum=100_000),
        "lowercase": Key("bool", True, "also score each text lowercased (the lowercase-ratio signal; twice the cost)"),
        "model_file": Key("path", None, "score with llama.cpp in the trawl process from this GGUF (exact min-k%++); "
                                        "default: the served GGUF for embedded = true, else the target's endpoints"),
        "reference_endpoint": Key("str", None, "a reference model's server, for the reference-ratio signal"),
        "reference_model": Key("str", None, "the reference model's name at reference_endpoint"),
        "reference_model_file": Key("path", None, "the reference model as a GGUF scored in the trawl process"),
        "batch": Key("int", 8, "texts per scoring call", minimum=1, maximum=4096),
        "max_seconds": Key("float", None, "wall time of the rank step in one session (rerun to continue)",
                           minimum=0),
    },
    "history": {
        "record": Key("bool", True, "append the metrics to the ledger when the campaign finishes"),
        "ledger": Key("path", None, "ledger Parquet file; default: ledger.parquet in the campaign folder's parent"),
    },
}
ATTACK_KEYS = {
    "name": Key("str", None, "attack name (trawl attacks)", required=True),
    "label": Key("str", None, "name of this entry in ledgers and folder names; default: the attack name"),
}
SECTION_HELP = {
    "campaign": "the campaign itself",
    "target": "the model under audit",
    "attacks": "array of tables: one [[attacks]] per attack; other keys are the attack's parameters",
    "budget": "caps; the sampler stops cleanly at the first one reached",
    "pricing": "cost model for the $-figures",
    "index": "the reference corpus index",
    "report": "report settings",
    "rank": "optional: membership rankings of the generations (trawl rank) for the report and the gates",
    "history": "the ledger",
}

_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "path": "a string (a path)", "location": "a string (a path or a URL)", "list[str]": "a list of strings", "list[int]": "a list of integers",
               "table": "a table", "array": "an array of tables"}


def _tname(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list):
        return "list"
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return "datetime"
    return type(v).__name__


def _type_error(file: str, key: str, kind: str, v: Any) -> TrawlError:
    got = _tname(v)
    if isinstance(v, list) and kind.startswith("list"):
        bad = next((x for x in v if not _ok_scalar(kind[5:-1], x)), None)
        got = f"a list holding {_tname(bad)} {_short(bad)}"
    return TrawlError(f"{key} must be {_TYPE_WORDS[kind]}, got {got} (in {file})")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _ok_scalar(kind: str, v: Any) -> bool:
    if kind in ("str", "path", "location"):
        return isinstance(v, str)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "bool":
        return isinstance(v, bool)
    return False


def check_value(file: str, key: str, spec: Key, v: Any, base_dir: Path) -> Any:
    kind = spec.type
    if kind.startswith("list["):
        if not isinstance(v, list) or not all(_ok_scalar(kind[5:-1], x) for x in v):
            raise _type_error(file, key, kind, v)
        out = list(v)
    else:
        if not _ok_scalar(kind, v):
            raise _type_error(file, key, kind, v)
        out = float(v) if kind == "float" else v
        if kind == "float" and not math.isfinite(out):
            # nan compares false with everything: a nan cap, price or tolerance would switch its check off
            raise TrawlError(f"{key} must be a finite number, got {v!r} (in {file})")
        if kind == "location" and is_url(out):   # a URL (corpora.locations) is kept as written
            pass
        elif kind in ("path", "location"):
            if not out:
                raise TrawlError(f"{key} must not be empty (in {file})")
            out = str((base_dir / os.path.expanduser(out)).resolve())
        if spec.minimum is not None and out < spec.minimum:
            raise TrawlError(f"{key} must be >= {spec.minimum:g}, got {out!r} (in {file})")
        if spec.maximum is not None and out > spec.maximum:
            raise TrawlError(f"{key} must be <= {spec.maximum:g}, got {out!r} (in {file})")
    if spec.choices is not None and out not in spec.choices:
        raise TrawlError(f"{key} must be one of {', '.join(spec.choices)}, got {out!r} (in {file})")
    return out


def check_table(file: str, where: str, data: Any, schema: dict[str, Key], base_dir: Path,
                *, fill: bool = True, require: bool = True) -> dict:
    """Check one TOML table against ``schema``; returns it with defaults filled (``fill``)."""
    if not isinstance(data, dict):
        raise TrawlError(f"{where} must be {_TYPE_WORDS['table']}, got {_tname(data)} (in {file})")
    for k in data:
        if k not in schema:
            raise TrawlError(f"unknown key '{_join(where, k)}' in {file} (known: {', '.join(schema)})")
    out = {}
    for k, spec in schema.items():
        if k in data:
            out[k] = check_value(file, _join(where, k), spec, data[k], base_dir)
        elif spec.required and require:
            raise TrawlError(f"missing key '{_join(where, k)}' in {file} ({spec.help})")
        elif fill:
            out[k] = copy.deepcopy(spec.default)
    return out


def _join(where: str, k: str) -> str:
    return f"{where}.{k}" if where else k


def _attack_param_key(kind: str) -> Key:
    return Key({"int": "int", "float": "float", "bool": "bool", "str": "str", "path": "path",
                "list": "list[str]", "int_list": "list[int]"}[kind])


def check_attack(file: str, where: str, data: Any, base_dir: Path) -> dict:
    """``{"name", "label", "params"}`` from one ``[[attacks]]`` table (parameters checked by the attack)."""
    from extractor.attacks import ATTACKS, get_attack

    if not isinstance(data, dict):
        raise TrawlError(f"{where} must be a table, got {_tname(data)} (in {file})")
    if "name" not in data:
        raise TrawlError(f"missing key '{where}.name' in {file} (known attacks: {', '.join(ATTACKS)})")
    name = check_value(file, f"{where}.name", ATTACK_KEYS["name"], data["name"], base_dir)
    if name not in ATTACKS:
        raise TrawlError(f"{where}.name: unknown attack {name!r} in {file} (known: {', '.join(ATTACKS)})")
    cls = get_attack(name)
    table = cls.param_table()
    label = name
    params: dict = {}
    for k, v in data.items():
        if k == "name":
            continue
        if k == "label":
            label = check_value(file, f"{where}.label", ATTACK_KEYS["label"], v, base_dir)
            continue
        if k not in table:
            raise TrawlError(f"unknown key '{where}.{k}' in {file} (known for {name}: "
                             f"{', '.join(['label', *table])})")
        prm = table[k]
        if prm.kind in ("str", "path") and prm.default is None and v == "":
            continue
        params[k] = check_value(file, f"{where}.{k}", _attack_param_key(prm.kind), v, base_dir)
    try:
        cls.resolve(params)
    except TrawlError as exc:
        raise TrawlError(f"{where} ({name}) in {file}: {exc}") from None
    return {"name": name, "label": label, "params": params}


def check_attacks(file: str, where: str, data: Any, base_dir: Path) -> list[dict]:
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise TrawlError(f"{where} must be an array of tables ([[{where}]]), got {_tname(data)} (in {file})")
    if not data:
        raise TrawlError(f"{where} is empty in {file}: give at least one [[{where}]] table")
    out = [check_attack(file, f"{where}[{i}]", a, base_dir) for i, a in enumerate(data)]
    labels = [a["label"] for a in out]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise TrawlError(f"two entries of {where} are labelled {dup!r} in {file}; give them distinct 'label' keys")
    return out


def check_index(file: str, path: str) -> None:
    from corpora.errors import StoreError
    from suffix_index import IndexFormatError, SuffixIndex

    if not is_url(path) and not os.path.exists(path):
        raise TrawlError(f"index.path {path!r} does not exist (in {file}); build one with `trawl index build`")
    try:
        with SuffixIndex.open(path):
            pass
    except (IndexFormatError, StoreError) as exc:
        raise TrawlError(f"index.path {path!r} is not a usable index (in {file}): {exc}") from None


def _looks_like_path(name: str) -> bool:
    """A ``model`` that can only be a path: absolute, ``~``, ``.``-relative, or more than one ``/``
    (a hub name is ``name`` or ``org/name``)."""
    return name.startswith(("/", "~", ".")) or name.count("/") > 1 or "\\" in name


def _check_hf_folder(file: str, key: str, folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise TrawlError(f"{key} {str(folder)!r} is not an HF-format model folder: it has no config.json "
                         f"(in {file})")


def vllm_model(file: str, key: str, name: str, base_dir: Path) -> str:
    """``target.model`` of a ``backend = "vllm"`` target: an existing HF model folder (made absolute,
    relative to the file) or a hub name (``org/name``, passed to vLLM as is)."""
    folder = (base_dir / os.path.expanduser(name)).resolve()
    if folder.is_dir():
        _check_hf_folder(file, key, folder)
        return str(folder)
    if folder.exists():
        raise TrawlError(f"{key} {str(folder)!r} is a file; backend = \"vllm\" loads an HF-format model folder "
                         f"or hub name (in {file})")
    first = Path(os.path.expanduser(name)).parts[:1]
    if _looks_like_path(name) or not name.strip() or (first and (base_dir / first[0]).is_dir()):
        raise TrawlError(f"{key} {str(folder)!r} does not exist: backend = \"vllm\" needs an HF-format model "
                         f"folder or hub name (in {file})")
    return name  # a hub name (org/name): vLLM downloads it, or finds it in the Hugging Face cache


def finish_target(file: str, where: str, t: dict, base_dir: Path | None = None) -> dict:
    """Cross-key checks of a checked ``[target]`` table; fills ``model`` (embedded default, or the
    absolute folder of a vLLM target, relative to ``base_dir``, default the working folder)."""
    if t["backend"] == "vllm":
        if t["endpoints"]:
            raise TrawlError(f"{where}.endpoints: backend = \"vllm\" runs the model in the trawl process, "
                             f"without a server: drop endpoints (in {file})")
        if t["embedded"]:
            raise TrawlError(f"{where}.embedded: backend = \"vllm\" and embedded = true exclude each other "
                             f"(embedded serves a GGUF with llama.cpp) (in {file})")
        if t["model"] is None:
            what = "the model's name" if t["model_path"] is not None else "the HF-format model folder or hub name"
            raise TrawlError(f"missing key '{where}.model' in {file} (backend = \"vllm\": {what})")
        if t["model_path"] is not None:  # model_path is loaded; model only names it
            if not os.path.isdir(t["model_path"]):
                what = "is a file" if os.path.exists(t["model_path"]) else "does not exist"
                raise TrawlError(f"{where}.model_path {t['model_path']!r} {what}: backend = \"vllm\" loads an "
                                 f"HF-format model folder (in {file})")
            _check_hf_folder(file, f"{where}.model_path", Path(t["model_path"]))
        else:
            t["model"] = vllm_model(file, f"{where}.model", t["model"], Path(base_dir or os.getcwd()))
        if t["version"] is None:
            raise TrawlError(f"missing key '{where}.version' in {file} (the model version or checkpoint label)")
        return t
    if t["dtype"] != "auto":
        raise TrawlError(f"{where}.dtype is for backend = \"vllm\" (a server's dtype is set where it is started) "
                         f"(in {file})")
    if t["embedded"] and t["endpoints"]:
        raise TrawlError(f"{where}: give either endpoints or embedded = true, not both (in {file})")
    if not t["embedded"] and not t["endpoints"]:
        raise TrawlError(f"{where}: give endpoints = [\"http://...\"], embedded = true or backend = \"vllm\" "
                         f"(in {file})")
    if t["model_path"] is not None and not t["embedded"]:
        raise TrawlError(f"{where}.model_path is only for embedded = true or backend = \"vllm\" (in {file})")
    if t["model_path"] is not None and not os.path.isfile(t["model_path"]):
        raise TrawlError(f"{where}.model_path {t['model_path']!r} is not a file (in {file})")
    if t["model"] is None:
        if not t["embedded"]:
            raise TrawlError(f"missing key '{where}.model' in {file} (the model name sent in every request)")
        from extractor.serving.embedded import MODEL_ALIAS

        t["model"] = MODEL_ALIAS
    if t["version"] is None:
        raise TrawlError(f"missing key '{where}.version' in {file} (the model version or checkpoint label)")
    from extractor.backends import normalize_endpoint

    eps = []
    for i, e in enumerate(t["endpoints"]):
        try:
            eps.append(normalize_endpoint(e))
        except TrawlError as exc:
            raise TrawlError(f"{where}.endpoints[{i}]: {exc} (in {file})") from None
    dup = next((e for e in eps if eps.count(e) > 1), None)
    if dup:
        raise TrawlError(f"{where}.endpoints lists {dup} twice (in {file})")
    t["endpoints"] = eps
    return t


def validate_campaign(data: dict, *, file: str, base_dir: Path, default_name: str,
                      default_out: Path | None = None, check_index_files: bool = True) -> dict:
    """A parsed campaign TOML -> the resolved configuration (defaults filled, paths absolute)."""
    if not isinstance(data, dict):
        raise TrawlError(f"{file}: not a TOML table")
    known = [*SCHEMA, "attacks", "executor"]
    for k in data:
        if k not in known:
            raise TrawlError(f"unknown key '{k}' in {file} (known: {', '.join(known)})")
    cfg: dict = {}
    if "target" not in data:
        raise TrawlError(f"missing table [target] in {file} (the model under audit: model, version, and "
                         f"endpoints, embedded = true or backend = \"vllm\")")
    for section, schema in SCHEMA.items():
        cfg[section] = check_table(file, section, data.get(section, {}), schema, base_dir,
                                   require=section in ("index",) or section in data)
    if "attacks" not in data:
        raise TrawlError(f"missing [[attacks]] in {file}: give at least one attack")
    cfg["attacks"] = check_attacks(file, "attacks", data["attacks"], base_dir)
    cfg["executor"] = check_executor(file, data.get("executor"))
    finish_target(file, "target", cfg["target"], base_dir)
    c = cfg["campaign"]
    if c["name"] is None:
        c["name"] = default_name
    if not c["name"] or "/" in c["name"] or c["name"] in (".", ".."):
        raise TrawlError(f"campaign.name {c['name']!r} must be a non-empty name without '/' (in {file})")
    if c["out"] is None:
        c["out"] = str((default_out or (base_dir / "trawl-out" / c["name"])).resolve())
    if cfg["history"]["ledger"] is None:
        cfg["history"]["ledger"] = str(Path(c["out"]).parent / "ledger.parquet")
    p = cfg["pricing"]
    if p["gpu_hourly_usd"] is not None and (p["input_per_mtok"] or p["output_per_mtok"]):
        raise TrawlError(f"pricing: give either per-million-token prices or gpu_hourly_usd, not both (in {file})")
    from reports.gate import Gate

    for i, expr in enumerate(cfg["report"]["fail_if"]):
        try:
            Gate(expr)
        except Exception as exc:  # noqa: BLE001 - ReportError (user_error) or a parse error
            raise TrawlError(f"report.fail_if[{i}] in {file}: {exc}") from None
    rk = cfg["rank"]
    if "rank" in data and "enabled" not in data["rank"]:
        rk["enabled"] = True          # a [rank] table asks for the step
    if (rk["reference_endpoint"] is None) != (rk["reference_model"] is None):
        raise TrawlError(f"rank: give both reference_endpoint and reference_model (in {file})")
    if check_index_files:
        check_index(file, cfg["index"]["path"])
    return cfg


def check_executor(file: str, table) -> dict:
    """``[executor]`` (where the match step runs: ``kind = "local"`` or ``"ray"``, ``address``,
    ``cpus``, ``workers``, ``retries``; see :mod:`corpora.executor`) as a plain table, defaults
    filled; bad keys or values are one line naming the file."""
    from dataclasses import asdict

    from corpora.executor import spec_from_table

    return asdict(spec_from_table(table, file, error=TrawlError))


def load_toml(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise TrawlError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise TrawlError(f"{p}: is a folder, expected a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrawlError(f"{p}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise TrawlError(f"{p}: not UTF-8 text") from None


# ============================================================================ frozen copy

def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's, plus DEL, which TOML also bans
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    raise TypeError(type(v))


def dump_toml(cfg: dict) -> str:
    """The resolved configuration as TOML (None values omitted: TOML has no null)."""
    lines = ["# frozen copy written by trawl: the resolved configuration this campaign runs with", ""]
    for section in SCHEMA:
        lines.append(f"[{section}]")
        for k, v in cfg[section].items():
            if v is not None:
                lines.append(f"{k} = {_toml_scalar(v)}")
        lines.append("")
    ex = cfg.get("executor")
    if ex and ex.get("kind", "local") != "local":
        lines.append("[executor]")
        lines.extend(f"{k} = {_toml_scalar(v)}" for k, v in ex.items() if v is not None)
        lines.append("")
    for a in cfg["attacks"]:
        lines.append("[[attacks]]")
        lines.append(f"name = {_toml_scalar(a['name'])}")
        lines.append(f"label = {_toml_scalar(a['label'])}")
        for k, v in a["params"].items():
            if v is not None:
                lines.append(f"{k} = {_toml_scalar(v)}")
        lines.append("")
    return "\n".join(lines)


# ============================================================================ the campaign

def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def identity(cfg: dict) -> dict:
    """What makes two configurations the same campaign (endpoints, budget, concurrency may change)."""
    ident = {"name": cfg["campaign"]["name"], "seed": cfg["campaign"]["seed"], "model": cfg["target"]["model"],
             "version": cfg["target"]["version"], "attacks": cfg["attacks"], "index": cfg["index"],
             "window_tokens": cfg["report"]["window_tokens"]}
    backend = cfg["target"].get("backend", "openai")
    if backend != "openai":  # only then: the run ids (and ledger keys) of existing campaigns stay what they were
        ident["backend"] = backend
        if cfg["target"].get("model_path") is not None:  # the folder loaded (model only names it)
            ident["model_path"] = cfg["target"]["model_path"]
    return ident


@dataclass
class Campaign:
    """One campaign: its resolved configuration (:func:`validate_campaign`'s output)."""

    config: dict
    source: str = ""             # the file it came from (for messages)
    version_order: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config["campaign"]["name"]

    @property
    def out(self) -> Path:
        return Path(self.config["campaign"]["out"])

    @property
    def run_id(self) -> str:
        """Deterministic: the same campaign gets the same request ids in any folder."""
        return hashlib.sha1(_canonical(identity(self.config)).encode()).hexdigest()[:12]

    @property
    def identity_sha256(self) -> str:
        """Stored in ``campaign.json``: a resumed campaign must have the identity it started with."""
        return hashlib.sha256(_canonical(identity(self.config)).encode()).hexdigest()


def load_campaign(path: str | os.PathLike, *, out: str | None = None) -> Campaign:
    """Read and validate a campaign file (``out`` overrides ``campaign.out``); raises TrawlError."""
    p = Path(path)
    data = load_toml(p)
    if out is not None:
        data.setdefault("campaign", {})
        if isinstance(data["campaign"], dict):
            data["campaign"]["out"] = str(Path(out).resolve())
    cfg = validate_campaign(data, file=str(path), base_dir=p.resolve().parent, default_name=p.stem)
    return Campaign(cfg, source=str(path))
