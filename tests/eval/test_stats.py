import math

import pytest

from fmmm.eval.stats import (
    mcnemar_exact,
    paired_comparison,
    paired_difference_interval,
    wilson_interval,
)


@pytest.mark.parametrize(
    "only_a, only_b, p_value",
    [
        (0, 5, 2 / 2**5),  # 0.0625
        (5, 0, 0.0625),
        (1, 9, 2 * (1 + 10) / 2**10),  # 2 * sum_{k<=1} C(10, k) / 2^10 = 0.021484375
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
        (4, 4, 1.0),
        (0, 0, 1.0),
        (0, 1, 1.0),
    ],
)
def test_mcnemar_exact_matches_hand_computed_tables(only_a, only_b, p_value):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(p_value, rel=1e-12)


def test_mcnemar_exact_stays_exact_for_many_discordant_pairs():
    # integer arithmetic: no underflow or cancellation however small the tail
    assert mcnemar_exact(0, 1000) == pytest.approx(2.0**-999, rel=1e-12)
    assert 0 < mcnemar_exact(300, 700) < 1e-30


def test_paired_interval_matches_newcombe_1998_example():
    # Newcombe (1998), paired example: 36 both, 12 only A, 2 only B, 0 neither; method 10
    low, high = paired_difference_interval(36, 12, 2, 0)
    assert (low, high) == pytest.approx((0.0569, 0.3404), abs=1e-4)


def test_paired_interval_is_symmetric_and_contains_the_difference():
    low, high = paired_difference_interval(10, 3, 3, 4)
    assert low == pytest.approx(-high) and low < 0 < high
    low, high = paired_difference_interval(5, 9, 1, 5)
    assert low < 8 / 20 < high and -1 <= low and high <= 1


def test_paired_comparison_counts_the_discordant_pairs():
    a = [True, True, False, False, True, True]
    b = [True, False, True, False, False, False]
    result = paired_comparison(a, b)
    assert (result["both"], result["only_a"], result["only_b"]) == (1, 3, 1)
    assert result["success_a"] == pytest.approx(4 / 6) and result["success_b"] == pytest.approx(
        2 / 6
    )
    assert result["difference"] == pytest.approx(2 / 6)
    assert result["p_value"] == pytest.approx(2 * (1 + 4) / 2**4)
    low, high = result["difference_ci95"]
    assert low < result["difference"] < high
    with pytest.raises(ValueError, match="length"):
        paired_comparison([True], [True, False])


def test_wilson_interval_is_the_one_rollout_uses():
    from fmmm.eval import rollout

    assert rollout.wilson_interval is wilson_interval
    low, high = wilson_interval(5, 10)
    assert math.isclose(low + high, 1.0)
