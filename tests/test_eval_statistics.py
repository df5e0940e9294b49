"""Seed summaries checked on hand-made numbers."""

import math

import pytest

from eval.statistics import mean_std, paired_difference


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, math.sqrt(7.0)))
    assert mean_std([0.4]) == (0.4, 0.0)


def test_paired_difference_and_its_t_interval():
    # Differences 1, 2, 3: mean 2, sample std 1, t(0.975, 2 dof) = 4.302653 -> half width 4.302653 / sqrt(3).
    mean, low, high = paired_difference([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert mean == pytest.approx(2.0)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half))
    # Pairing matters: the same numbers unpaired would spread far wider.
    assert high - low < 10
    mean, low, high = paired_difference([0.5], [0.25])
    assert mean == 0.25 and math.isnan(low) and math.isnan(high)


def test_paired_permutation_test_is_exact_and_symmetric():
    from eval.statistics import paired_permutation_p

    # Five pairs all higher: the observed mean is the most extreme of 2^5 sign flips, twice (two-sided): 2/32.
    assert paired_permutation_p([1, 2, 3, 4, 5], [0, 1, 2, 3, 4]) == pytest.approx(2 / 32)
    assert paired_permutation_p([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert paired_permutation_p([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0
    assert paired_permutation_p([0.3, 0.3], [0.3, 0.3]) == 1.0
