"""``trawl --help`` starts without the heavy libraries (issue 16: start-up < 0.15 s, measured by
benchmarks/bench_startup.py); the packages' public names still mean what they meant."""
from __future__ import annotations

import subprocess
import sys

from repo import REPO


def test_help_imports_no_pyarrow_numpy_or_report_code():
    code = ("import sys, contextlib, io\n"
            "from extractor.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = [m for m in ('pyarrow', 'numpy', 'reports.metrics', 'suffix_index.engine', 'requests')\n"
            "         if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_lazy_package_names_are_the_values_they_were():
    code = ("import importlib; m = importlib.import_module('corpora.ingest')\n"   # the submodule first: the name stays the function
            "import corpora, suffix_index, reports\n"
            "from corpora import ingest, open_corpus, CorpusError\n"
            "from suffix_index import SuffixIndex, build_index\n"
            "from reports import compute_metrics, write_report, ReportError\n"
            "assert corpora.ingest is ingest is m.ingest and callable(ingest)\n"
            "assert SuffixIndex.__module__ == 'suffix_index.engine' and ReportError.__module__ == 'reports.errors'\n"
            "assert 'open_corpus' in dir(corpora)\n"
            "try:\n"
            "    corpora.no_such_name\n"
            "except AttributeError:\n"
            "    print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
