"""The longest verbatim run (one span: its tokens, bytes, text and source document) and the
run's state and prices in the report; known answers computed by hand."""
from __future__ import annotations

import html
import json

import pytest

from reports import compute_metrics, write_report
from synthetic_runs import Corpus, Gen, write_run

FILL = ["|"] * 5                         # "|" never occurs in the corpus: spans end exactly at the passages
SHORT = [f" a{i}" for i in range(12)]    # 12 tokens: 10 x 3 bytes + 2 x 4 bytes = 38 bytes
LONG = [f" longword{i:02d}" for i in range(11)]   # 11 tokens of 11 bytes = 121 bytes
WIDE = [f" b{i:02d}" for i in range(12)]          # 12 tokens of 4 bytes = 48 bytes
DOCS = ["".join(SHORT), "".join(LONG), "".join(WIDE)]
SOURCES = ["short.txt", "long.txt", "wide.txt"]


def _run(tmp_path, gens, name="run", **kw):
    run = tmp_path / name
    write_run(str(run), Corpus(DOCS, SOURCES), gens, min_tokens=10, **kw)
    return str(run)


def _read(p):
    with open(p, encoding="utf-8") as fh:
        return fh.read()


def test_longest_run_tokens_and_bytes_come_from_one_span(tmp_path):
    # the 12-token span has 38 bytes; the 11-token span has 121: the longest run is 12 tokens AND 38 bytes
    run = _run(tmp_path, [Gen(FILL + SHORT + FILL, request_id="r-short"),
                          Gen(FILL + LONG + FILL, request_id="r-long")])
    m = compute_metrics(run)
    assert (m["metrics"]["longest_run_tokens"], m["metrics"]["longest_run_bytes"]) == (12, 38)
    assert (m["per_attack"]["divergence"]["longest_run_tokens"], m["per_attack"]["divergence"]["longest_run_bytes"]) \
        == (12, 38)
    poem = m["per_variant"]["divergence"]["poem"]
    assert (poem["longest_run_tokens"], poem["longest_run_bytes"]) == (12, 38)
    assert m["longest_run"] == {
        "tokens": 12, "bytes": 38, "text": DOCS[0], "source": "short.txt", "doc_id": 0, "doc_offset": 0,
        "request_id": "r-short", "attack": "divergence", "variant": "poem", "occurrences": 1}
    p = write_report(run)
    assert "12 tokens (38 bytes)" in _read(p.html) and "12 tokens (38 bytes)" in _read(p.md)
    assert "(121 bytes)" not in _read(p.html)
    assert json.loads(_read(p.json))["longest_run"]["bytes"] == 38


def test_longest_run_ties_more_bytes_then_first_request(tmp_path):
    # three 12-token spans: 38 bytes (r-a), 48 bytes (r-z, poem) and 48 bytes (r-y, company):
    # more bytes beats the request order; among equal spans the first request id wins
    run = _run(tmp_path, [Gen(FILL + SHORT + FILL, request_id="r-a"),
                          Gen(FILL + WIDE + FILL, request_id="r-z"),
                          Gen(FILL + WIDE + FILL, variant="company", request_id="r-y"),
                          Gen(FILL + LONG + FILL, request_id="r-b")])
    m = compute_metrics(run)
    lr = m["longest_run"]
    assert (lr["tokens"], lr["bytes"], lr["request_id"], lr["variant"]) == (12, 48, "r-y", "company")
    assert (lr["text"], lr["source"], lr["doc_id"], lr["occurrences"]) == (DOCS[2], "wide.txt", 2, 1)
    assert (m["metrics"]["longest_run_tokens"], m["metrics"]["longest_run_bytes"]) == (12, 48)
    assert [(v, f["longest_run_tokens"], f["longest_run_bytes"]) for v, f in
            sorted(m["per_variant"]["divergence"].items())] == [("company", 12, 48), ("poem", 12, 48)]


