"""How sure a comparison of two methods is: a t interval over seeds, and a paired test over the test questions.

- t_interval(values): the mean over seeds ± t(0.975, n-1) * s / sqrt(n) (s: the sample standard deviation), the
  Student t quantile computed exactly for integer degrees of freedom (Abramowitz & Stegun 26.7.3 and 26.7.4).
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


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with `df` (integer) degrees of freedom: Abramowitz & Stegun 26.7.3 (odd df) and
    26.7.4 (even df), theta = atan(t / sqrt(df))."""
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


def t_quantile(level: float, df: int) -> float:
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
