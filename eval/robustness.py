"""Robustness to distribution shift: zero-shot accuracy in distribution and on shifted sets, the drop, and
effective robustness (Taori et al. 2020, "Measuring robustness to natural distribution shifts").

Effective robustness is a model's shifted accuracy above what a baseline predicts from its in-distribution
accuracy. The baseline is a line fitted, in logit-scaled accuracy, through the (in-distribution, shifted)
points of the models evaluated together. A line through two points fits both exactly, which would report 0 for
every model, so the fit needs at least three models and two different in-distribution accuracies; effective
robustness is None otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from modeling_psdclip.embedding import ImageTextEmbedder

from .data import EvalData
from .errors import EvalInputError
from .zeroshot import zero_shot_classification

# Accuracies are clipped away from 0 and 1 before the logit so that a perfect or null score stays finite.
EPSILON = 1e-4
AVERAGE = "average"


def _logit(accuracy):
    return logit(np.clip(accuracy, EPSILON, 1 - EPSILON))


def fit_baseline(in_accuracy, shifted_accuracy) -> tuple[float, float] | None:
    """Slope and intercept of logit(shifted) = slope * logit(in) + intercept, or None when underdetermined."""
    x = _logit(np.asarray(in_accuracy, dtype=float))
    if len(x) < 3 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, _logit(np.asarray(shifted_accuracy, dtype=float)), 1)
    return float(slope), float(intercept)


def baseline_prediction(baseline: tuple[float, float], in_accuracy):
    slope, intercept = baseline
    return expit(slope * _logit(in_accuracy) + intercept)


def robustness(models: list[ImageTextEmbedder], in_distribution: EvalData, shifted: list[EvalData],
               templates: list[str] | None = None) -> dict:
    """Zero-shot top-1 accuracy of every model on `in_distribution` and each `shifted` set, with per set (and
    for the average over the shifted sets) the drop and the effective robustness against the joint fit."""
    if not shifted:
        raise EvalInputError("robustness needs at least one shifted data set")
    for data in shifted:
        if data.class_names != in_distribution.class_names:
            raise EvalInputError(f"shifted data {data.name!r} has other class names than {in_distribution.name!r}")
    accuracy = [  # per model: set name -> top-1 accuracy
        {data.name: zero_shot_classification(model, data, templates)["top1_accuracy"]
         for data in (in_distribution, *shifted)}
        for model in models
    ]
    for by_set in accuracy:
        by_set[AVERAGE] = float(np.mean([by_set[data.name] for data in shifted]))
    in_accuracy = [by_set[in_distribution.name] for by_set in accuracy]
    set_names = [data.name for data in shifted] + [AVERAGE]
    baselines = {name: fit_baseline(in_accuracy, [by_set[name] for by_set in accuracy]) for name in set_names}
    results = []
    for model, by_set in zip(models, accuracy):
        base = by_set[in_distribution.name]
        results.append({
            "model": model.name,
            "in_distribution_accuracy": base,
            "shifted": {
                name: {
                    "accuracy": by_set[name],
                    "drop": base - by_set[name],
                    "effective_robustness": None if baselines[name] is None
                    else float(by_set[name] - baseline_prediction(baselines[name], base)),
                }
                for name in set_names
            },
        })
    return {
        "in_distribution": in_distribution.name,
        "models": results,
        "baselines": {name: None if fit is None else {"slope": fit[0], "intercept": fit[1]}
                      for name, fit in baselines.items()},
    }
