"""Unit tests with hand-computed answers: estimators, interval union, gates, categories,
redaction, near-duplicate clustering, text cleaning."""
from __future__ import annotations

import random

import numpy as np
import pytest

from reports import ReportError
from reports import extrapolate as ex
from reports.categories import find_all, redact
from reports.gate import Gate
from reports.spans import union_length
from reports.neardup import cluster_texts
from reports.render_common import clean, md_cell, md_fence


def test_good_turing_and_chao1_by_hand():
    freq = {1: 6, 2: 3, 3: 1}            # n_obs = 10, N = 6 + 6 + 3 = 15
    assert ex.good_turing_new(freq) == pytest.approx(6 / 15)
    assert ex.chao1(freq) == pytest.approx(10 + 36 / 6)           # 16
    assert ex.chao1({1: 5}) == pytest.approx(5 + 5 * 4 / 2)        # f2 = 0: bias-corrected, 15
    assert ex.chao1({2: 4}) == 4                                    # no singletons: nothing unseen
    assert ex.good_turing_new({}) is None
    assert ex.frequency_counts([1, 1, 2, 3, 3, 3, 0]) == {1: 2, 2: 1, 3: 3}


def test_extrapolation_by_hand():
    freq = {1: 6, 2: 3, 3: 1}
    T = 20
    f0 = 6.0                                                          # chao1 - n_obs
    base = 1 - 6 / (T * f0 + 6)
    assert ex.extrapolate(freq, T, 0) == 10
    assert ex.extrapolate(freq, T, 20) == pytest.approx(10 + f0 * (1 - base ** 20))
    assert ex.extrapolate(freq, T, 10 ** 9) == pytest.approx(16)      # tends to Chao1
    curve = ex.extrapolation_curve(freq, T, factor=3.0, points=10)
    assert curve[0] == (20, 10.0) and curve[-1][0] == 60
    ys = [y for _, y in curve]
    assert ys == sorted(ys)
    assert ex.extrapolate({2: 5}, T, 100) == 5


