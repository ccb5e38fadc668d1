"""A ledger damaged or written by something else (issue 17: every untrusted reader gets a fuzz
test): byte flips and zeroed runs in the Parquet file, columns of another type, nulls, nan and inf
in the figures, through `trawl history`. Each is one line `trawl: error: ...` (exit 2) naming the
ledger, or the report of the rows as they are (exit 0 or 3), never a traceback."""
from __future__ import annotations

import math
import random

import pyarrow as pa
import pyarrow.parquet as pq

from extractor.campaigns.ledger import LEDGER_SCHEMA, write_ledger
from extractor.cli import main
from test_ledger import row


def history(ledger, capsys, tmp_path) -> tuple[int, str]:
    """`trawl history LEDGER` in this process (an uncaught exception is a traceback: the test fails)."""
    rc = main(["history", str(ledger), "--out", str(tmp_path / "h.html")])
    return rc, capsys.readouterr().err


def _base(path):
    rows = [row(f"v{i}", 0.01 * (1 + i % 3), date=f"2026-01-0{i + 1}T00:00:00Z", uid=f"u{i}") for i in range(5)]
    write_ledger(path, rows)
    return rows


def _check(result):
    rc, err = result
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("trawl: error: ") and "ledger" in lines[0], err
    else:
        assert rc in (0, 3), (rc, err)


def test_fuzz_damaged_ledger_bytes(tmp_path, capsys):
    ledger = tmp_path / "ledger.parquet"
    _base(ledger)
    clean = ledger.read_bytes()
    rng = random.Random(1717)
    for trial in range(40):
        data = bytearray(clean)
        if trial % 2:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(len(data))
            data[at:at + 32] = bytes(len(data[at:at + 32]))
        ledger.write_bytes(bytes(data))
        _check(history(ledger, capsys, tmp_path))


VALUES = {"string": ["x", "", None, "v1"], "int": [0, -1, 2 ** 62, None], "float": [math.nan, math.inf, -math.inf, None, 1e308]}


def test_fuzz_ledger_columns_of_other_types_and_values(tmp_path, capsys):
    ledger = tmp_path / "ledger.parquet"
    rows = _base(ledger)
    rng = random.Random(17)
    names = LEDGER_SCHEMA.names
    for trial in range(60):
        name = rng.choice(names)
        kind = rng.choice(list(VALUES))
        col = [rng.choice(VALUES[kind]) for _ in rows]
        cols = {n: [r[n] for r in rows] for n in names}
        cols[name] = col
        typ = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}[kind]
        arrays = {n: pa.array(v, type=typ if n == name else LEDGER_SCHEMA.field(n).type) for n, v in cols.items()}
        if rng.random() < 0.2:
            arrays.pop(rng.choice(names))
        pq.write_table(pa.table(arrays), ledger)
        _check(history(ledger, capsys, tmp_path))


def test_fuzz_ledger_format_versions_and_columns(tmp_path, capsys):
    """Ledger format 2 (issue 14): the metadata's format and version at random (numbers, words, bytes,
    absent) over the version-1 columns (no ranking figures) or all of them: one line naming the ledger,
    or the rows as they are."""
    from extractor.campaigns.ledger import ADDED_IN, read_ledger
    from extractor.errors import TrawlError

    ledger = tmp_path / "ledger.parquet"
    rows = _base(ledger)
    rng = random.Random(1414)
    added = {c for cols in ADDED_IN.values() for c in cols}
    versions = [b"1", b"2", b"3", b"0", b"-1", b"01", b"2.0", b"", b" 2", b"99999999", b"\xff\xfe", b"two", None]
    outcomes = set()
    for trial in range(40):
        names = [n for n in LEDGER_SCHEMA.names if not (rng.random() < 0.5 and n in added)]
        t = pa.table({n: pa.array([r[n] for r in rows], type=LEDGER_SCHEMA.field(n).type) for n in names})
        meta = {}
        if rng.random() < 0.9:
            meta[b"format"] = rng.choice([b"trawl-ledger"] * 4 + [b"", b"trawl-ledgerx", b"\x00\xff"])
        v = rng.choice(versions)
        if v is not None:
            meta[b"format_version"] = v
        pq.write_table(t.replace_schema_metadata(meta or None), ledger)
        _check(history(ledger, capsys, tmp_path))
        try:
            got = read_ledger(ledger)
        except TrawlError as exc:
            assert str(ledger) in str(exc)
            outcomes.add("error")
            continue
        outcomes.add("rows")
        missing = added - set(names)
        # read as written: the figures present equal the rows', the columns a version-1 file lacks are null
        assert [r["memorized_token_fraction"] for r in got] == [r["memorized_token_fraction"] for r in rows]
        assert all(r[c] is None for r in got for c in missing)
        if missing:
            assert meta.get(b"format_version") in (None, b"1")
    assert outcomes == {"error", "rows"}
