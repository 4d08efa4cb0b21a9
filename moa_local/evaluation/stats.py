"""Confidence intervals and paired comparisons: seeded percentile bootstrap, paired bootstrap, McNemar.

A metric's value over items is a ratio of sums (`suite.py`: each item gives
a numerator and a denominator), so the bootstrap resamples items with
replacement and recomputes that ratio; the 95% interval is the 2.5th and
97.5th percentiles of `resamples` resampled values (default 10,000), the
draws seeded so a rerun gives the same interval. A paired comparison takes
the items both models scored, the per-item difference of their values,
and bootstraps its mean the same way. For pass/fail metrics it adds
McNemar's exact test (two-sided binomial on the discordant pairs b and c).

The verdict in words: for a pass/fail metric, McNemar's p < 0.05 decides
(better or worse by the sign of b - c); otherwise the paired interval
excluding 0 decides. Neither: "no detectable difference at this sample
size". No correction for multiple comparisons is applied; the report says so.

Left out on purpose: numpy (pure Python keeps the core light and
deterministic across versions; 10,000 resamples of a few hundred items
take well under a second).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Pair = tuple[float, float]
ALPHA = 0.05
DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Estimate:
    value: float | None  # None: nothing was scored
    low: float | None
    high: float | None
    n: int  # items that count


@dataclass(frozen=True)
class McNemar:
    b: int  # the first model passes, the second fails
    c: int  # the first fails, the second passes
    p: float


@dataclass(frozen=True)
class Comparison:
    diff: Estimate  # first minus second, per item, mean
    mcnemar: McNemar | None
    verdict: str  # "better", "worse" or "no detectable difference at this sample size"


NO_DIFFERENCE = "no detectable difference at this sample size"


def ratio(pairs: Sequence[Pair]) -> float | None:
    den = sum(d for _, d in pairs)
    return sum(n for n, _ in pairs) / den if den > 0 else None


def bootstrap(pairs: Sequence[Pair], resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Estimate:
    """The ratio of sums over `pairs` with its 95% percentile bootstrap interval (items with den 0 do not count)."""
    counted = [pair for pair in pairs if pair[1] > 0]
    value = ratio(counted)
    if value is None:
        return Estimate(None, None, None, 0)
    nums, dens = [n for n, _ in counted], [d for _, d in counted]
    size = len(counted)
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        picks = rng.choices(range(size), k=size)
        values.append(sum(nums[i] for i in picks) / sum(dens[i] for i in picks))
    low, high = percentile_interval(values)
    return Estimate(value, low, high, size)


def percentile_interval(values: list[float], alpha: float = ALPHA) -> tuple[float, float]:
    ordered = sorted(values)
    last = len(ordered) - 1
    return _at(ordered, alpha / 2 * last), _at(ordered, (1 - alpha / 2) * last)


def _at(ordered: list[float], position: float) -> float:
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired pass/fail outcomes."""
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return McNemar(b, c, exact_binomial_p(b, c))


def exact_binomial_p(b: int, c: int) -> float:
    """Two-sided p of b successes in b + c fair coin flips: 2 * P(X <= min(b, c)), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail: float = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(
    first: Sequence[Pair | None], second: Sequence[Pair | None], *, pass_fail: bool,
    resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> Comparison:  # fmt: skip
    """`first` against `second` over the items both scored (index i is the same item in both)."""
    both = [(x, y) for x, y in zip(first, second, strict=True) if x and y and x[1] > 0 and y[1] > 0]
    diffs = [(x[0] / x[1] - y[0] / y[1], 1.0) for x, y in both]
    diff = bootstrap(diffs, resamples, seed)
    test = mcnemar([x[0] >= x[1] for x, _ in both], [y[0] >= y[1] for _, y in both]) if pass_fail else None
    return Comparison(diff, test, verdict(diff, test))


def verdict(diff: Estimate, test: McNemar | None) -> str:
    if test is not None:
        if test.p < ALPHA:
            return "better" if test.b > test.c else "worse"
        return NO_DIFFERENCE
    if diff.low is not None and diff.low > 0:
        return "better"
    if diff.high is not None and diff.high < 0:
        return "worse"
    return NO_DIFFERENCE
