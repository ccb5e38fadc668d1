"""A finished campaign's campaign.json and report/metrics.json damaged outside trawl (issue 17:
every untrusted reader gets a fuzz test): wrong types anywhere, truncation, flipped bytes, deep
nesting. `trawl run` on the campaign again is one line `trawl: error: ...` naming the file, or runs
(skipping or resuming) as it would with the file as it is, never a traceback."""
from __future__ import annotations

import json
import random
import shutil

import pytest

from campaign_helpers import make_index, q
from draw_server import DrawServer
from extractor.cli import main
from json_mutations import put, walk


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("campaign-fuzz")
    index = make_index(base / "ix")
    with DrawServer() as srv:
        (base / "c.toml").write_text(
            f'[campaign]\nname = "fz"\nout = "out"\n[target]\nmodel = "{srv.model}"\nversion = "v1"\n'
            f'endpoints = ["{srv.base_url}"]\n[[attacks]]\nname = "divergence"\nwords = ["poem"]\nsamples = 4\n'
            f'max_tokens = 8\n[index]\npath = {q(index)}\n[history]\nrecord = false\n')
        assert main(["run", str(base / "c.toml"), "--no-progress"]) == 0
        yield base, srv


def mutate(value, rng):
    return rng.choice([None, "x", -1, 1.5, [], {}, True, 2 ** 64, [value], {"v": value}, str(value)])


@pytest.mark.parametrize("target", ["campaign.json", "report/metrics.json"])
def test_fuzz_campaign_status_and_stored_metrics(finished, tmp_path, capsys, target):
    base, srv = finished
    original = json.loads((base / "out" / target).read_text())
    paths = list(walk(original, list_items=2))
    rng = random.Random(17 if target == "campaign.json" else 18)
    for trial in range(40):
        work = tmp_path / f"t{trial}"
        shutil.copytree(base, work, ignore=shutil.ignore_patterns("*.lock"))
        how = rng.choice(["type", "type", "truncate", "flip", "deep"])
        if how == "type":
            p = rng.choice(paths)
            text = json.dumps(put(original, p, mutate(original, rng)))
        elif how == "deep":
            text = "[" * 100000 + "]" * 100000
        else:
            text = json.dumps(original)
            if how == "truncate":
                text = text[: rng.randrange(len(text))]
            else:
                b = bytearray(text.encode())
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                text = b.decode("utf-8", "replace")
        (work / "out" / target).write_text(text)
        toml = (work / "c.toml")
        toml.write_text(toml.read_text().replace(str(base), str(work)))
        capsys.readouterr()
        rc = main(["run", str(toml), "--no-progress"])
        err = capsys.readouterr().err
        if rc == 2:
            lines = [line for line in err.splitlines() if line.startswith("trawl: error: ")]
            assert len(lines) == 1, err
        else:
            assert rc in (0, 3), (rc, err, how)
