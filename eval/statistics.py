"""Summaries over seeds: mean and spread, and the paired difference of two methods with its confidence interval."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def paired_difference(treatment: Sequence[float], control: Sequence[float], confidence: float = 0.95
                      ) -> tuple[float, float, float]:
    """Mean of `treatment - control` over paired runs (same seed, same data) and its two-sided Student-t interval.

    With one pair the interval is unbounded (NaN ends): one seed cannot say how much a difference varies.
    """
    differences = np.asarray(treatment, dtype=float) - np.asarray(control, dtype=float)
    mean = float(differences.mean())
    if len(differences) < 2:
        return mean, math.nan, math.nan
    half_width = stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * differences.std(ddof=1) / \
        math.sqrt(len(differences))
    return mean, float(mean - half_width), float(mean + half_width)


def paired_permutation_p(treatment: Sequence[float], control: Sequence[float]) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean(treatment - control) = 0 (exact over all
    2^n sign flips for n <= 12 pairs): no normality assumed, unlike the t interval, so it stays honest for
    bimodal metrics (a seed either learns an attribute or does not)."""
    differences = np.asarray(treatment, dtype=float) - np.asarray(control, dtype=float)
    if len(differences) < 2 or not differences.any():
        return 1.0
    test = stats.permutation_test((differences,), np.mean, permutation_type="samples", alternative="two-sided",
                                  n_resamples=4096)
    return float(test.pvalue)
