"""trawl demo replaces its corpus/, index/ and run/ sub-folders only when trawl made them (issue 17):
a stranger's folder there, even inside a folder the demo marked, is a one-line error, never deleted."""
from __future__ import annotations

import pytest

from extractor.campaigns import demo
from extractor.errors import TrawlError


@pytest.mark.parametrize("step", ["corpus", "index"])
def test_demo_does_not_delete_a_folder_it_did_not_make(tmp_path, step):
    out = tmp_path / "demo"
    demo._claim(out)                    # the demo's own folder (marked)
    (out / "corpus").mkdir()
    (out / "corpus" / "thesis.tex").write_text("years of work")
    if step == "index":
        (out / "index").mkdir()
        (out / "index" / "thesis.tex").write_text("years of work")
        call = lambda: demo._index(out, out / "corpus", True)   # noqa: E731
        (out / "corpus" / "corpus.json").write_text("{}")
    else:
        call = lambda: demo._corpus(out, 0.01, True)   # noqa: E731
    with pytest.raises(TrawlError, match="trawl made"):
        call()
    assert (out / step / "thesis.tex").read_text() == "years of work"