def test_union_length_by_hand():
    keys = np.array([1, 1, 1, 2, 1])
    s = np.array([0, 5, 20, 0, 8])
    e = np.array([10, 12, 25, 4, 9])
    # key 1: [0,10) u [5,12) u [8,9) u [20,25) = 12 + 5 = 17; key 2: 4
    assert union_length(keys, s, e) == {1: 17, 2: 4}
    comp = union_length((np.array([0, 0, 1]), np.array([7, 7, 7])), np.array([0, 2, 0]), np.array([5, 6, 5]))
    assert comp == {(0, 7): 6, (1, 7): 5}
    assert union_length(np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == {}


METRICS = {"metrics": {"memorized_token_fraction": 0.002, "generations": 1000, "unique_memorized_windows": 12,
                       "mb_per_dollar": None},
           "per_attack": {"divergence": {"memorized_generations": 7}}}


@pytest.mark.parametrize("expr, want", [
    ("memorized_token_fraction > 0.001", True),
    ("memorized_token_fraction > 1e-2", False),
    ("memorized_token_fraction >= 0.2%", True),
    ("generations == 1_000 and unique_memorized_windows < 10", False),
    ("generations == 1000 and not unique_memorized_windows < 10", True),
    ("unique_memorized_windows > 100 or (generations > 10 and per_attack.divergence.memorized_generations >= 7)", True),
    ("0.001 < memorized_token_fraction", True),
    ("generations != 1000", False),
    ("a_b > 1 or generations > 1", None),
])
def test_gate_evaluation(expr, want):
    if want is None:
        with pytest.raises(ReportError, match="unknown metric 'a_b'"):
            Gate(expr).evaluate(METRICS)
    else:
        assert Gate(expr).evaluate(METRICS) is want


@pytest.mark.parametrize("expr", ["", "generations", "generations >", "> 1", "generations > 1 extra",
                                  "(generations > 1", "__import__('os')", "generations > 1; rm -rf /",
                                  "generations > 'x'", "generations = 1", "1 > 0 and", "lambda: 1"])
def test_gate_rejects_bad_syntax(expr):
    with pytest.raises(ReportError, match="--fail-if"):
        Gate(expr).evaluate(METRICS)


def test_gate_na_metric_fails_closed():
    with pytest.raises(ReportError, match="not available"):
        Gate("mb_per_dollar < 1").evaluate(METRICS)
    assert "memorized_token_fraction = 0.002" in Gate("memorized_token_fraction > 0").explain(METRICS)


def test_categories():
    t = ("mail bob.smith@corp.example.com, tel 020 7946 0958, host 10.0.0.1 and 2001:db8::8a2e:370:7334, "
         "see https://example.com/x?y=1 id 123e4567-e89b-12d3-a456-426614174000 token ghp_"
         + "a" * 36 + " and 999.1.1.1 and 2019 2020")
    f = find_all(t)
    assert f["emails"] == ["bob.smith@corp.example.com"]
    assert f["phone_numbers"] == ["020 7946 0958"]
    assert f["ip_addresses"] == ["10.0.0.1", "2001:db8::8a2e:370:7334"]
    assert f["urls"] == ["https://example.com/x?y=1"]
    assert f["uuids"] == ["123e4567-e89b-12d3-a456-426614174000"]
    assert f["keys"] == ["ghp_" + "a" * 36]
    assert not f["code"] and not f["license_text"]
    code = "#include <stdio.h>\nint main(void) {\n    printf(\"hi\");\n    return 0;\n}\n"
    assert find_all(code)["code"]
    assert find_all("Licensed under the Apache License, Version 2.0")["license_text"]
    assert find_all("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----")["keys"]
    assert not find_all("just some words 12 34")["phone_numbers"]


def test_redact():
    t = ("bob@x.io +44 20 7946 0958 192.168.0.1 sk-" + "Z" * 30 + " AKIAIOSFODNN7EXAMPLE "
         "https://admin:hunter2@host.example/ -----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY----- ok")
    r = redact(t)
    for secret in ("bob@x.io", "7946", "192.168", "ZZZZ", "AKIA", "hunter2", "abc"):
        assert secret not in r, secret
    assert r.endswith(" ok") and "[EMAIL]" in r and "[PEM]" in r and "[KEY]" in r and "[IP]" in r
    assert redact("version 1.2.3 in 2024") == "version 1.2.3 in 2024"


def test_near_duplicate_clusters():
    base = " ".join(f"word{i}" for i in range(120))
    near = base.replace("word60", "changed")
    other = " ".join(f"other{i}" for i in range(120))
    res = cluster_texts([base, near, other, "tiny"])
    assert res["clusters"] == 3
    assert res["labels"][0] == res["labels"][1] != res["labels"][2]
    capped = cluster_texts([base, near, other], max_texts=1)
    assert capped["clusters"] == 3 and capped["summary"]["capped"]
    assert cluster_texts([])["clusters"] == 0


def test_clean_and_markdown_escaping():
    assert clean("a\x00b\x1bc\u202ed\x85") == "a\\x00b\\x1bc\\u202ed\\x85"
    assert clean("x" * 10, limit=4).startswith("xxxx\u2026 [6 more")
    assert md_cell("a|b <i>`x`</i>\nnext") == "a\\|b &lt;i&gt;\\`x\\`&lt;/i&gt; next"
    f = md_fence("code ~~~~~~ and ```")
    assert f.startswith("~~~~~~~text\n") and f.endswith("\n~~~~~~~")


def test_number_formatting():
    from reports.render_common import fmt_bytes, fmt_pct, fmt_usd
    assert fmt_usd(None) == "n/a"
    assert fmt_usd(0.0000169) == "$0.0000169"
    assert fmt_usd(0.5) == "$0.5000" and fmt_usd(1234.5) == "$1,234.50"
    assert fmt_pct(0.011814) == "1.18%" and fmt_pct(0) == "0%" and fmt_pct(None) == "n/a"
    assert fmt_bytes(1_414_756) == "1.41 MB (1,414,756 bytes)"


def test_chao1_confidence_interval_by_hand():
    import math
    freq = {1: 6, 2: 3, 3: 1}                 # chao1 = 16, n_obs = 10, r = 2
    var = 3 * (2 ** 4 / 4 + 2 ** 3 + 2 ** 2 / 2)  # 42
    assert ex.chao1_variance(freq) == pytest.approx(var)
    k = math.exp(1.96 * math.sqrt(math.log(1 + var / 36)))
    lo, hi = ex.chao1_ci95(freq)
    assert lo == pytest.approx(10 + 6 / k) and hi == pytest.approx(10 + 6 * k)
    assert lo < 16 < hi
    # f2 = 0: EstimateS form
    f1 = 5
    s = 5 + 5 * 4 / 2
    assert ex.chao1_variance({1: 5}) == pytest.approx(f1 * (f1 - 1) / 2 + f1 * (2 * f1 - 1) ** 2 / 4 - f1 ** 4 / (4 * s))
    assert ex.chao1_ci95({2: 4}) == (4.0, 4.0)


@pytest.mark.parametrize("text, ips", [
    ("server 192.168.10.20 is up", ["192.168.10.20"]),                 # 10 digits: once counted as a phone
    ("hosts 10.100.200.255, 172.16.254.101.", ["10.100.200.255", "172.16.254.101"]),
    # version strings (1.2.3.4 is also a valid IPv4 address: the IP detector cannot tell)
    ("pip install pkg==1.2.3.4 then 100.200.300.400 and 2023.11.26.1200", ["1.2.3.4"]),
])
def test_dotted_quads_are_never_phone_numbers(text, ips):
    found = find_all(text)
    assert found["phone_numbers"] == []
    assert found["ip_addresses"] == ips
    assert "[PHONE]" not in redact(text)


def test_phone_numbers_with_dots_are_still_phones():
    text = "call 555.010.4477, +1 (555) 010-4477 or 06.12.34.56.78"
    assert find_all(text)["phone_numbers"] == ["555.010.4477", "+1 (555) 010-4477", "06.12.34.56.78"]
    assert redact(text) == "call [PHONE], [PHONE] or [PHONE]"


def _find_all_before(text):
    """reports.categories.find_all as it was before find_all_many (per text, its own pre-checks)."""
    from reports import categories as c
    out = {k: [] for k in c.CATEGORIES}
    if "@" in text:
        out["emails"] = c.EMAIL.findall(text)
    if c._DIGIT.search(text) is not None:
        if c._PHONE_HINT.search(text) is not None:
            out["phone_numbers"] = [m.group(0) for m in c.PHONE.finditer(text) if c._phone_ok(m.group(0))]
        if "." in text:
            out["ip_addresses"] = c.IPV4.findall(text)
    if "::" in text or text.count(":") >= 7:
        out["ip_addresses"] += [m for m in c.IPV6.findall(text) if m.count(":") >= 2]
    if "://" in text or "www." in text or "WWW." in text:
        out["urls"] = c.URL.findall(text)
    if text.count("-") >= 4:
        out["uuids"] = c.UUID.findall(text)
    if any(k in text for k in c._KEY_MARKERS):
        out["keys"] = c.KEY_TOKEN.findall(text)
    low = text.lower()
    if any(k in low for k in c._ASSIGN_MARKERS):
        out["keys"] += [m.group(0) for m in c.KEY_ASSIGN.finditer(text) if c._assign_ok(m)]
    if "-----BEGIN " in text:
        out["keys"] += [m.group(0)[:40] for m in c.PEM.finditer(text)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 3 and sum(1 for ln in lines if c.CODE_LINE.search(ln)) >= 0.3 * len(lines):
        out["code"] = ["code"]
    lic = [p for p in c.LICENSE_PHRASES if p in low]
    if lic:
        out["license_text"] = [lic[0]]
    return out


@pytest.mark.parametrize("batch_chars", [1 << 23, 50])
def test_find_all_many_equals_find_all(batch_chars, monkeypatch):
    """Categories of many texts at once (pre-checks of ASCII texts on arrays) equal the per-text
    detector's, on texts cut at random points out of a stream of findings, so that findings and
    pre-check patterns straddle text boundaries; empty texts, NUL, line breaks of every kind,
    upper-case licence phrases and key words, non-ASCII texts mixed in."""
    from reports import categories
    monkeypatch.setattr(categories, "BATCH_CHARS", batch_chars)
    rng = random.Random(11)
    frags = ["bob.smith@corp.example.com", "+1 (555) 010-9999", "020 7946 0958", "10.0.0.1", "1.2.3.4",
             "2001:db8::8a2e:370:7334", "a:b:c:d:e:f:g:h", "::", "https://x.io/p?q=1", "WWW.Example.com", "www.",
             "123e4567-e89b-12d3-a456-426614174000", "sk-" + "a" * 24, "AKIAIOSFODNN7EXAMPLE", "ghp_" + "b" * 36,
             "xoxb-1234567890ab", "API_KEY = 'x'", "Password: hunter2", "token=" + "c" * 22,
             "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----", "def f():\n", "  return 1;\n",
             "}\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1e", "\x00", "All Rights Reserved", "GNU General Public "
             "License", "Creative Commons", "sk", "AKI", "ww", "Ww.", ":/", "-----BEGIN", "all rights", "secre", "PWD", " ", "-", ".", ":", "7", "42", "word", "\t", "é", "日本", "\u2028"]
    for trial in range(6):
        stream = "".join(rng.choice(frags) for _ in range(600))
        if trial % 2:
            stream = "".join(ch for ch in stream if ch.isascii())
        cuts = sorted(rng.randint(0, len(stream)) for _ in range(150))
        texts = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])] + ["", "x", "1-2 3"]
        assert categories.find_all_many(texts) == [_find_all_before(t) for t in texts]
        assert [categories.find_all(t) for t in texts] == [_find_all_before(t) for t in texts]
    assert categories.find_all_many([]) == []


