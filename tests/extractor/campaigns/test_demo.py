"""`trawl demo` refuses bad settings and never deletes folders it did not make."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from extractor.campaigns.demo import MARKER, _claim
from extractor.cli.demo import _preview
from extractor.errors import TrawlError
from repo import ROOT



def test_a_users_folder_is_never_claimed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "NOTES.txt").write_text("mine")
    with pytest.raises(TrawlError, match="did not make"):
        _claim(tmp_path)
    assert (tmp_path / "run" / "NOTES.txt").read_text() == "mine"
    assert not (tmp_path / MARKER).exists()


def test_an_empty_or_demo_folder_is_claimed(tmp_path):
    _claim(tmp_path / "new")
    assert (tmp_path / "new" / MARKER).is_file()
    (tmp_path / "new" / "run").mkdir()
    _claim(tmp_path / "new")  # the demo's own folder: fine


@pytest.mark.parametrize(
    "args, message",
    [
        (["--minutes", "0"], "--minutes must be > 0"),
        (["--corpus-mb", "0"], "--corpus-mb must be > 0"),
        (["--min-tokens", "0"], "--min-tokens must be >= 1"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "extractor.cli", "demo", "--out", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("trawl: error: ") and message in proc.stderr
    assert not (tmp_path / "d").exists()


def test_preview_is_one_safe_line():
    text = "evil\x1b[31m red\nnext\tline " + "x" * 200
    out = _preview(text)
    assert "\x1b" not in out and "\n" not in out and "\t" not in out
    assert len(out) <= 84


def test_demo_summary_names_the_longest_runs_class_and_the_nontrivial_figures():
    """The demo's terminal summary puts non-trivial memorization beside the raw figures and says
    when the longest run is only a reconstruction (an incrementing list any model writes)."""
    from extractor.cli.demo import summary_text

    t = {"generations": 10, "generated_tokens": 1000, "memorized_generations": 2, "memorized_token_fraction": 0.1,
         "unique_memorized_windows": 7, "nontrivial_memorized_generations": 1,
         "nontrivial_memorized_token_fraction": 0.05, "nontrivial_unique_memorized_windows": 3}
    m = {"metrics": t, "parameters": {"window_tokens": 50}, "taxonomy": {"longest_run": "reconstruction"},
         "longest_run": {"tokens": 47, "bytes": 47, "doc_id": 3, "source": "x.txt", "text": "2016, 2017, 2018"}}
    out = summary_text(m).splitlines()
    assert out[2] == ("non-trivial (reconstruction and low-information spans left out): 1 generations, "
                      "5.0000% of tokens, 3 unique windows")
    assert out[-1].endswith("'2016, 2017, 2018' [reconstruction]")
