"""The report's batched paths give exactly what the one-at-a-time definitions give."""
from __future__ import annotations

import random

import numpy as np
import pytest

from reports import taxonomy


def _texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["1", "2", "3", "7", "10", "a", "b", "c", "Q", ",", ", ", " ", "\n", "yy", "zz", "x1", "-", ".",
              "1234567890123456789", "\u00e9t\u00e9", "\u0663", "\ue000", "\ue001", "_", "\t\t", "poem ",
              "\u2003", "\x1c", "\u200b", "\x85", "\xa0", "\u00bd", "\uff11"]
    texts = ["".join(rng.choice(pieces[:k]) for _ in range(rng.randint(0, 150))) for k in (4, 8, 12, len(pieces))
             for _ in range(250)]
    texts += ["".join(f"{rng.choice(pieces)}{i}" for i in range(rng.randint(3, 30))) for _ in range(100)]
    texts += [pre + ", ".join(str(3 * i + 1) for i in range(n)) + post for n in range(1, 12)
              for pre, post in (("", ""), ("x", " y"))]
    texts += ["poem " * k for k in range(8)] + ["", " ", "a", "1", "2016, 2017, 2018, 2019"]
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("batch_units", [1, 40, 700, 65_536])
def test_predictable_many_equals_one_at_a_time(batch_units, monkeypatch):
    texts = _texts(batch_units)
    want = np.array([taxonomy.is_predictable(t) for t in texts])
    monkeypatch.setattr(taxonomy, "BATCH_UNITS", batch_units)
    assert np.array_equal(taxonomy.predictable_many(texts), want)
    assert 0 < want.sum() < len(texts)                # both answers occur


def test_predictable_many_without_a_free_separator(monkeypatch):
    """When every separator character occurs in the batch, the texts are judged one at a time."""
    texts = _texts(3)[:60] + ["\ue000 1, 2, 3, 4, 5", "\ue001"]
    want = [taxonomy.is_predictable(t) for t in texts]
    monkeypatch.setattr(taxonomy, "_SEPARATORS", ["\ue000", "\ue001"])
    assert taxonomy.predictable_many(texts).tolist() == want


def test_classify_many_equals_classify_both():
    rng = random.Random(7)
    texts = _texts(11)
    occ = [rng.choice([0, 1, 5, 6, 100, None]) for _ in texts]
    for rmin in (1, 6):
        assert taxonomy.classify_many(texts, occ, rmin) == [taxonomy.classify_both(t, o, rmin)
                                                            for t, o in zip(texts, occ)]
