"""gs_tune/stats.py against published Student-t quantiles and hand-computed intervals."""

from __future__ import annotations

import math

import pytest

from gs_tune.stats import mean_interval, paired_difference, t_quantile


@pytest.mark.parametrize("df, q", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (599, 1.964)])
def test_t_quantiles_match_the_tables(df, q):
    assert t_quantile(df) == pytest.approx(q, abs=5e-4)


def test_interval_over_three_seeds_uses_t_not_1_96():
    iv = mean_interval([0.80, 0.85, 0.90], over="seeds")
    sd = 0.05
    assert iv.mean == pytest.approx(0.85)
    assert iv.half_width == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-4)
    assert iv.half_width > 2.19 * 1.96 * sd / math.sqrt(3)
    assert (iv.n, iv.over) == (3, "seeds")
    assert "95% t-interval over 3 seeds" in iv.describe()


def test_one_value_has_no_interval():
    iv = mean_interval([0.7], over="seeds")
    assert iv.mean == 0.7 and math.isnan(iv.half_width)
    assert iv.describe() == "70.00% (one value: no interval)"
    with pytest.raises(ValueError):
        mean_interval([], over="seeds")


def test_paired_difference_cancels_the_shared_noise():
    a = [0.60, 0.70, 0.80, 0.90, 0.75]
    b = [x - 0.02 + e for x, e in zip(a, (0.001, -0.001, 0.002, -0.002, 0.0))]
    diff = paired_difference(a, b, over="seeds")
    assert diff.mean == pytest.approx(0.02)
    unpaired = mean_interval(a, "seeds").half_width + mean_interval(b, "seeds").half_width
    assert diff.half_width < unpaired / 20
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0], over="seeds")
