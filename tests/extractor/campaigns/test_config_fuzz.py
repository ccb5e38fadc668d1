"""Issue 17: campaign and sweep files with random mutations (numbers replaced by nan, inf, -1, huge
or strings; keys dropped or duplicated; bytes flipped; lines cut) through `trawl run --check` and
`trawl sweep --list`: each is either a valid configuration (every number finite) or one clear line
`trawl: error: ...` with exit 2, never a traceback. Seeded and bounded: a few seconds."""
from __future__ import annotations

import math
import random
import re
import unicodedata

import pytest

from campaign_helpers import make_index, q, trawl
from extractor.cli import main
from repo import one_line_error

NUMBER = re.compile(r"(?<=[=\[,] )-?\d+(?:\.\d+)?(?:e[+-]?\d+)?|(?<== )(?:true|false)")
REPLACEMENTS = ["nan", "inf", "-inf", "+nan", "-1", "0", "-0.0", "1e308", "1e-320", "9223372036854775807",
                "-9223372036854775808", '"12"', '"nan"', "[]", "{}", "1979-05-27", "0x7fffffff", "1_000", "true"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return make_index(tmp_path_factory.mktemp("fuzz-index"))


def campaign_text(index) -> str:
    return (f'[campaign]\nname = "audit"\nseed = 3\n\n'
            '[target]\nmodel = "m"\nversion = "v1"\nendpoints = ["http://127.0.0.1:9/v1"]\nconcurrency = 4\n'
            'timeout = 30.0\nmax_retries = 2\n\n'
            '[budget]\nmax_generations = 100\nmax_tokens = 100000\nmax_dollars = 2.5\nmax_seconds = 600.0\n\n'
            '[pricing]\ninput_per_mtok = 0.5\noutput_per_mtok = 1.5\n\n'
            f'[index]\npath = {q(index)}\nmin_tokens = 10\nmin_bytes = 40\n\n'
            '[report]\nwindow_tokens = 50\nredact = true\nfail_if = ["memorized_token_fraction > 0.01"]\n\n'
            '[[attacks]]\nname = "divergence"\nwords = ["poem", "company"]\nsamples = 2\nmax_tokens = 16\n'
            'temperature = 0.7\ntop_p = 0.9\n\n'
            '[[attacks]]\nname = "unconditional"\nsamples = 3\ndecay_start = 10.0\ndecay_end = 1.0\n')


def sweep_text(index) -> str:
    return ('[sweep]\nname = "nightly"\n\n[history]\nmetric = "memorized_token_fraction"\ntolerance = 0.1\n'
            'epsilon = 0.0\n\n'
            f'[defaults.index]\npath = {q(index)}\nmin_tokens = 10\n\n'
            '[defaults.target]\nendpoints = ["http://127.0.0.1:9"]\ntimeout = 20.0\nconcurrency = 2\n\n'
            '[defaults.budget]\nmax_dollars = 1.0\n\n'
            '[[targets]]\nmodel = "m"\nversion = "v1"\n\n[[targets]]\nmodel = "m"\nversion = "v2"\n\n'
            '[[attacks]]\nname = "divergence"\nwords = ["poem"]\ntemperature = 1.0\n')


def mutate(text: str, rng: random.Random) -> str:
    kind = rng.randrange(6)
    lines = text.split("\n")
    if kind <= 1:                                    # a number (or boolean) replaced
        spots = list(NUMBER.finditer(text))
        m = rng.choice(spots)
        return text[:m.start()] + rng.choice(REPLACEMENTS) + text[m.end():]
    if kind == 2:                                    # a key dropped
        keyed = [i for i, ln in enumerate(lines) if "=" in ln]
        del lines[rng.choice(keyed)]
        return "\n".join(lines)
    if kind == 3:                                    # a line (key or table header) duplicated
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "\n".join(lines)
    if kind == 4:                                    # bytes flipped
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return b.decode("utf-8", "surrogateescape")
    return text[:rng.randrange(len(text))]          # cut short


def _walk_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_numbers(v)
    elif isinstance(obj, float):
        yield obj


def _check(capsys, argv) -> tuple[int, str]:
    rc = main(argv)          # a bug's exception propagates: the test fails with its traceback
    out, err = capsys.readouterr()
    if rc == 0:
        assert err == "", err
    else:
        assert rc == 2, (rc, err)
        assert err.startswith("trawl: error: ") and err.count("\n") == 1, err
        assert not [c for c in err[:-1] if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")], err
    return rc, out


def test_mutated_campaign_files(tmp_path, index, capsys):
    from extractor.campaigns.config import load_campaign

    rng = random.Random(1717)
    base = campaign_text(index)
    assert _check(capsys, ["run", str(_write(tmp_path / "base.toml", base)), "--check"])[0] == 0
    outcomes = {0: 0, 2: 0}
    for i in range(160):
        p = _write(tmp_path / f"c{i}.toml", mutate(base, rng))
        rc, out = _check(capsys, ["run", str(p), "--check"])
        outcomes[rc] += 1
        if rc == 0:                      # accepted: then every number of it is finite
            assert "OK" in out
            assert all(math.isfinite(x) for x in _walk_numbers(load_campaign(p).config)), p.read_text()
    assert outcomes[0] > 10 and outcomes[2] > 60, outcomes


def test_mutated_sweep_files(tmp_path, index, capsys):
    from extractor.campaigns.sweep import load_sweep

    rng = random.Random(1718)
    base = sweep_text(index)
    assert _check(capsys, ["sweep", str(_write(tmp_path / "base.toml", base)), "--list"])[0] == 0
    outcomes = {0: 0, 2: 0}
    for i in range(120):
        p = _write(tmp_path / f"s{i}.toml", mutate(base, rng))
        rc, _ = _check(capsys, ["sweep", str(p), "--list"])
        outcomes[rc] += 1
        if rc == 0:
            sw = load_sweep(p)
            assert all(math.isfinite(x) for x in _walk_numbers(sw.history))
            for c in sw.campaigns:
                assert all(math.isfinite(x) for x in _walk_numbers(c.config))
    assert outcomes[0] > 5 and outcomes[2] > 40, outcomes


def test_a_mutated_file_through_the_real_command(tmp_path, index):
    text = campaign_text(index).replace("max_dollars = 2.5", "max_dollars = nan")
    one_line_error(trawl("run", str(_write(tmp_path / "c.toml", text)), "--check"), "budget.max_dollars must be a finite")
    flipped = campaign_text(index).encode().replace(b"timeout", b"time\xffout")
    p = tmp_path / "f.toml"
    p.write_bytes(flipped)
    one_line_error(trawl("run", str(p), "--check"), "not UTF-8 text")


def _write(p, text: str):
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    return p
