"""Generation parts damaged on disk (issue 17): trawl writes a CRC-32 with every Parquet page and the
run folder (sample --resume), the matcher's reader (match) and the report's reader (report) verify it,
so damaged bytes are a one-line error naming the part, never other values; parts written before
checksums (none in their pages) still read."""
from __future__ import annotations

import random
import shutil

import pyarrow.parquet as pq
import pytest

from extractor.errors import TrawlError
from extractor.sampling.run_folder import RunDir
from reports.errors import ReportError
from reports.inputs import REQUIRED_GEN_COLUMNS, iter_batches, open_parquet
from suffix_index.errors import MatchInputError
from suffix_index.matchfile import read_generations


def rows(n=120):
    rng = random.Random(7)
    out = []
    for i in range(n):
        words = [rng.choice(["alpha", "beta", "gamma", "delta", "omega", "x"]) for _ in range(rng.randint(5, 40))]
        text = " ".join(words)
        offs = [0]
        for w in words[:-1]:
            offs.append(offs[-1] + len(w) + 1)
        out.append({"run_id": "run", "request_id": f"req-{i:04d}", "attack": "divergence", "variant": "v",
                    "prompt": "p", "completion": text, "token_offsets": offs, "completion_tokens": len(offs),
                    "prompt_tokens": 3, "seed": i, "latency_s": 0.5, "cost_usd": 0.0,
                    "created_at": "2026-01-01T00:00:00Z"})
    return out


def make_run(path, n=120):
    rd = RunDir(str(path))
    rd.recover()
    rd._write_part(rows(n))
    rd.close()
    return rd.part_paths()[0]


READERS = {
    "resume": (TrawlError, lambda run, part: (sorted(RunDir(str(run)).done_ids()),
                                              RunDir(str(run)).read_generations().to_pylist())),
    "match": (MatchInputError, lambda run, part: [(k, d, None if o is None else o.tolist())
                                                  for k, d, o in read_generations(run)]),
    "report": (ReportError, lambda run, part: [b.to_pylist() for b in iter_batches(
        open_parquet(part, REQUIRED_GEN_COLUMNS), part, list(REQUIRED_GEN_COLUMNS), 50)]),
}


def test_parts_carry_page_checksums(tmp_path):
    part = make_run(tmp_path / "run")
    # a page whose bytes are changed fails the checksum (pyarrow only checks pages that carry one)
    data = bytearray(open(part, "rb").read())
    col = pq.ParquetFile(part).metadata.row_group(0).column(6)   # token_offsets
    mid = col.data_page_offset + col.total_compressed_size // 2
    data[mid:mid + 64] = bytes(64)
    open(part, "wb").write(bytes(data))
    with pytest.raises(OSError, match="CRC"):
        pq.read_table(part, page_checksum_verification=True)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_zeroed_or_flipped_bytes_in_a_part_are_an_error_or_change_nothing(tmp_path, reader):
    error, read = READERS[reader]
    clean = tmp_path / "clean"
    part = make_run(clean)
    want = read(clean, part)
    size = len(open(part, "rb").read())
    rng = random.Random(17)
    silent = []
    for trial in range(60):
        run = tmp_path / f"t{trial}"
        shutil.copytree(clean, run)
        p = run / "generations" / "part-00000.parquet"
        data = bytearray(p.read_bytes())
        at = rng.randrange(4, size - 8)
        if trial % 2:
            data[at:at + 64] = bytes(len(data[at:at + 64]))
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(4, size - 8)] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(data))
        try:
            got = read(run, str(p))
        except error as exc:
            msg = str(exc)
            assert "part-00000.parquet" in msg and "\n" not in msg, msg
            continue
        if got != want:
            silent.append(at)
    assert not silent, f"damaged bytes at {silent} read as other values"


def test_parts_written_without_checksums_still_read(tmp_path):
    run = tmp_path / "run"
    part = make_run(run)
    table = pq.read_table(part)
    pq.write_table(table, part, compression="zstd")   # an older trawl: no page checksums
    for name, (error, read) in READERS.items():
        read(run, part)
    assert len(RunDir(str(run)).done_ids()) == 120
