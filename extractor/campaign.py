"""Campaigns: one audit of one model version, described by a TOML file, run as small steps.

``trawl run campaign.toml`` = load and validate the file (:func:`load_campaign`), then
:func:`run_campaign`, which runs four steps, each with one job, in order:

1. ``sample``  - the attacks against the target (:func:`extractor.sampler.run_attacks`,
   always with ``resume=True``; an ``embedded = true`` target starts the embedded
   llama.cpp server for this step only; a ``backend = "vllm"`` target runs vLLM's
   engine in this process, :mod:`extractor.backends.vllm_offline`);
2. ``match``   - every maximal verbatim span of >= ``index.min_tokens`` tokens
   (:func:`suffix_index.matchfile.match_to_parquet`) -> ``run/matches.parquet``;
3. ``report``  - :func:`reports.compute_metrics` + :func:`reports.write_report` ->
   ``report/``; the ``report.fail_if`` release gates are evaluated;
4. ``history`` - the metrics are appended to the ledger (:mod:`extractor.history`).

The campaign folder::

    OUT/
      campaign.toml     frozen copy of the resolved configuration (absolute paths)
      campaign.json     status, rewritten atomically after every step
      run/              the sampler's run folder (config.json, generations/, run.json, matches.parquet)
      report/           report.html, report.md, metrics.json
      llama-server.log  (embedded targets)

A re-run reads ``campaign.json``, skips the finished steps and resumes the first
unfinished one (the sampler resumes its run folder: nothing finished is redone or
stored twice). A finished campaign is not run again unless ``rerun=True``, which
moves the old folder aside (``OUT.old-<date>``) and starts afresh.

The configuration schema is defined here (:data:`SCHEMA`) and checked strictly:
unknown keys, wrong types, a missing or invalid index are one-line
:class:`~extractor.errors.TrawlError` messages naming the key and the file.
README.md's "Configuration reference" documents every key (a test keeps the two in step).
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from extractor.errors import TrawlError
from corpora.storage import FolderLock, FolderLocked, is_locked, utcnow, utcnow_compact, write_text_atomic

FORMAT = "trawl-campaign"
FORMAT_VERSION = 1
STEPS = ("sample", "match", "report", "history")
GATE_EXIT_CODE = 3


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
        "endpoints": Key("list[str]", [], "base URLs of OpenAI-compatible /v1/completions servers that serve "
                                          "this model (replicas: the load is spread, a dead one is routed around)"),
        "embedded": Key("bool", False, "serve the embedded Gemma-3-270m (or model_path) with the local "
                                       "llama.cpp server for the duration of the campaign"),
        "model_path": Key("path", None, "embedded = true: a GGUF file to serve instead of the shipped model; "
                                        "backend = \"vllm\": the HF-format model folder to load, model then only "
                                        "naming it (ledger, sweep series: checkpoints of one model)"),
        "api_key_env": Key("str", "OPENAI_API_KEY", "environment variable holding the API key (never written)"),
        "concurrency": Key("int", 4, "requests in flight over all endpoints", minimum=1),
        "timeout": Key("float", 300.0, "total time limit of one request, seconds", minimum=0.001),
        "max_retries": Key("int", 6, "retries of a failed request (over the endpoints, with backoff)", minimum=0),
        "token_info": Key("str", "auto", "where token boundaries come from", choices=("auto", "logprobs", "tokenize")),
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
        "path": Key("path", None, "suffix-array index folder (trawl index build)", required=True),
        "min_tokens": Key("int", 10, "matcher threshold: fewest whole tokens in a reported span (10 fills the "
                                     "report's 10-50 token histogram)", minimum=1),
        "min_bytes": Key("int", None, "threshold for generations without token offsets (default 4 x min_tokens)",
                         minimum=1),
    },
    "report": {
        "window_tokens": Key("int", 50, "tokens in a memorized window (50, as in Nasr et al. 2023)", minimum=1),
        "redact": Key("bool", False, "mask personal data and secrets in the report"),
        "fail_if": Key("list[str]", [], "release gates (trawl report --fail-if grammar); exit code 3 when any holds"),
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
    "history": "the ledger",
}

_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "path": "a string (a path)", "list[str]": "a list of strings", "list[int]": "a list of integers",
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
    if kind in ("str", "path"):
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
        if kind == "path":
            if not out:
                raise TrawlError(f"{key} must not be empty (in {file})")
            out = str((base_dir / os.path.expanduser(out)).resolve())
        if spec.minimum is not None and out < spec.minimum:
            raise TrawlError(f"{key} must be >= {spec.minimum:g}, got {out!r} (in {file})")
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
    from suffix_index import IndexFormatError, SuffixIndex

    if not os.path.exists(path):
        raise TrawlError(f"index.path {path!r} does not exist (in {file}); build one with `trawl index build`")
    try:
        with SuffixIndex.open(path):
            pass
    except IndexFormatError as exc:
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
        from extractor.embedded import MODEL_ALIAS

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
    known = [*SCHEMA, "attacks"]
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
    if check_index_files:
        check_index(file, cfg["index"]["path"])
    return cfg


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


@dataclass
class CampaignResult:
    name: str
    out: str
    status: str                  # finished, failed, interrupted
    skipped: bool = False        # already finished: nothing was run
    report_html: str | None = None
    gates_crossed: list[str] = field(default_factory=list)
    error: str | None = None
    steps_run: list[str] = field(default_factory=list)
    sample: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status != "finished":
            return 2
        return GATE_EXIT_CODE if self.gates_crossed else 0

    def line(self) -> str:
        if self.status != "finished":
            return f"{self.name}: {self.status}: {self.error}"
        what = "already finished, skipped" if self.skipped else f"finished ({', '.join(self.steps_run)})"
        t = self.metrics
        fig = ""
        if t:
            f = t.get("memorized_token_fraction")
            fig = (f"; {t.get('generations', 0)} generations, memorized tokens "
                   f"{(f or 0) * 100:.4g}%, {t.get('unique_memorized_windows', 0)} unique windows")
        gates = f"; GATE CROSSED: {'; '.join(self.gates_crossed)}" if self.gates_crossed else ""
        return f"{self.name}: {what}{fig}{gates} -> {self.report_html}"


def load_campaign(path: str | os.PathLike, *, out: str | None = None) -> Campaign:
    p = Path(path)
    data = load_toml(p)
    if out is not None:
        data.setdefault("campaign", {})
        if isinstance(data["campaign"], dict):
            data["campaign"]["out"] = str(Path(out).resolve())
    cfg = validate_campaign(data, file=str(path), base_dir=p.resolve().parent, default_name=p.stem)
    return Campaign(cfg, source=str(path))




def read_status(out: Path) -> dict | None:
    p = Path(out) / "campaign.json"
    if not p.exists():
        return None
    try:
        st = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrawlError(f"{p}: unreadable campaign status ({exc}); move the folder away to start afresh") from None
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise TrawlError(f"{p}: not a trawl campaign status file")
    return st


class _Runner:
    """Runs the steps of one campaign, recording each in campaign.json."""

    def __init__(self, c: Campaign, *, progress: bool, log: Callable[[str], None]):
        self.c = c
        self.cfg = c.config
        self.out = c.out
        self.run_dir = self.out / "run"
        self.report_dir = self.out / "report"
        self.progress = progress
        self.log = log
        self.status: dict = {}

    def save(self) -> None:
        self.status["updated_at"] = utcnow()
        write_text_atomic(self.out / "campaign.json", json.dumps(self.status, indent=1, ensure_ascii=False) + "\n")

    # -- steps --------------------------------------------------------------------------------
    def step_sample(self) -> dict:
        from extractor.attacks import AttackSpec
        from extractor.sampling.budget import Budget, Pricing
        from extractor.sampling import run_attacks

        t = self.cfg["target"]
        specs = [AttackSpec(a["name"], dict(a["params"])) for a in self.cfg["attacks"]]
        budget = Budget(**self.cfg["budget"])
        pricing = Pricing(**self.cfg["pricing"])

        def sample(endpoints: list[str], model: str, api_key_env, backend: str = "openai", tokenizer_file=None):
            return run_attacks(
                str(self.run_dir), endpoint=endpoints if len(endpoints) > 1 else endpoints[0], model=model,
                attacks=specs, budget=budget, pricing=pricing, concurrency=t["concurrency"], resume=True,
                progress=self.progress, api_key_env=api_key_env, timeout=t["timeout"],
                max_retries=t["max_retries"], run_id=self.c.run_id, seed=self.cfg["campaign"]["seed"],
                token_info=t["token_info"], backend=backend, tokenizer_file=tokenizer_file, log=self.log)

        if t["backend"] == "vllm":
            from extractor.backends.vllm_offline import shutdown_engines

            # one model's engine at a time: a sweep's previous target (another model) gives its memory back;
            # an engine already running this model (the sweep's previous attack) is reused
            load = t["model_path"] or t["model"]
            shutdown_engines(keep=load)
            summary = sample([f"vllm://{load}"], load, None, backend="vllm")
        elif t["embedded"]:
            from extractor.embedded import EmbeddedServer

            self.log(f"{self.c.name}: starting the embedded model server")
            with EmbeddedServer(t["model_path"], alias=t["model"], log_path=self.out / "llama-server.log") as srv:
                # trawl knows the model file: token boundaries in this process (no tokenize requests)
                tok = str(srv.model_path) if t["token_info"] == "auto" else None
                summary = sample([srv.base_url], srv.model, None, tokenizer_file=tok)
        else:
            summary = sample(t["endpoints"], t["model"], t["api_key_env"])
        info = {k: getattr(summary, k) for k in ("run_id", "status", "stop_reason", "planned", "finished",
                                                 "new_generations", "failed_requests", "completion_tokens",
                                                 "cost_usd")}
        if summary.status not in ("finished", "stopped"):
            raise TrawlError(f"sampling ended {summary.status} ({summary.stop_reason}): {summary.finished}/"
                             f"{summary.planned} generations stored; run again to resume")
        return info

    def step_match(self) -> dict:
        from suffix_index import SuffixIndex
        from suffix_index.matchfile import match_to_parquet

        ix = self.cfg["index"]
        with SuffixIndex.open(ix["path"]) as idx:
            r = match_to_parquet(idx, self.run_dir, self.run_dir / "matches.parquet", min_tokens=ix["min_tokens"],
                                 min_bytes=ix["min_bytes"], progress=self.progress)
        return {"spans": r["spans"], "generations": r["generations"], "matches": r["out"]}

    def step_report(self) -> dict:
        from reports import compute_metrics, write_report
        from reports.gate import Gate

        r = self.cfg["report"]
        metrics = compute_metrics(self.run_dir, window_tokens=r["window_tokens"], index=self.cfg["index"]["path"])
        gates = [Gate(e) for e in r["fail_if"]]
        for g in gates:
            g.check_names(metrics)
        paths = write_report(self.run_dir, out_dir=self.report_dir, redact=r["redact"], metrics=metrics)
        crossed = [g.explain(metrics) for g in gates if g.evaluate(metrics)]
        return {"html": str(paths.html), "md": str(paths.md), "json": str(paths.json), "gates_crossed": crossed}

    def step_history(self) -> dict:
        from extractor.history import append_rows, ledger_rows

        h = self.cfg["history"]
        if not h["record"]:
            return {"recorded": 0, "ledger": None}
        metrics = json.loads((self.report_dir / "metrics.json").read_text(encoding="utf-8"))
        rows = ledger_rows(self.cfg, metrics, uid=self.status["uid"], report_path=str(self.report_dir / "report.html"),
                           date=self.status["steps"]["report"].get("ended_at") or utcnow())
        added = append_rows(h["ledger"], rows)
        return {"recorded": added, "ledger": h["ledger"]}

    def gates_on_stored(self, rep: dict) -> list[str]:
        """The current ``report.fail_if`` gates evaluated on the stored metrics (a finished campaign)."""
        from reports.gate import Gate

        try:
            metrics = json.loads((self.report_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return list(rep.get("gates_crossed", []))
        gates = [Gate(e) for e in self.cfg["report"]["fail_if"]]
        for g in gates:
            g.check_names(metrics)
        return [g.explain(metrics) for g in gates if g.evaluate(metrics)]

    # -- executor -------------------------------------------------------------------------------
    def run(self, stop_after: str | None = None) -> CampaignResult:
        c = self.c
        st = read_status(self.out)
        cfg_id = hashlib.sha256(_canonical(identity(self.cfg)).encode()).hexdigest()
        if st is None:
            if self.out.exists() and any(self.out.iterdir()):
                raise TrawlError(f"{self.out} exists and is not a campaign folder; choose another campaign.out")
            self.out.mkdir(parents=True, exist_ok=True)
            st = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": c.name, "uid": uuid.uuid4().hex,
                  "identity_sha256": cfg_id, "run_id": c.run_id, "status": "new", "created_at": utcnow(),
                  "steps": {s: {"status": "pending"} for s in STEPS}, "sessions": []}
        elif st.get("identity_sha256") != cfg_id:
            raise TrawlError(f"campaign {c.name!r}: the configuration (model, version, backend, attacks, index, "
                             f"seed or window) differs from the one frozen in {self.out / 'campaign.toml'}; rerun it "
                             f"afresh (--rerun) or give it another campaign.out")
        self.status = st
        if st["status"] == "finished":
            rep = st["steps"]["report"].get("result", {})
            return CampaignResult(c.name, str(self.out), "finished", skipped=True, report_html=rep.get("html"),
                                  gates_crossed=self.gates_on_stored(rep),
                                  sample=st["steps"]["sample"].get("result", {}), metrics=st.get("metrics", {}))
        write_text_atomic(self.out / "campaign.toml", dump_toml(self.cfg))
        session = {"started_at": utcnow(), "pid": os.getpid(), "steps_run": []}
        st["sessions"].append(session)
        st["status"] = "running"
        self.save()
        result = CampaignResult(c.name, str(self.out), "running")
        for step in STEPS:
            rec = st["steps"][step]
            if rec.get("status") == "done":
                continue
            rec.update({"status": "running", "started_at": utcnow(), "error": None})
            self.save()
            try:
                out = getattr(self, f"step_{step}")()
            except KeyboardInterrupt:
                rec.update({"status": "interrupted", "ended_at": utcnow()})
                st["status"] = "interrupted"
                self.save()
                raise
            except Exception as exc:
                rec.update({"status": "failed", "ended_at": utcnow(), "error": f"{type(exc).__name__}: {exc}"})
                st["status"] = "failed"
                session["ended_at"] = utcnow()
                self.save()
                raise
            rec.update({"status": "done", "ended_at": utcnow(), "result": out})
            session["steps_run"].append(step)
            result.steps_run.append(step)
            if step == "report":
                m = json.loads((self.report_dir / "metrics.json").read_text(encoding="utf-8"))["metrics"]
                st["metrics"] = {k: m.get(k) for k in ("generations", "generated_tokens", "memorized_token_fraction",
                                                       "memorized_generation_fraction", "unique_memorized_windows",
                                                       "longest_run_tokens", "total_cost_usd")}
                st["report"] = out["html"]
            self.save()
            if stop_after == step:
                st["status"] = "running"
                session["ended_at"] = utcnow()
                self.save()
                result.status = "stopped"
                return result
        st["status"] = "finished"
        st["finished_at"] = session["ended_at"] = utcnow()
        self.save()
        rep = st["steps"]["report"]["result"]
        result.status = "finished"
        result.report_html = rep["html"]
        result.gates_crossed = list(rep["gates_crossed"])
        result.sample = st["steps"]["sample"].get("result", {})
        result.metrics = st.get("metrics", {})
        return result


def is_running(out: Path) -> bool:
    """True when a process holds the campaign folder's lock (the campaign is running now)."""
    return is_locked(Path(out).with_name(Path(out).name + ".lock"))


