"""How sure a comparison of two methods is: a t interval over seeds, Welch's test over seeds, and a paired test over
the test questions.

- t_interval(values): the mean over seeds ± t(0.975, n-1) * s / sqrt(n) (s: the sample standard deviation), the
  Student t quantile computed exactly for integer degrees of freedom (Abramowitz & Stegun 26.7.3 and 26.7.4), and
  for any other through the regularized incomplete beta function (a continued fraction, A&S 26.5.8).
- welch_test(a, b): two methods' scores over their seeds (not paired: seed s of one has nothing to do with seed s
  of the other). The difference of the means, its 95% interval mean_a - mean_b ± t(0.975, df) * se, and the
  two-sided p of t = difference / se, with se^2 = s_a^2 / n_a + s_b^2 / n_b and Welch-Satterthwaite's df. For
  tables without per-question outcomes (accuracy over a dev set, a few seeds per method).
- paired_test(a, b, sets): two methods scored on the same questions. a, b: (N,) each question's correctness
  averaged over a method's seeds (in [0, 1]); sets: (N,) the test set of each question. The statistic is the
  difference of the two methods' accuracies averaged over the sets (each set weighs the same, as a table's average
  column does), in points: 100 * mean over sets of mean over its questions of (a - b).
  - interval: the paired bootstrap (questions drawn with replacement within each set, both methods' outcomes kept
    together), the 2.5th and 97.5th percentiles of the statistic over `rounds` draws;
  - p: the two-sided sign-flip randomization test. If the methods do not differ, each question's difference a - b
    is as likely to be negated (the two methods' outcomes swapped), so p is the share of the 2**N sign patterns
    whose statistic is at least as far from 0 as the observed one: enumerated exactly when at most EXACT_LIMIT
    questions differ, else estimated from `rounds` random patterns as (1 + hits) / (1 + rounds).
Both draws use a fixed seed: a report rendered twice prints the same numbers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

EXACT_LIMIT = 16  # questions that differ, up to which the sign-flip test enumerates all 2**m patterns
ROUNDS = 10_000  # bootstrap draws and random sign patterns
TEST_SEED = 0


def t_cdf_two_sided(t: float, df: float) -> float:
    """P(|T| <= t) for Student's T with `df` degrees of freedom: for integer df Abramowitz & Stegun 26.7.3 (odd) and
    26.7.4 (even), theta = atan(t / sqrt(df)); for any other 1 - I_x(df / 2, 1 / 2) with x = df / (df + t^2)."""
    if df != int(df):
        return 1.0 - regularized_beta(df / (df + t * t), df / 2, 0.5)
    df = int(df)
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = 1.0, 1.0  # 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ... up to cos^(df-3)))
    for k in range(1, (df - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in [0, 1]: the continued fraction of
    A&S 26.5.8 evaluated by the modified Lentz method, on the side of the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    where it converges fast."""
    if not (a > 0 and b > 0 and 0 <= x <= 1):
        raise ValueError(f"regularized_beta needs a, b > 0 and x in [0, 1], got x={x}, a={a}, b={b}")
    if x in (0.0, 1.0):
        return float(x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    return front * _beta_fraction(x, a, b) / a


def _beta_fraction(x: float, a: float, b: float) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))) of A&S 26.5.8, d_2m = m (b - m) x / ((a + 2m - 1)(a + 2m)) and
    d_2m+1 = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)), by the modified Lentz method."""
    tiny = 1e-300

    def guarded(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / guarded(1.0 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 / guarded(1.0 + numerator * d)
            c = guarded(1.0 + numerator / c)
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"the incomplete beta fraction did not converge for x={x}, a={a}, b={b}")


def t_quantile(level: float, df: float) -> float:
    """t such that P(|T| <= t) = level (0.95: the 0.975 quantile), by bisection to 1e-12."""
    if df < 1 or not 0 < level < 1:
        raise ValueError(f"t_quantile needs df >= 1 and a level in (0, 1), got df={df}, level={level}")
    low, high = 0.0, 1.0
    while t_cdf_two_sided(high, df) < level:
        high *= 2
    while high - low > 1e-12 * max(1.0, high):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf_two_sided(middle, df) < level else (low, middle)
    return (low + high) / 2


def t_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """(low, high) of the t interval of the mean of `values` (seeds); None for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    half = t_quantile(level, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


@dataclass(frozen=True)
class WelchTest:
    difference: float  # mean of a minus mean of b
    low: float  # 95% Welch interval of the difference
    high: float
    p_value: float  # two-sided
    df: float  # Welch-Satterthwaite degrees of freedom (inf when neither has any spread)
    seeds: tuple[int, int]  # values of a and of b


def welch_test(a, b, level: float = 0.95) -> WelchTest | None:
    """Welch's unequal-variance t-test of the means of a and b (module docstring); None when either has fewer than
    two values. Neither with any spread: the interval is the difference itself and p is 1 if it is 0, else 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    difference = float(a.mean() - b.mean())
    share_a, share_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(share_a + share_b)
    if se == 0:
        return WelchTest(difference, difference, difference, float(difference == 0), math.inf, (len(a), len(b)))
    df = (share_a + share_b) ** 2 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    p_value = 1.0 - t_cdf_two_sided(abs(difference) / se, df)
    half = t_quantile(level, df) * se
    return WelchTest(difference, difference - half, difference + half, max(p_value, 0.0), df, (len(a), len(b)))


@dataclass(frozen=True)
class PairedTest:
    difference: float  # points: 100 * the set-averaged accuracy of a minus that of b
    low: float  # 95% paired-bootstrap interval of the difference
    high: float
    p_value: float  # two-sided sign-flip randomization test
    questions: int
    differing: int  # questions on which the two seed-averaged outcomes differ
    exact: bool  # whether p enumerated every sign pattern


def paired_test(a, b, sets, rounds: int = ROUNDS, seed: int = TEST_SEED) -> PairedTest:
    """The paired comparison of methods a and b on the same questions (module docstring)."""
    a, b, sets = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(sets)
    if not a.shape == b.shape == sets.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_test needs a, b and sets of one length > 0, got {a.shape}, {b.shape}, {sets.shape}")
    names, codes = np.unique(sets, return_inverse=True)
    counts = np.bincount(codes)
    weights = 100.0 / (len(names) * counts[codes])  # (N,): every set weighs the same, points of accuracy
    contributions = weights * (a - b)  # (N,): the statistic is their sum
    observed = float(contributions.sum())
    rng = np.random.default_rng(seed)
    boot = np.zeros(rounds)
    for code, count in enumerate(counts):  # each set resampled within itself
        members = contributions[codes == code]
        boot += members[rng.integers(0, count, size=(rounds, count))].sum(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    nonzero = contributions[contributions != 0]
    exact = len(nonzero) <= EXACT_LIMIT
    if exact:
        patterns = np.array(list(itertools.product((1.0, -1.0), repeat=len(nonzero))))  # (2**m, m)
        p_value = float(np.mean(np.abs(patterns @ nonzero) >= abs(observed) - 1e-9))
    else:
        hits = 0
        for start in range(0, rounds, 1000):  # (chunk, m) signs at a time
            signs = rng.choice((-1.0, 1.0), size=(min(1000, rounds - start), len(nonzero)))
            hits += int(np.sum(np.abs(signs @ nonzero) >= abs(observed) - 1e-9))
        p_value = (1 + hits) / (1 + rounds)
    return PairedTest(observed, float(low), float(high), p_value, len(a), len(nonzero), exact)
