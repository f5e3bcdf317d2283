"""gs_tune/stats.py against published Student-t quantiles and hand-computed intervals."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from gs_tune.stats import mean_interval, paired_difference, slope_interval, t_quantile


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


def test_slope_interval_matches_scipys_regression():
    xs = [1000, 1200, 1400, 1600, 1800, 2000]
    ys = [0.809, 0.809, 0.826, 0.804, 0.802, 0.830]
    fit = scipy_stats.linregress(xs, ys)
    iv = slope_interval(xs, ys, over="validations")
    assert iv.mean == pytest.approx(fit.slope, rel=1e-9)
    assert iv.half_width == pytest.approx(2.776 * fit.stderr, rel=1e-3)  # t with n - 2 = 4 df
    assert (iv.n, iv.over) == (6, "validations")


def test_slope_of_points_on_a_line_is_exact_and_short_inputs_say_why():
    iv = slope_interval([0, 1, 2, 3], [1.0, 1.5, 2.0, 2.5], over="points")
    assert iv.mean == pytest.approx(0.5) and iv.half_width == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(slope_interval([0, 1], [0.0, 1.0], over="points").half_width)
    with pytest.raises(ValueError, match="at least 2 points"):
        slope_interval([0], [0.0], over="points")
    with pytest.raises(ValueError, match="distinct x"):
        slope_interval([1, 1, 1], [0.0, 1.0, 2.0], over="points")
    with pytest.raises(ValueError, match="equal lengths"):
        slope_interval([0, 1, 2], [0.0, 1.0], over="points")
