"""write_report / `trawl report`: outputs, hostile text, redaction, gates, user errors."""
from __future__ import annotations

import json
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reports import ReportError, compute_metrics, write_report
from synthetic_runs import Corpus, Gen, write_run

HOSTILE = ("<script>alert('x')</script> </textarea></pre><img src=x onerror=alert(1)> "
           "a\x00b\x1b[31mred\x07 \u202eevil\u202c ]]> --> <!-- {{7*7}} ` ``` ~~~~ | # * _ ")
LONG_LINE = "L" * 30_000
PII = {
    "email": "jane.roe@example.org",
    "phone": "+1 (555) 010-4477",
    "ip": "203.0.113.77",
    "key": "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
    "aws": "AKIAIOSFODNN7EXAMPLE",
}
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


def tokenize(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text)


def words(rng, n, prefix="w"):
    return "".join(f" {prefix}{rng.randrange(300)}" for _ in range(n))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    rng = random.Random(3)
    hostile_doc = words(rng, 20) + " " + HOSTILE + words(rng, 40) + " " + LONG_LINE + words(rng, 30)
    pii_doc = (words(rng, 10) + f" Contact {PII['email']} or call {PII['phone']} from {PII['ip']}; "
               f"api {PII['key']} aws {PII['aws']}\n{PEM}\n" + words(rng, 60))
    license_doc = (" Permission is hereby granted, free of charge, to any person obtaining a copy of this "
                   "software" + words(rng, 70))
    docs = [hostile_doc, pii_doc, license_doc, words(rng, 200)]
    corpus = Corpus(docs, sources=["<b>evil</b>\x00source.txt", "people.csv", "LICENSE", "plain.txt"])
    filler = lambda n: [f" z{rng.randrange(500)}" for _ in range(n)]  # noqa: E731
    gens = [
        Gen(filler(10) + tokenize(hostile_doc) + filler(10), "divergence", "<img src=x onerror=alert(2)>"),
        Gen(filler(10) + tokenize(pii_doc) + filler(10), "divergence", "poem"),
        Gen(filler(5) + tokenize(license_doc) + filler(5), "prefix", "web"),
        # invalid UTF-8 next to a memorized passage (server bytes replaced or not)
        Gen([b"\xff\xfe", b" \xc3"] + tokenize(docs[3])[:80] + [b"\xe2\x82"], "unconditional", ""),
        Gen(filler(60), "discoverable", "doc3", extra={"doc_id": 3, "exact": False, "edit_distance_ratio": 0.02,
                                                      "target": HOSTILE + PII["email"]}),
    ]
    run = tmp_path_factory.mktemp("hostile") / "run"
    write_run(str(run), corpus, gens, min_tokens=10)
    return str(run)


def _read(p):
    with open(p, encoding="utf-8") as fh:
        return fh.read()


def test_write_report_outputs(hostile_run, tmp_path):
    paths = write_report(hostile_run, out_dir=tmp_path / "out")
    for p in (paths.html, paths.md, paths.json):
        assert os.path.getsize(p) > 0
    m = json.loads(_read(paths.json))
    assert m["schema_version"] == "1.2"
    assert m["metrics"]["memorized_generations"] == 4
    html_ = _read(paths.html)
    assert 'data-metric="memorized_token_fraction"' in html_
    assert "Nasr et al. 2023" in html_ and "Nasr et al. 2023" in _read(paths.md)
    # default out_dir = RUN/report
    p2 = write_report(hostile_run)
    assert p2.html == os.path.join(hostile_run, "report", "report.html")


def test_hostile_text_is_inert_in_html(hostile_run, tmp_path):
    h = _read(write_report(hostile_run, out_dir=tmp_path).html)
    low = h.lower()
    assert "<script" not in low
    assert "</textarea" not in low
    assert "<img" not in low and "&lt;img src=x onerror=alert(2)&gt;" in low
    assert "&lt;script&gt;alert(" in h           # shown, escaped
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", h)   # no raw control characters
    assert "\u202e" not in h                      # bidi override made visible
    assert "\\x1b[31mred\\x07" in h                # ESC and BEL shown as visible escapes
    assert "<pre class=\"x\">" in h
    assert "more characters not shown" in h       # the 30,000-character line is cut
    assert "Content-Security-Policy" in h and "script-src 'none'" in h
    assert "http://" not in h.split("<main>")[0]   # nothing remote in the head
    for tag in re.findall(r"<[a-zA-Z][^>]*>", h):          # real tags only (text has no raw '<')
        assert not re.search(r"\s(src|href|action|srcset|xlink:href|on\w+)\s*=", tag, re.I), tag
    # tags: only the ones the renderer writes
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", h))
    assert tags <= {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p", "b", "code",
                    "div", "section", "span", "table", "tr", "th", "td", "sub", "sup", "pre", "ul", "li", "dl",
                    "dt", "dd", "svg", "text", "line", "polyline", "rect", "title"}, tags


