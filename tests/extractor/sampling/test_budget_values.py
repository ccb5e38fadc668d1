"""Budget and Pricing validate their own numbers when built directly (not only through the CLI or
the campaign schema): nan compares false with every cap and inf is no cap, so either would switch
a budget off silently (issue 17)."""
from __future__ import annotations

import math

import pytest

from extractor.errors import TrawlError, is_user_error
from extractor.sampling.budget import Budget, Pricing

BAD_BUDGETS = [
    ({"max_dollars": math.nan}, "finite"),
    ({"max_dollars": math.inf}, "finite"),
    ({"max_seconds": math.inf}, "finite"),
    ({"max_seconds": -math.inf}, "finite"),
    ({"max_tokens": math.nan}, "finite"),
    ({"max_generations": math.inf}, "finite"),
    ({"max_generations": -1}, ">= 0"),
    ({"max_generations": 2.5}, "whole number"),
    ({"max_tokens": "100"}, "must be a number"),
    ({"max_seconds": True}, "must be a number"),
]


@pytest.mark.parametrize("kwargs,message", BAD_BUDGETS, ids=[repr(k) for k, _ in BAD_BUDGETS])
def test_a_bad_budget_is_a_user_error(kwargs, message):
    with pytest.raises(TrawlError) as e:
        Budget(**kwargs)
    assert message in str(e.value) and is_user_error(e.value)
    assert next(iter(kwargs)) in str(e.value)


@pytest.mark.parametrize("kwargs", [{"input_per_mtok": math.nan}, {"output_per_mtok": math.inf},
                                    {"gpu_hourly_usd": math.nan}, {"gpu_hourly_usd": -1.0},
                                    {"input_per_mtok": "1"}])
def test_a_bad_price_is_a_user_error(kwargs):
    with pytest.raises(TrawlError):
        Pricing(**kwargs)


def test_good_values_still_build():
    b = Budget(max_generations=10, max_tokens=0, max_dollars=1.5, max_seconds=30)
    assert b.to_dict() == {"max_generations": 10, "max_tokens": 0, "max_dollars": 1.5, "max_seconds": 30}
    assert Budget().to_dict() == dict.fromkeys(["max_generations", "max_tokens", "max_dollars", "max_seconds"])
    assert Pricing(gpu_hourly_usd=0.5).hourly and Budget(max_generations=4.0).max_generations == 4.0


# neighbours: the sampler's other settings (an inf max_n or flush_rows reached int(inf) at run time)
@pytest.mark.parametrize("kwargs", [{"max_n": math.inf}, {"max_prompts": math.inf}, {"flush_rows": math.inf},
                                    {"flush_rows": 2.5}, {"flush_seconds": math.inf}, {"drain_seconds": math.nan},
                                    {"backoff_base": math.nan}, {"backoff_max": math.inf}, {"seed": math.nan},
                                    {"max_consecutive_failures": 0}, {"max_consecutive_failures": math.inf}])
def test_sampler_settings_refuse_non_finite_values(kwargs):
    from extractor.sampling.settings import SamplerSettings

    with pytest.raises(TrawlError) as e:
        SamplerSettings(**kwargs)
    assert next(iter(kwargs)) in str(e.value) and is_user_error(e.value)
    SamplerSettings(max_consecutive_failures=3, seed=7, backoff_base=0.0)
