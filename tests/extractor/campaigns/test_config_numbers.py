"""Issue 17, item 1: every number of a campaign / sweep file and of the CLI's flags must be finite
and in range, and every gate metric a name trawl computes, checked before any work: nan compares
false with everything, so `tolerance = nan` switched the regression gate off, `max_dollars = nan`
the budget, and an unknown `fail_if` metric failed only after sampling."""
from __future__ import annotations

import pytest

from campaign_helpers import make_index, q, trawl
from extractor.campaigns.config import load_campaign
from extractor.campaigns.sweep import load_sweep
from extractor.errors import TrawlError
from repo import one_line_error


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return make_index(tmp_path_factory.mktemp("num-index"))


def campaign(index, *, target="", budget="", report="", attack="") -> str:
    return (f'[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9/v1"]\n{target}\n'
            f'[budget]\n{budget}\n[report]\n{report}\n'
            f'[[attacks]]\nname = "divergence"\nwords = ["poem"]\nsamples = 2\nmax_tokens = 16\n{attack}\n'
            f'[index]\npath = {q(index)}\n')


def load_err(tmp_path, text) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(TrawlError) as ei:
        load_campaign(p)
    return str(ei.value)


@pytest.mark.parametrize("part,text,message", [
    ("budget", "max_dollars = nan", "budget.max_dollars must be a finite number, got nan"),
    ("budget", "max_seconds = inf", "budget.max_seconds must be a finite number, got inf"),
    ("budget", "max_dollars = -inf", "budget.max_dollars must be a finite number"),
    ("target", "timeout = inf", "target.timeout must be a finite number, got inf"),
    ("target", "timeout = nan", "target.timeout must be a finite number, got nan"),
    ("target", "timeout = 1e300", "target.timeout must be <= 1e+06"),
    ("target", "concurrency = 9223372036854775807", "target.concurrency must be <="),
    ("target", "concurrency = 4097", "target.concurrency must be <= 4096"),   # the sampler's own bound
    ("target", "max_retries = 100000", "target.max_retries must be <= 1000"),
    ("report", "window_tokens = 9223372036854775807", "report.window_tokens must be <="),
    ("attack", "temperature = nan", "attacks[0].temperature must be a finite number, got nan"),
    ("attack", "top_p = inf", "attacks[0].top_p must be a finite number, got inf"),
    ("attack", "temperature = -0.5", "temperature must be >= 0"),
    ("report", 'fail_if = ["memorized_token_fractoin > 0.01"]',
     "unknown metric 'memorized_token_fractoin' (did you mean memorized_token_fraction"),
    ("report", 'fail_if = ["per_attack.divergence.no_such_figure > 1"]', "unknown metric"),
    ("report", 'fail_if = ["no_section.x > 1"]', "unknown metric 'no_section.x'"),
    ("report", 'fail_if = ["generations > 1e999"]', "out of range"),
])
def test_campaign_numbers_and_gates_checked_when_loading(tmp_path, index, part, text, message):
    msg = load_err(tmp_path, campaign(index, **{part: text}))
    assert message in msg and "c.toml" in msg, msg
    assert "\n" not in msg


def test_known_gates_and_numbers_still_load(tmp_path, index):
    p = tmp_path / "c.toml"
    p.write_text(campaign(index, budget="max_dollars = 2.5\nmax_seconds = 60", target="timeout = 30.0",
                          report='fail_if = ["memorized_token_fraction > 1%", "category_emails > 0", '
                                 '"per_attack.divergence.spans_ge_50 >= 1", '
                                 '"per_variant.divergence.poem.memorized_generations > 0", '
                                 '"by_category.recitation.memorized_spans > 0", "extrapolation.unique_windows > 1"]',
                          attack="temperature = 0.7"))
    c = load_campaign(p)
    assert c.config["budget"]["max_dollars"] == 2.5 and len(c.config["report"]["fail_if"]) == 6