class CampaignLocked(TrawlError, FolderLocked):
    exit_code = 75  # EX_TEMPFAIL: the same campaign is running elsewhere; try again later


def run_campaign(c: Campaign, *, rerun: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None, stop_after: str | None = None) -> CampaignResult:
    """Run (or resume, or skip when finished) one campaign; see the module docstring.

    Raises TrawlError (and the other packages' user errors) when a step fails; the
    failure is recorded in ``campaign.json`` and the next call resumes that step.
    Two processes never run the same campaign folder at once: a non-blocking
    ``fcntl.flock`` on ``OUT.lock`` (next to the folder, so ``--rerun`` can move the
    folder) refuses the second with :class:`CampaignLocked` (exit code 75).
    """
    log = log or (lambda msg: print(f"trawl: {msg}", file=sys.stderr))
    out = c.out
    lock = FolderLock(out.with_name(out.name + ".lock"), busy=lambda holder: CampaignLocked(
        f"campaign {c.name!r} is already running in another process ({out}); nothing done"))
    with lock:
        return _run_locked(c, rerun=rerun, progress=progress, log=log, stop_after=stop_after)


def _run_locked(c: Campaign, *, rerun: bool, progress: bool, log, stop_after) -> CampaignResult:
    out = c.out
    if rerun and out.exists():
        st = read_status(out) if (out / "campaign.json").exists() else None
        if st is None and any(out.iterdir()):
            raise TrawlError(f"{out} exists and is not a campaign folder; refusing to move it for --rerun")
        aside = out.with_name(f"{out.name}.old-{utcnow_compact()}")
        shutil.move(str(out), str(aside))
        log(f"{c.name}: previous campaign folder moved to {aside}")
    return _Runner(c, progress=progress, log=log).run(stop_after=stop_after)