def test_hostile_text_in_markdown_stays_in_fences(hostile_run, tmp_path):
    md = _read(write_report(hostile_run, out_dir=tmp_path).md)
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", md)
    # outside fenced blocks, no raw HTML from the extracted text
    outside, fence = [], None
    for line in md.split("\n"):
        if fence is None:
            mm = re.match(r"^(~{4,})text$", line)
            if mm:
                fence = mm.group(1)
                continue
            outside.append(line)
        elif line == fence:
            fence = None
    assert fence is None, "unclosed fence"
    rest = "\n".join(outside)
    assert "<script" not in rest.lower() and "<img" not in rest.lower()
    # the fence is longer than any run of tildes inside (the hostile text has ~~~~)
    assert "~~~~~text" in md


def test_invalid_utf8_is_replaced(hostile_run):
    m = compute_metrics(hostile_run)
    ex = m["approximate"]["examples"]
    assert len(ex) == 1 and m["metrics"]["approximate_memorization_hits"] == 1
    m2 = compute_metrics(hostile_run)
    assert m2["metrics"]["memorized_generations"] == 4
    json.dumps(m2, allow_nan=False)  # no surrogates, serialisable
    un = m["per_attack"]["unconditional"]
    assert un["memorized_generations"] == 1 and un["longest_run_tokens"] >= 50


def test_categories_found(hostile_run):
    m = compute_metrics(hostile_run)
    t = m["metrics"]
    for c in ("emails", "phone_numbers", "ip_addresses", "keys", "license_text"):
        assert t[f"category_{c}"] >= 1, c
    assert PII["email"] in m["categories"]["emails"]["examples"]


def test_redact_masks_personal_data_everywhere(hostile_run, tmp_path):
    plain = write_report(hostile_run, out_dir=tmp_path / "plain")
    red = write_report(hostile_run, out_dir=tmp_path / "red", redact=True)
    blob = _read(plain.json)
    assert PII["email"] in blob
    for p in (red.html, red.md, red.json):
        text = _read(p)
        for k, v in PII.items():
            assert v not in text, (k, p)
            assert html_escape(v) not in text, (k, p)
        assert "MIIEowIBAAKCAQEA7" not in text
        assert "[EMAIL]" in text
    assert json.loads(_read(red.json))["redacted"] is True
    # the numbers are not changed by redaction
    assert json.loads(_read(red.json))["metrics"] == json.loads(_read(plain.json))["metrics"]


def html_escape(s):
    import html
    return html.escape(s, quote=True)


# --------------------------------------------------------------------------- runs with special cases

def _simple_run(tmp_path, min_tokens=10, cost=0.001, with_metadata=True, run_json=None, memorized=True):
    rng = random.Random(5)
    doc = words(rng, 300)
    toks = tokenize(doc)
    gens = [Gen([f" z{i}" for i in range(20)] + (toks[:120] if memorized else toks[:5]) + [" zz"], "divergence",
                "poem", cost_usd=cost),
            Gen([f" z{i}" for i in range(20)] + toks[100:135] + [" zz"], "divergence", "work", cost_usd=cost)]
    run = tmp_path / "run"
    write_run(str(run), Corpus([doc]), gens, min_tokens=min_tokens, with_metadata=with_metadata, run_json=run_json)
    return str(run)


def test_zero_cost_is_na_not_infinity(tmp_path):
    run = _simple_run(tmp_path, cost=0.0, run_json={"run_id": "r"})
    p = write_report(run)
    m = json.loads(_read(p.json))
    assert m["metrics"]["mb_per_dollar"] is None and m["metrics"]["usd_per_unique_window"] is None
    assert "n/a \u2014 no cost recorded" in _read(p.html)
    assert "n/a \u2014 no cost recorded" in _read(p.md)
    assert "Infinity" not in _read(p.json) and "\u221e" not in _read(p.html) and "inf</" not in _read(p.html)