def test_run_check_refuses_nan_budget_and_unknown_gate_metric(tmp_path, index):
    p = tmp_path / "c.toml"
    p.write_text(campaign(index, budget="max_dollars = nan"))
    one_line_error(trawl("run", str(p), "--check"), "budget.max_dollars must be a finite number, got nan")
    p.write_text(campaign(index, report='fail_if = ["memorised_tokens > 0"]'))
    one_line_error(trawl("run", str(p), "--check"), "unknown metric 'memorised_tokens'")


def sweep(index, history="") -> str:
    return (f'[history]\n{history}\n[defaults.index]\npath = {q(index)}\n\n'
            '[defaults.target]\nendpoints = ["http://127.0.0.1:9"]\n\n'
            '[[targets]]\nmodel = "m"\nversion = "v1"\n\n[[attacks]]\nname = "divergence"\nwords = ["poem"]\n')


@pytest.mark.parametrize("history,message", [
    ("tolerance = nan", "history.tolerance must be a finite number, got nan"),
    ("epsilon = inf", "history.epsilon must be a finite number, got inf"),
    ("tolerance = -0.1", "history.tolerance must be >= 0"),
])
def test_sweep_history_numbers_checked(tmp_path, index, history, message):
    p = tmp_path / "s.toml"
    p.write_text(sweep(index, history))
    with pytest.raises(TrawlError, match=message):
        load_sweep(p)


def test_sweep_defaults_numbers_checked(tmp_path, index):
    p = tmp_path / "s.toml"
    p.write_text(sweep(index).replace("[defaults.target]\n", "[defaults.target]\ntimeout = nan\n"))
    with pytest.raises(TrawlError, match="defaults.target.timeout must be a finite number"):
        load_sweep(p)


@pytest.mark.parametrize("flag,value,message", [
    ("--tolerance", "nan", "--tolerance must be a finite number, got nan"),
    ("--tolerance", "inf", "--tolerance must be a finite number, got inf"),
    ("--tolerance", "-1", "--tolerance must be >= 0"),
    ("--epsilon", "nan", "--epsilon must be a finite number, got nan"),
    ("--metric", "memorised", "unknown history metric 'memorised' in --metric"),
])
def test_history_flags_checked_before_the_ledger_is_read(tmp_path, flag, value, message):
    # the ledger does not exist: the flag's error comes first, before any file is touched
    one_line_error(trawl("history", str(tmp_path / "nope.parquet"), flag, value), message)


def test_trend_rule_refuses_nan_tolerance():
    from reports.errors import ReportError
    from reports.trend import compare

    for kw in ({"tolerance": float("nan")}, {"epsilon": float("inf")}):
        with pytest.raises(ReportError, match="finite number"):
            compare([], **kw)


def test_report_unknown_gate_metric_refused_before_reading_the_run(tmp_path):
    one_line_error(trawl("report", str(tmp_path / "no-run"), "--fail-if", "memorized_token_fractoin > 0"),
                   "unknown metric 'memorized_token_fractoin'")


@pytest.mark.parametrize("extra,message", [
    (["--param", "temperature=nan"], "parameter temperature must be a finite number"),
    (["--param", "temperature=-inf"], "parameter temperature must be a finite number"),
    (["--max-dollars", "inf"], "--max-dollars must be a finite number, got inf"),
    (["--max-seconds", "inf"], "--max-seconds must be a finite number, got inf"),
])
def test_sample_numbers_refused_before_anything_is_written(tmp_path, extra, message):
    out = tmp_path / "r"
    one_line_error(trawl("sample", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--out", str(out),
                         "--no-progress", "--attack", "divergence", *extra), message)
    assert not out.exists()


def test_demo_minutes_nan_refused(tmp_path):
    one_line_error(trawl("demo", "--out", str(tmp_path / "d"), "--minutes", "nan"), "--minutes must be a finite number")
    assert not (tmp_path / "d").exists()
