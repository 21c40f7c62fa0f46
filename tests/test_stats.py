"""goat.stats against hand computations and scipy: the t interval over seeds, Welch's test over seeds and the paired
test over questions."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from goat.stats import paired_test, regularized_beta, t_cdf_two_sided, t_interval, t_quantile, welch_test


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 29, 30])
def test_t_quantile_equals_scipys(df):
    assert t_quantile(0.95, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-9)
    assert t_cdf_two_sided(1.3, df) == pytest.approx(1 - 2 * scipy_stats.t.sf(1.3, df), abs=1e-12)


def test_t_interval_of_three_seeds_by_hand():
    # mean 2, sample std 1, t(0.975, 2) = 4.302652729911275 (the textbook table's 4.303): 2 +- 4.3027 / sqrt(3)
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half), abs=1e-9)
    assert t_interval([5.0]) is None


def test_paired_test_exact_p_by_hand():
    """One set, four questions: a right on three where b is wrong, tied on one. The difference is 75 points; of the
    2**3 sign patterns of the three differing questions only +++ and --- reach |75|: p = 2/8."""
    result = paired_test([1, 1, 1, 0], [0, 0, 0, 0], ["arc_e"] * 4)
    assert result.difference == pytest.approx(75.0)
    assert result.p_value == pytest.approx(0.25) and result.exact and result.differing == 3
    # a question right on one of two seeds counts 0.5: contributions 33.3, 33.3, 16.7, observed 83.3; only +++ and
    # --- reach it (flipping the 16.7 alone gives 50): p = 2/8, as a plain loop over the patterns finds
    a, b = np.array([1.0, 1.0, 0.5]), np.zeros(3)
    observed = 100 * (a - b).mean()
    hand = np.mean(
        [
            abs(sum(s * 100 * x / 3 for s, x in zip(signs, a, strict=True))) >= observed - 1e-9
            for signs in itertools.product((1, -1), repeat=3)
        ]
    )
    assert paired_test(a, b, ["s"] * 3).p_value == pytest.approx(hand) == pytest.approx(2 / 8)


def test_each_set_weighs_the_same_as_in_a_tables_average():
    # set x: 2 questions, a wins both (+100 points); set y: 4 questions, tied: the average difference is +50
    result = paired_test([1, 1, 0, 1, 0, 1], [0, 0, 0, 1, 0, 1], ["x", "x", "y", "y", "y", "y"])
    assert result.difference == pytest.approx(50.0)
    assert result.questions == 6 and result.differing == 2 and result.p_value == pytest.approx(0.5)


def test_monte_carlo_p_and_bootstrap_interval_on_many_questions():
    """400 questions, a right on 60 more of them than b: the sign-flip p against the normal approximation of the
    binomial sign test (60 differing +1 vs 0 -1 would be tiny; here 100 vs 40), and a bootstrap interval around the
    difference of width ~ 2 * 1.96 * its standard error."""
    rng = np.random.default_rng(1)
    a = np.zeros(400)
    b = np.zeros(400)
    a[:100], b[100:140] = 1, 1  # a alone right on 100, b alone right on 40, both wrong on the rest
    order = rng.permutation(400)
    result = paired_test(a[order], b[order], np.zeros(400))
    assert result.difference == pytest.approx(15.0) and not result.exact and result.differing == 140
    # sign test: 140 differing, 100 positive; two-sided normal approximation z = (100 - 70) / sqrt(35)
    z = (100 - 70) / math.sqrt(140 * 0.25)
    assert result.p_value < 1e-3 and 2 * scipy_stats.norm.sf(z) < 1e-3
    d = (a - b) * 100
    se = d.std(ddof=0) / math.sqrt(400)
    assert result.low == pytest.approx(15 - 1.96 * se, abs=0.8) and result.high == pytest.approx(
        15 + 1.96 * se, abs=0.8
    )
    # the same accuracy on different questions: difference 0, p near 1, an interval around 0
    tied = paired_test(a[order], a[order][::-1], np.zeros(400))
    assert tied.difference == pytest.approx(0.0) and tied.differing > 100
    assert tied.p_value > 0.9 and tied.low < 0 < tied.high


def test_paired_test_refuses_unmatched_inputs():
    with pytest.raises(ValueError, match="one length"):
        paired_test([1, 0], [1], ["a", "a"])


@pytest.mark.parametrize(
    "x,a,b", [(0.3, 2.5, 0.5), (0.9, 1.2, 0.5), (0.01, 0.7, 3.0), (0.5, 40.0, 0.5), (0.999, 3.3, 2.2)]
)
def test_regularized_beta_equals_scipys(x, a, b):
    from scipy.special import betainc

    assert regularized_beta(x, a, b) == pytest.approx(betainc(a, b, x), abs=1e-13)
    assert (regularized_beta(0.0, a, b), regularized_beta(1.0, a, b)) == (0.0, 1.0)


@pytest.mark.parametrize("df", [1.5, 2.37, 3.9, 7.25, 60.5])
def test_t_distribution_at_fractional_degrees_of_freedom_equals_scipys(df):
    for t in (0.2, 1.3, 4.0, 25.0):
        assert t_cdf_two_sided(t, df) == pytest.approx(1 - 2 * scipy_stats.t.sf(t, df), abs=1e-12)
    assert t_quantile(0.95, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-9)


@pytest.mark.parametrize(
    "a,b",
    [
        ([71.2, 70.1, 72.9], [69.0, 69.5, 70.3]),
        ([80.1, 78.9, 82.4], [81.0, 81.3]),
        ([1.0, 1.1, 0.9, 1.4], [3.0, -2.0, 7.5]),
    ],
)
def test_welch_test_equals_scipys_p_and_interval(a, b):
    got = welch_test(a, b)
    want = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert got.p_value == pytest.approx(want.pvalue, abs=1e-10)
    assert got.difference == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    low, high = want.confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-9)
    assert got.df == pytest.approx(want.df, rel=1e-12) and got.seeds == (len(a), len(b))


def test_welch_test_without_spread_or_with_one_seed():
    same = welch_test([68.94] * 3, [68.94] * 3)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    apart = welch_test([68.94] * 3, [71.8] * 3)
    assert apart.p_value == 0.0 and apart.low == apart.high == pytest.approx(68.94 - 71.8)
    assert welch_test([70.0], [71.0, 72.0]) is None
