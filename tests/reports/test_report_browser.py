"""The HTML report opened in headless Chromium: headline figures rendered, no script
ran, screenshot not blank. Skips only when no Chromium is installed (CI installs the
Debian packages chromium and chromium-driver)."""
from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from reports import write_report
from reports.render_common import fmt_int, fmt_pct

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--disable-extensions", "--mute-audio"]


def _chromium(args, tmp_path, timeout=90):
    profile = tmp_path / f"profile-{len(os.listdir(tmp_path))}"
    profile.mkdir()
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env={**os.environ, "HOME": str(tmp_path)})


def read_png(path) -> tuple[int, int, np.ndarray]:
    """A tiny PNG reader (8-bit RGB/RGBA/grey, not interlaced): width, height, pixels."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (ln,) = struct.unpack(">I", data[pos:pos + 4])
        typ, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + ln]
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif typ == b"IDAT":
            idat.append(body)
        pos += 12 + ln
    w, h, depth, ctype, _c, _f, interlace = ihdr
    assert depth == 8 and interlace == 0 and ctype in (0, 2, 6)
    bpp = {0: 1, 2: 3, 6: 4}[ctype]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(h, w * bpp + 1)
    out = np.zeros((h, w * bpp), dtype=np.uint8)
    prev = np.zeros(w * bpp, dtype=np.uint8)
    for y in range(h):
        ft, line = raw[y, 0], raw[y, 1:]
        if ft == 0:
            cur = line.copy()
        elif ft == 1:   # Sub: cumulative sum per channel
            cur = (np.cumsum(line.reshape(w, bpp).astype(np.uint32), axis=0) % 256).astype(np.uint8).reshape(-1)
        elif ft == 2:   # Up
            cur = (line.astype(np.uint16) + prev) .astype(np.uint8)
        else:           # Average / Paeth: sequential
            cur = np.zeros_like(line)
            L, P = line.tolist(), prev.tolist()
            C = [0] * len(L)
            for i in range(len(L)):
                a = C[i - bpp] if i >= bpp else 0
                b = P[i]
                if ft == 3:
                    C[i] = (L[i] + ((a + b) >> 1)) & 255
                else:
                    c = P[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    C[i] = (L[i] + pr) & 255
            cur = np.array(C, dtype=np.uint8)
        out[y] = cur
        prev = cur
    return w, h, out.reshape(h, w, bpp)


def _report(tmp_path):
    import random

    from synthetic_runs import Corpus, Gen, write_run
    rng = random.Random(11)

    def words(n):
        return "".join(f" w{rng.randrange(300)}" for _ in range(n))

    def tokenize(text):
        return re.findall(r"\s*\S+|\s+", text)

    hostile = "<script>alert('x')</script> </textarea><img src=x onerror=alert(1)> a\x00b\x1b[31m \u202eevil"
    doc = words(20) + " " + hostile + " jane.roe@example.org " + words(120)
    doc2 = words(300)
    gens = [Gen([f" z{i}" for i in range(10)] + tokenize(doc) + [" zz"], "divergence", "<b>poem</b>", cost_usd=0.01),
            Gen([f" z{i}" for i in range(10)] + tokenize(doc2)[:90] + [" zz"], "divergence", "company", cost_usd=0.01),
            Gen([f" z{i}" for i in range(10)] + tokenize(doc2)[40:130] + [" zz"], "divergence", "company",
                cost_usd=0.01),
            Gen([f" z{i}" for i in range(60)], "divergence", "work", cost_usd=0.01)]
    run = tmp_path / "run"
    write_run(str(run), Corpus([doc, doc2], sources=["<i>src</i>", "b.txt"]), gens, min_tokens=10)
    return write_report(run)


def test_report_renders_in_chromium(tmp_path):
    paths = _report(tmp_path)
    url = "file://" + os.path.abspath(paths.html)
    dom = _chromium(["--dump-dom", "--virtual-time-budget=2000", url], tmp_path)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    text = dom.stdout.decode("utf-8")
    m = paths.metrics["metrics"]
    # headline figures are rendered, each in its card
    def card(key):
        mm = re.search(r'data-metric="%s"><div class="l">(.*?)</div><div class="v">(.*?)</div>' % key, text)
        assert mm, key
        return html.unescape(mm.group(2))
    assert card("memorized_generations") == (f"{fmt_int(m['memorized_generations'])} of {fmt_int(m['generations'])} "
                                             f"({fmt_pct(m['memorized_generation_fraction'])})")
    assert card("memorized_generations").startswith("3 of 4")
    assert card("memorized_token_fraction") == fmt_pct(m["memorized_token_fraction"])
    assert card("unique_memorized_windows") == fmt_int(m["unique_memorized_windows"])
    assert card("longest_run_tokens").startswith(fmt_int(m["longest_run_tokens"]) + " tokens")
    assert card("mb_per_dollar") not in ("", "n/a")
    # hostile text is shown as text, and nothing of it became an element
    assert "&lt;script&gt;alert(" in text
    assert "<script" not in text.lower() and "<img" not in text.lower()
    assert "<svg" in text and "<polyline" in text


def test_screenshot_is_not_blank(tmp_path):
    paths = _report(tmp_path)
    png = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={png}", "--window-size=1000,1400", "--virtual-time-budget=2000",
                     "file://" + os.path.abspath(paths.html)], tmp_path)
    assert res.returncode == 0 and png.exists(), res.stderr.decode(errors="replace")[-2000:]
    w, h, px = read_png(png)
    assert (w, h) == (1000, 1400)
    rgb = px[:, :, :3].reshape(-1, 3)
    nonwhite = (rgb < 235).any(axis=1).mean()
    assert 0.02 < nonwhite < 0.8, nonwhite            # text and cards drawn, not a solid fill
    colours = np.unique(rgb[:: 7] // 16, axis=0)
    assert len(colours) >= 8                          # text, card background, accents
    # the top band holds the title: dark pixels there
    assert (px[20:60, 40:500, :3] < 100).any()