def test_without_gc_pauses_and_restores():
    """The report's functions run with the cyclic collector paused and leave it as it was, also
    after an exception."""
    import gc

    from reports.metrics import without_gc
    seen = []

    @without_gc
    def f(fail=False):
        seen.append(gc.isenabled())
        if fail:
            raise ValueError("x")
    was = gc.isenabled()
    try:
        gc.enable()
        f()
        with pytest.raises(ValueError):
            f(fail=True)
        assert gc.isenabled()
        gc.disable()
        f()
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False, False, False]


@pytest.mark.parametrize("batch_chars", [1 << 23, 300])
def test_find_all_many_batches_without_some_characters(batch_chars, monkeypatch):
    """Batches in which "@", ".", ":", "-" or line breaks occur nowhere (their masks skipped) and
    batches in which one text holds them give the per-text detector's categories."""
    from reports import categories
    monkeypatch.setattr(categories, "BATCH_CHARS", batch_chars)
    rng = random.Random(12)
    plain = [" ".join(f"w{rng.randrange(5000)}" for _ in range(rng.randint(0, 60))) for _ in range(40)]
    extras = ["a@b.co", "x.y", "1.2.3.4", "a:b:c:d:e:f:g:h", "1-2-3-4-5", "l1;\nl2;\nl3;\n", "\x1c\x1d",
              "+1 (555) 010-9999", "2001:db8::1"]
    for extra in extras:
        texts = plain + [plain[3] + " " + extra] + plain[:5]
        assert categories.find_all_many(texts) == [_find_all_before(t) for t in texts], extra
    assert categories.find_all_many(plain) == [_find_all_before(t) for t in plain]


def test_find_all_many_finds_key_words_and_licences_in_any_case():
    """Key words and licence phrases in mixed case (each letter's case drawn at random), cut across
    text boundaries and next to near misses, give the per-text detector's findings."""
    from reports import categories
    rng = random.Random(13)
    words = list(categories._ASSIGN_MARKERS) + list(categories.LICENSE_PHRASES) + ["apu_key", "toke", "secrex"]
    texts = []
    for _ in range(300):
        w = rng.choice(words)
        w = "".join(ch.upper() if rng.random() < 0.5 else ch for ch in w)
        texts.append(rng.choice(["", "x ", "w12 "]) + w + rng.choice(["", " = 'v'", ": hunter22", "\n"]))
    joined = "".join(texts)
    cuts = sorted(rng.randint(0, len(joined)) for _ in range(200))
    texts += [joined[a:b] for a, b in zip([0] + cuts, cuts + [len(joined)])]
    got = categories.find_all_many(texts)
    assert got == [_find_all_before(t) for t in texts]
    assert sum(bool(g["license_text"]) for g in got) > 50 and sum(bool(g["keys"]) for g in got) > 20
