"""The sampler's fast paths (issue 16) against the plain computations they replace: the rows'
Arrow table (system allocator) against ``pa.table``, the summaries' ``extra`` reader (orjson)
against ``json.loads``, the ``extra`` writer (orjson where it can) against ``json.loads`` of its text.""" 
from __future__ import annotations

import datetime as dt
import json
import random

import pyarrow as pa
import pytest

from corpora.storage import GENERATIONS_SCHEMA
from extractor.sampling.engine import extra_json
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
        assert repr(_extra(text)) == repr(json.loads(text)), text
        ours, plain = extra_json(e)   # compact, keys sorted: the same values as the standard library's text
        assert repr(json.loads(ours)) == repr(json.loads(text)) and list(json.loads(ours)) == sorted(e)
        assert ours == json.dumps(e, ensure_ascii=False, sort_keys=True, separators=(",", ":")) or plain
        assert repr(_extra(ours)) == repr(json.loads(ours)), ours
    for bad in ("", "{", "{'a': 1}", "[1,]", "nul"):
        with pytest.raises(ValueError):
            _extra(bad)


def _same(a, b) -> bool:
    """Equal, and of the same types all the way down."""
    if a.__class__ is not b.__class__:
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _nested(rng: random.Random, depth: int = 0):
    if depth < 3 and rng.random() < 0.3:
        items = [_nested(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        kind = rng.choice(["dict", "list", "tuple", "oddkey"])
        if kind == "dict":
            return {f"k{i}\u00e9": v for i, v in enumerate(items)}
        if kind == "oddkey":
            return {rng.choice([1, True, None, 2.5]): v for v in items}
        return items if kind == "list" else tuple(items)
    return rng.choice([_value(rng), "\ud800", -0.0, 2**64, float("-inf")])


def test_extras_kept_by_the_sampler_read_back_to_themselves():
    """reads_back(v): the JSON the sampler stores for ``v`` reads back (the summaries' reader) to a value equal
    to ``v`` with the same types, so the run's summary may use ``v`` instead of parsing; tuples, NaN,
    infinities, lone surrogates and non-string keys are refused (they would read back otherwise, or not at all)."""
    from extractor.sampling.summary import reads_back

    rng = random.Random(11)
    kept = refused = 0
    for _ in range(4000):
        v = {"diverged": rng.random() < 0.5, "x": _nested(rng)}
        try:
            want = json.dumps(v, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError) as exc:   # keys of types that do not sort: the same error
            with pytest.raises(type(exc)):
                extra_json(v)
            refused += 1
            continue
        text, plain = extra_json(v)
        assert plain == reads_back(v)
        if plain:
            kept += 1
            assert _same(_extra(text), v) and _same(json.loads(text), v), v
        else:
            refused += 1
            assert repr(json.loads(text)) == repr(json.loads(want))
    assert kept > 500 and refused > 500
    for bad in ({"a": (1,)}, {"a": float("nan")}, {"a": "\udc80"}, {1: 2}, {"a": [float("inf")]}, {"a": {True: 1}}):
        assert not reads_back(bad), bad
    assert reads_back({"a": [1, -0.0, 2**70, None, "é", {"b": False}]})