def test_cost_from_run_json_when_column_is_zero(tmp_path):
    run = _simple_run(tmp_path, cost=0.0, run_json={"run_id": "r", "cost_usd": 2.0})
    m = compute_metrics(run)
    assert m["metrics"]["total_cost_usd"] == 2.0
    assert m["parameters"]["cost_source"] == "run.json"
    assert m["metrics"]["usd_per_unique_window"] == pytest.approx(2.0 / m["metrics"]["unique_memorized_windows"])


def test_threshold_below_matcher_is_not_reported(tmp_path):
    run = _simple_run(tmp_path, min_tokens=30)
    m = compute_metrics(run)
    t = m["metrics"]
    assert t["spans_ge_10"] is None and t["spans_ge_20"] is None
    assert t["spans_ge_30"] == 2 and t["spans_ge_50"] == 1
    assert m["parameters"]["thresholds_not_measured"] == [10, 20]
    p = write_report(run)
    assert "not measured" in _read(p.html) and "not measured" in _read(p.md)
    assert 'id="matcher-threshold">30 tokens' in _read(p.html)


def test_missing_min_tokens_metadata_is_inferred_with_warning(tmp_path):
    run = _simple_run(tmp_path, with_metadata=False)
    m = compute_metrics(run)
    assert m["parameters"]["matcher_min_tokens"] == 35
    assert m["metrics"]["spans_ge_30"] is None
    assert any("min_tokens" in w for w in m["warnings"])


def test_nothing_memorized(tmp_path):
    run = _simple_run(tmp_path, memorized=False)
    m = compute_metrics(run)
    t = m["metrics"]
    assert t["memorized_generations"] == 0 and t["unique_memorized_windows"] == 0
    assert t["longest_run_tokens"] == 35 and t["longest_run_bytes"] > 35      # the 35-token span of "work"
    assert t["good_turing_new_probability"] is None and t["usd_per_unique_window"] is None
    assert t["spans_ge_30"] == 1
    p = write_report(run)
    assert "No memorized span" in _read(p.html)


def test_window_above_matcher_threshold_is_an_error(tmp_path):
    run = _simple_run(tmp_path, min_tokens=30)
    with pytest.raises(ReportError, match="min_tokens=30"):
        compute_metrics(run, window_tokens=20)


# --------------------------------------------------------------------------- user errors and the CLI

def _cli(argv, capsys):
    from extractor.cli import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_gate_exit_codes(tmp_path, capsys):
    run = _simple_run(tmp_path)
    rc, out, err = _cli(["report", run, "--fail-if", "memorized_token_fraction > 0.001"], capsys)
    assert rc == 3 and "release gate crossed" in err
    rc, out, err = _cli(["report", run, "--fail-if", "memorized_token_fraction > 0.9 and generations > 1"], capsys)
    assert rc == 0 and "gate passed" in out
    rc, out, err = _cli(["report", run, "-q", "--fail-if", "unique_memorized_windows >= 1 or generations > 1e9"],
                        capsys)
    assert rc == 3
    assert os.path.exists(os.path.join(run, "report", "report.html"))