def test_longest_run_text_kept_by_the_pass_equals_reading_it_again(tmp_path, monkeypatch):
    """The generations pass keeps the completion of the longest span's generation; the record equals the
    one that reads it again: a request id on two rows (the first row in file order is cut, as the
    re-read does), and a span whose request id has no generation row (then the text is read again)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reports import spans
    from synthetic_runs import MATCHES_SCHEMA
    runs = [_run(tmp_path, [Gen(FILL + SHORT + FILL, request_id="r-dup"), Gen(FILL + WIDE + FILL, request_id="r-dup"),
                            Gen(FILL + LONG + FILL, request_id="r-b")], name="dup", parts=2)]
    ghost = _run(tmp_path, [Gen(FILL + SHORT + FILL, request_id="r-a"), Gen(FILL + LONG + FILL, request_id="r-b")],
                 name="ghost")
    path = f"{ghost}/matches.parquet"
    t = pq.read_table(path)
    row = dict(t.slice(0, 1).to_pylist()[0], request_id="r-ghost", tokens=40, span_end=200)
    pq.write_table(pa.concat_tables([t, pa.Table.from_pylist([row], schema=MATCHES_SCHEMA)]).replace_schema_metadata(
        t.schema.metadata), path)
    runs.append(ghost)
    real_read = spans.completion_bytes
    for run in runs:
        reads = []
        monkeypatch.setattr(spans, "completion_bytes", lambda parts, rid: reads.append(rid) or real_read(parts, rid))
        kept = compute_metrics(run)["longest_run"]
        assert reads == (["r-a"] if run == ghost else [])
        monkeypatch.setattr(spans.MatchIndex, "longest_row", lambda self: None)
        assert compute_metrics(run)["longest_run"] == kept and reads[-1] == kept["request_id"]
        monkeypatch.undo()
        if run != ghost:        # the 48-byte span of r-dup's second row, cut from its first row's completion
            assert (kept["bytes"], kept["text"]) == (48, DOCS[0] + "|" * 5)
    assert kept["text"] == DOCS[0] and kept["tokens"] == 12


def test_longest_run_below_50_tokens_shown_escaped_and_redacted(tmp_path):
    toks = [" <b>x</b>", " jane.roe@example.org"] + [f" c{i}" for i in range(10)]
    docs = DOCS + ["".join(toks)]
    run = tmp_path / "run"
    write_run(str(run), Corpus(docs, SOURCES + ["<i>evil</i>.txt"]), [Gen(FILL + toks + FILL, request_id="r1")],
              min_tokens=10)
    m = compute_metrics(str(run))
    assert m["longest_run"]["tokens"] == 12 and m["longest_run"]["text"] == "".join(toks)
    assert m["top_spans"] == []                  # below 50 tokens: not in the memorized span list
    p = write_report(str(run), out_dir=str(tmp_path / "plain"))
    page = _read(p.html)
    assert 'id="longest-run"' in page and html.escape("".join(toks)) in page and "<b>x</b>" not in page
    assert "&lt;i&gt;evil&lt;/i&gt;.txt" in page and "<i>evil" not in page
    md = _read(p.md)
    assert "## Longest verbatim run" in md and "".join(toks) in md and "jane.roe@example.org" in md
    r = write_report(str(run), out_dir=str(tmp_path / "red"), redact=True)
    for path in (r.html, r.md, r.json):
        assert "jane.roe@example.org" not in _read(path)
    assert "[EMAIL]" in json.loads(_read(r.json))["longest_run"]["text"]
    assert "[EMAIL]" in _read(r.html) and "[EMAIL]" in _read(r.md)


def test_no_span_gives_a_null_longest_run(tmp_path):
    run = _run(tmp_path, [Gen(FILL + [" zz"] + FILL)])
    m = compute_metrics(run)
    assert m["longest_run"] is None
    assert (m["metrics"]["longest_run_tokens"], m["metrics"]["longest_run_bytes"]) == (0, 0)
    p = write_report(run)
    assert json.loads(_read(p.json))["longest_run"] is None
    assert "No verbatim span was reported" in _read(p.html) and "No verbatim span was reported" in _read(p.md)


# --------------------------------------------------------------------------- run state and prices

STOPPED = {"run_id": "r", "status": "stopped", "stopped_early": True, "stop_reason": "max_seconds",
           "planned": 133, "finished": 2, "cost_usd": 0.0005}
CONFIG = {"run_id": "r", "model": "m", "budget": {"max_generations": None, "max_tokens": None, "max_dollars": None,
                                                  "max_seconds": 60.0},
          "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 0.0, "gpu_hourly_usd": 0.1}}


def test_stopped_run_warns_and_shows_prices(tmp_path):
    run = _run(tmp_path, [Gen(FILL + SHORT + FILL), Gen(FILL + LONG + FILL)], run_json=STOPPED, config=CONFIG)
    m = compute_metrics(run)
    want = "This run stopped early (max_seconds): 2 of 133 planned generations; the figures cover only what was stored"
    assert m["warnings"][0] == want
    assert m["run"]["state"] == {"status": "stopped", "stop_reason": "max_seconds", "stopped_early": True,
                                 "planned": 133, "finished": 2, "generation_rows": 2, "warning": want}
    assert m["run"]["config"]["pricing"] == CONFIG["pricing"] and m["run"]["config"]["budget"] == CONFIG["budget"]
    assert m["run"]["pricing_basis"] == "gpu_hourly_usd: 0.1 (hourly GPU price x sampling wall time)"
    assert m["run"]["budget_caps"] == "max_seconds: 60"
    p = write_report(run)
    for text in (_read(p.html), _read(p.md).replace("\\_", "_")):
        assert "status: stopped (max_seconds); 2 of 133 planned generations finished" in text
        assert want in text
        assert "gpu_hourly_usd: 0.1" in text and "max_seconds: 60" in text
    page = _read(p.html)
    cost = page[page.index('id="cost"'):page.index('id="per-attack"')]
    assert "gpu_hourly_usd: 0.1" in cost


def test_running_run_says_it_may_have_crashed(tmp_path):
    rj = dict(STOPPED, status="running", stopped_early=False, stop_reason=None)
    run = _run(tmp_path, [Gen(FILL + SHORT + FILL)], run_json=rj,
               config=dict(CONFIG, pricing={"input_per_mtok": 0.5, "output_per_mtok": 1.5, "gpu_hourly_usd": None}))
    m = compute_metrics(run)
    assert m["warnings"][0] == ('run.json says "running": the run was still running or crashed: '
                                "2 of 133 planned generations; the figures cover the generations stored so far")
    assert m["run"]["pricing_basis"] == ("input_per_mtok: 0.5, output_per_mtok: 1.5 "
                                         "(USD per million prompt / completion tokens)")
    p = write_report(run)
    assert "the run was still running or crashed" in _read(p.html)
    assert "the run was still running or crashed" in _read(p.md)


@pytest.mark.parametrize("run_json, status, warned", [
    ({"run_id": "r", "status": "finished", "stop_reason": None, "planned": 1, "finished": 1}, "finished", False),
    ({"run_id": "r"}, "not recorded", False),
    ({"run_id": "r", "status": "incomplete", "stop_reason": "failed_requests", "planned": 3, "finished": 1},
     "incomplete", True),
])
def test_finished_or_unknown_status_gives_no_early_stop_warning(tmp_path, run_json, status, warned):
    run = _run(tmp_path, [Gen(FILL + SHORT + FILL)], run_json=run_json)
    m = compute_metrics(run)
    assert m["run"]["state"]["status"] == status
    assert bool(m["run"]["state"]["warning"]) is warned
    assert any("planned generations" in w for w in m["warnings"]) is warned
    assert m["run"]["pricing_basis"].startswith("not recorded") and m["run"]["config"]["pricing"] is None
