"""The sampler's fast paths (issue 16) against the plain computations they replace: the rows'
Arrow table (system allocator) against ``pa.table``, the summaries' ``extra`` reader (orjson)
against ``json.loads``, the ``extra`` encoder built once against ``json.dumps``."""
from __future__ import annotations

import datetime as dt
import json
import random

import pyarrow as pa
import pytest

from corpora.storage import GENERATIONS_SCHEMA
from extractor.sampling.engine import _EXTRA_JSON
from extractor.sampling.run_folder import rows_to_table
from extractor.sampling.summary import _extra


def _value(rng: random.Random):
    return rng.choice([rng.random(), -rng.random() * 1e300, rng.randint(-2**70, 2**70), rng.randint(-9, 9),
                       "", "é\u2028\"\\", "x" * rng.randint(0, 30), None, True, False, float("nan"),
                       float("inf"), [1, 2.0, None], {"k": [rng.random()]}, "1234567890123456789"])


def _row(rng: random.Random, i: int) -> dict:
    n = rng.randint(0, 40)
    return {"run_id": "r", "request_id": f"{i:016x}", "attack": rng.choice(["divergence", "prefix"]),
            "variant": rng.choice(["", "poem"]), "prompt": "p" * rng.randint(0, 9), "completion": "é" * n,
            "token_offsets": list(range(0, 2 * n, 2)) if rng.random() < 0.9 else None,
            "token_logprobs": [rng.choice([-rng.random(), float("nan")]) for _ in range(n)] if rng.random() < 0.8 else None,
            "prompt_tokens": rng.randint(0, 99), "completion_tokens": n, "finish_reason": "length", "model": "m",
            "endpoint": "http://x", "params": "{}", "seed": rng.choice([None, rng.randint(0, 2**31)]),
            "latency_s": rng.random(), "cost_usd": 0.0,
            "created_at": rng.choice(["2026-11-29T19:53:27.554865Z",
                                      dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)]),
            "extra": "{}"}


def _plain_table(rows: list[dict]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in GENERATIONS_SCHEMA.names}
    cols["created_at"] = [dt.datetime.fromisoformat(v.replace("Z", "+00:00")) if isinstance(v, str) else v
                          for v in cols["created_at"]]
    return pa.table(cols, schema=GENERATIONS_SCHEMA)


def test_rows_to_table_is_pa_table():
    rng = random.Random(16)
    for size in (1, 2, 7, 128, 300):
        rows = [_row(rng, i) for i in range(size)]
        got, want = rows_to_table(rows), _plain_table(rows)
        assert got.schema.equals(want.schema, check_metadata=True)
        assert repr(got.to_pylist()) == repr(want.to_pylist())   # repr: NaN log-probs compare equal
        assert got.num_rows == size and got.column("token_offsets").null_count == sum(
            r["token_offsets"] is None for r in rows)


@pytest.mark.parametrize("column, bad", [("seed", "x"), ("token_offsets", ["a"]), ("prompt_tokens", 2**70),
                                         ("latency_s", "slow")])
def test_rows_to_table_refuses_what_pa_table_refuses(column, bad):
    row = dict(_row(random.Random(1), 0), **{column: bad})
    with pytest.raises((pa.ArrowException, TypeError, ValueError, OverflowError)) as plain:
        _plain_table([row])
    with pytest.raises(type(plain.value)):
        rows_to_table([row])


def test_extra_reader_and_encoder_match_the_standard_library():
    rng = random.Random(7)
    cases = [{}, {"z": 10**30}, {"z": -2**63}, {"z": 2**64 + 1}, {"s": "\ud800"}, {"n": float("nan")}]
    cases += [{f"k{rng.randint(0, 9)}": _value(rng) for _ in range(rng.randint(0, 5))} for _ in range(3000)]
    for e in cases:
        text = json.dumps(e, ensure_ascii=False, sort_keys=True)
        assert _EXTRA_JSON.encode(e) == text
        assert repr(_extra(text)) == repr(json.loads(text)), text
    for bad in ("", "{", "{'a': 1}", "[1,]", "nul"):
        with pytest.raises(ValueError):
            _extra(bad)