@pytest.mark.parametrize("expr, msg", [
    ("no_such_metric > 1", "unknown metric 'no_such_metric'"),
    ("__import__('os').system('true')", "--fail-if"),
    ("memorized_token_fraction >", "--fail-if"),
    ("mb_per_dollar > 1", "--fail-if"),
])
def test_cli_bad_gate_is_one_line(tmp_path, capsys, expr, msg):
    run = _simple_run(tmp_path, cost=0.0 if "dollar" in expr else 0.001)
    rc, out, err = _cli(["report", run, "--fail-if", expr], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and msg in err and "Traceback" not in err


def test_cli_missing_generations(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    rc, out, err = _cli(["report", str(tmp_path / "run")], capsys)
    assert rc == 2 and "no generations" in err and err.count("\n") == 1
    rc, out, err = _cli(["report", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "no such run folder" in err


def test_malformed_parquet(tmp_path, capsys):
    run = _simple_run(tmp_path)
    with open(os.path.join(run, "generations", "part-00000.parquet"), "wb") as fh:
        fh.write(b"PAR1 this is not parquet")
    rc, out, err = _cli(["report", run], capsys)
    assert rc == 2 and "not a readable Parquet file" in err and err.count("\n") == 1


def test_missing_column_and_missing_matches(tmp_path):
    run = _simple_run(tmp_path)
    pq.write_table(pa.table({"request_id": ["a"]}), os.path.join(run, "matches.parquet"))
    with pytest.raises(ReportError, match="missing column"):
        compute_metrics(run)
    os.remove(os.path.join(run, "matches.parquet"))
    with pytest.raises(ReportError, match="no matches.parquet"):
        compute_metrics(run)


def test_orphan_matches_warn(tmp_path):
    run = _simple_run(tmp_path)
    t = pq.read_table(os.path.join(run, "matches.parquet"))
    t2 = pa.concat_tables([t, t.slice(0, 1).set_column(1, "request_id", pa.array(["ghost"]))])
    pq.write_table(t2.replace_schema_metadata(t.schema.metadata), os.path.join(run, "matches.parquet"))
    m = compute_metrics(run)
    assert any("no generation row" in w for w in m["warnings"])
    assert m["metrics"]["memorized_generations"] == 1


def test_index_lookup_lists_documents(tmp_path):
    run = _simple_run(tmp_path)

    class Occ:
        def __init__(self, d):
            self.doc_id, self.source = d, f"s{d}"

    class FakeIndex:
        def find(self, text, limit=100):
            return [Occ(0), Occ(3), Occ(3)]

    m = compute_metrics(run, index=FakeIndex())
    s = m["top_spans"][0]
    assert s["documents_source"] == "index" and s["documents_holding"] == 2
    assert [d["doc_id"] for d in s["documents"]] == [0, 3]
    m2 = compute_metrics(run)
    assert m2["top_spans"][0]["documents"] == [{"doc_id": 0, "source": "doc0.txt"}]


def test_memorized_spans_jsonl(hostile_run, tmp_path):
    plain = write_report(hostile_run, out_dir=tmp_path / "p")
    rows = [json.loads(x) for x in _read(plain.spans).splitlines()]
    m = plain.metrics
    assert len(rows) == m["near_duplicates"]["distinct_texts"] <= m["metrics"]["memorized_spans"]
    assert rows[0]["tokens"] == m["metrics"]["longest_run_tokens"]
    assert all(r["documents"] and "doc_id" in r["documents"][0] for r in rows)
    red = write_report(hostile_run, out_dir=tmp_path / "r", redact=True)
    blob = _read(red.spans)
    assert PII["email"] not in blob and "[EMAIL]" in blob


def test_empty_matches_file(tmp_path):
    run = _simple_run(tmp_path)
    t = pq.read_table(os.path.join(run, "matches.parquet"))
    pq.write_table(t.slice(0, 0).replace_schema_metadata(t.schema.metadata), os.path.join(run, "matches.parquet"))
    p = write_report(run)
    m = p.metrics["metrics"]
    assert m["memorized_generations"] == 0 and m["spans_ge_10"] == 0 and m["generations"] == 2
    assert "No memorized span" in _read(p.html)


def test_matches_without_text_column(tmp_path):
    run = _simple_run(tmp_path)
    t = pq.read_table(os.path.join(run, "matches.parquet"))
    ref = compute_metrics(run)
    pq.write_table(t.drop_columns(["text", "source", "occurrences", "shard"]).replace_schema_metadata(
        t.schema.metadata), os.path.join(run, "matches.parquet"))
    m = compute_metrics(run)
    assert m["metrics"]["unique_memorized_windows"] == ref["metrics"]["unique_memorized_windows"]
    assert m["top_spans"][0]["text"] == ref["top_spans"][0]["text"] != ""


def test_index_from_matches_metadata(tmp_path, monkeypatch):
    """The matcher records the index folder and its manifest hash; reports opens it (when it is
    still the same index) to list every document holding a span, and closes it."""
    import sys
    import types
    run = _simple_run(tmp_path)
    idx_dir = tmp_path / "INDEX"
    idx_dir.mkdir()
    t = pq.read_table(os.path.join(run, "matches.parquet"))
    meta = dict(t.schema.metadata)
    meta[b"index"] = str(idx_dir).encode()
    meta[b"index_manifest_sha256"] = b"abc"
    pq.write_table(t.replace_schema_metadata(meta), os.path.join(run, "matches.parquet"))
    calls = []

    class Occ:
        def __init__(self, d):
            self.doc_id, self.source = d, f"s{d}"

    class FakeIndex:
        manifest_sha256 = "abc"

        @classmethod
        def open(cls, path):
            calls.append(("open", str(path)))
            return cls()

        def find(self, data, limit=100):
            assert isinstance(data, bytes)
            return [Occ(0), Occ(5)]

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "suffix_index", types.SimpleNamespace(SuffixIndex=FakeIndex))
    m = compute_metrics(run)
    assert m["top_spans"][0]["documents"] == [{"doc_id": 0, "source": "s0"}, {"doc_id": 5, "source": "s5"}]
    assert m["top_spans"][0]["documents_holding"] == 2
    assert m["parameters"]["documents_lookup"] == f"index {idx_dir}"
    assert calls == [("open", str(idx_dir)), ("close",)]
    FakeIndex.manifest_sha256 = "other"            # a rebuilt index: not used
    m = compute_metrics(run)
    assert m["top_spans"][0]["documents_source"].startswith("matches.parquet")
    assert any("sha256 differs" in w for w in m["warnings"])
    with pytest.raises(ReportError, match="no such index folder"):
        compute_metrics(run, index=tmp_path / "nope")


def test_spans_without_token_counts(tmp_path):
    run = _simple_run(tmp_path)
    t = pq.read_table(os.path.join(run, "matches.parquet"))
    extra = t.slice(0, 1).set_column(4, "tokens", pa.array([None], pa.int32()))
    pq.write_table(pa.concat_tables([t, extra]).replace_schema_metadata(t.schema.metadata),
                   os.path.join(run, "matches.parquet"))
    m = compute_metrics(run)
    assert m["metrics"]["spans_ge_10"] == t.num_rows
    assert any("no token count" in w for w in m["warnings"])


def test_hostile_attack_and_variant_names(tmp_path):
    """Names with NUL bytes, a separator-lookalike and invalid UTF-8 stay distinct groups."""
    rng = random.Random(9)
    doc = words(rng, 200)
    toks = tokenize(doc)
    names = [("divergence", "a\x00b"), ("divergence", "a"), ("divergence\x00a", "b"), ("divergence", b"\xff\xfe"),
             ("divergence", None)]
    gens = []
    for k, (atk, var) in enumerate(names):
        for j in range(k + 1):
            gens.append(Gen([" z%d" % i for i in range(10)] + (toks[:60] if j == 0 else toks[:5]), atk, var))
    run = tmp_path / "run"
    write_run(str(run), Corpus([doc]), gens, min_tokens=10)
    m = compute_metrics(str(run))
    pv = m["per_variant"]
    assert pv["divergence"]["a\x00b"]["generations"] == 1
    assert pv["divergence"]["a"]["generations"] == 2
    assert pv["divergence\x00a"]["b"]["generations"] == 3
    assert pv["divergence"]["\ufffd\ufffd"]["generations"] == 4
    assert pv["divergence"][""]["generations"] == 5
    assert all(f["memorized_generations"] == 1 for vs in pv.values() for f in vs.values())
    p = write_report(str(run))
    assert "\x00" not in _read(p.html) and "\x00" not in _read(p.md)


def test_unwritable_output_is_a_user_error(tmp_path, capsys):
    run = _simple_run(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, out, err = _cli(["report", run, "-o", str(blocker / "sub")], capsys)
    assert rc == 2 and "cannot create the report folder" in err and err.count("\n") == 1


def test_stale_matches_warn(tmp_path):
    run = _simple_run(tmp_path)
    part = os.path.join(run, "generations", "part-00000.parquet")
    m_time = os.path.getmtime(os.path.join(run, "matches.parquet"))
    os.utime(part, (m_time + 60, m_time + 60))
    m = compute_metrics(run)
    assert any("older than generations/part-00000.parquet" in w for w in m["warnings"])
    os.utime(part, (m_time - 60, m_time - 60))
    assert not any("older than" in w for w in compute_metrics(run)["warnings"])
