"""The statistics against known values: a degenerate bootstrap, McNemar on textbook tables, the LC refit."""

from __future__ import annotations

import math
import random

import pytest

from moa_local.evaluation.length_control import fit
from moa_local.evaluation.stats import NO_DIFFERENCE, bootstrap, compare, exact_binomial_p, mcnemar


def test_bootstrap_of_a_degenerate_sample_is_a_point() -> None:
    estimate = bootstrap([(7.0, 1.0)] * 25, resamples=500, seed=1)
    assert (estimate.value, estimate.low, estimate.high, estimate.n) == (7.0, 7.0, 7.0, 25)


def test_bootstrap_is_seeded_and_covers_the_value() -> None:
    pairs = [(float(i % 3 == 0), 1.0) for i in range(90)]
    first, again = bootstrap(pairs, 2000, seed=5), bootstrap(pairs, 2000, seed=5)
    assert first == again
    assert first.value == pytest.approx(1 / 3) and first.low < first.value < first.high
    # the normal approximation's half-width for p = 1/3, n = 90 is 1.96 * sqrt(p(1-p)/n) = 0.097
    assert first.high - first.low == pytest.approx(2 * 0.097, abs=0.03)


def test_bootstrap_is_a_ratio_of_sums_and_skips_unscored_items() -> None:
    estimate = bootstrap([(3.0, 4.0), (1.0, 4.0), (0.0, 0.0)], resamples=200)
    assert (estimate.value, estimate.n) == (0.5, 2)
    assert bootstrap([(0.0, 0.0)]).value is None


def test_mcnemar_exact_on_a_small_table_worked_by_hand() -> None:
    # b = 1, c = 9: 2 * (C(10,0) + C(10,1)) / 2**10 = 22 / 1024
    assert exact_binomial_p(1, 9) == 22 / 1024
    assert exact_binomial_p(0, 0) == 1.0 and exact_binomial_p(5, 5) == 1.0


def test_mcnemar_on_the_textbook_presidential_approval_table() -> None:
    """Agresti's table (794 approve twice, 150 then not, 86 not then yes, 570 never): discordant 150 and 86."""
    first = [True] * 794 + [True] * 150 + [False] * 86 + [False] * 570
    second = [True] * 794 + [False] * 150 + [True] * 86 + [False] * 570
    test = mcnemar(first, second)
    assert (test.b, test.c) == (150, 86)
    expected = 2 * sum(math.comb(236, k) for k in range(87)) / 2**236
    assert test.p == pytest.approx(expected)
    assert 1e-5 < test.p < 1e-4  # chi-square 17.36 on 1 df gives 3.1e-5; the exact test is a little larger
    scipy_stats = pytest.importorskip("scipy.stats")
    assert test.p == pytest.approx(scipy_stats.binomtest(86, 236, 0.5).pvalue)


def test_paired_comparison_verdicts() -> None:
    better = [(1.0, 1.0)] * 30 + [(0.0, 1.0)] * 10
    worse = [(0.0, 1.0)] * 30 + [(0.0, 1.0)] * 10
    result = compare(better, worse, pass_fail=True, resamples=500)
    assert result.mcnemar is not None and (result.mcnemar.b, result.mcnemar.c) == (30, 0)
    assert result.verdict == "better" and result.diff.value == pytest.approx(0.75)
    assert compare(worse, better, pass_fail=True, resamples=500).verdict == "worse"
    assert compare(better, better, pass_fail=True, resamples=500).verdict == NO_DIFFERENCE
    graded_a = [(8.0, 1.0)] * 20
    graded_b = [(6.0, 1.0)] * 20
    assert compare(graded_a, graded_b, pass_fail=False, resamples=500).verdict == "better"
    noisy = [(float(i % 2), 1.0) for i in range(20)]
    assert compare(noisy, noisy[1:] + noisy[:1], pass_fail=False, resamples=500).verdict == NO_DIFFERENCE


def test_paired_comparison_uses_only_items_both_scored() -> None:
    result = compare([(1.0, 1.0), (1.0, 1.0), None], [(0.0, 1.0), (0.0, 0.0), (1.0, 1.0)], pass_fail=False,
                     resamples=100)  # fmt: skip
    assert result.diff.n == 1 and result.diff.value == 1.0


def test_length_controlled_fit_recovers_a_known_model() -> None:
    """Preferences drawn from sigmoid(2 tanh(delta / sd) - 0.5): the fit finds beta near -0.5."""
    rng = random.Random(3)
    model_chars = [rng.randint(200, 3000) for _ in range(800)]
    reference_chars = [1600] * 800
    deltas = [m - 1600 for m in model_chars]
    sd = (sum(d * d for d in deltas) / len(deltas) - (sum(deltas) / len(deltas)) ** 2) ** 0.5
    preferences = [1 / (1 + math.exp(-(2 * math.tanh(d / sd) - 0.5))) for d in deltas]
    fitted = fit(preferences, model_chars, reference_chars)
    assert fitted is not None
    assert fitted.theta == pytest.approx(2.0, abs=0.01) and fitted.beta == pytest.approx(-0.5, abs=0.01)
    assert fitted.lc_win_rate == pytest.approx(1 / (1 + math.exp(0.5)), abs=0.005)


def test_length_controlled_fit_stays_finite_when_every_item_is_won() -> None:
    fitted = fit([1.0] * 10, [500] * 10, [400] * 10)
    assert fitted is not None and 0.99 < fitted.lc_win_rate < 1.0
    assert fit([], [], []) is None
