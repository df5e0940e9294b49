"""How well a suspicion score separates mismatched image-text pairs from clean ones."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

_DESCRIPTION = """
Detection quality of a per-pair suspicion score (higher = more likely mismatched) against known noise labels:
AUROC and average precision (scikit-learn; tied scores are averaged), and precision at the true noise rate:
the share of truly noisy pairs among the n highest-scoring pairs, n being the number of noisy pairs (a pair
tied with the n-th counts in proportion to the slots left, so ties neither help nor hurt). precision@noise
rate equals recall there, so one number says how much of the noise a user removes by dropping that many pairs.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `float`): suspicion per pair, higher = more likely noisy.
    is_noisy (`list` of `int`): 1 for a mismatched pair, 0 for a clean one.
Returns:
    `dict` with "auroc", "average_precision", "precision_at_noise_rate" and "noise_rate" (None for the first
    three when only one kind of pair is present).
Examples:
    >>> metric = evaluate.load("eval/metrics/noise_detection")
    >>> metric.compute(scores=[0.9, 0.1, 0.8, 0.2], is_noisy=[1, 0, 0, 0])["auroc"]
    1.0
"""


def precision_at_count(scores: np.ndarray, is_noisy: np.ndarray, count: int) -> float:
    # Hand-written: scikit-learn has no precision-at-k for a binary ranking with this tie rule.
    threshold = np.sort(scores)[::-1][count - 1]
    above, tied = scores > threshold, scores == threshold
    slots_left = count - above.sum()
    noisy_found = is_noisy[above].sum() + slots_left * is_noisy[tied].mean()
    return float(noisy_found / count)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NoiseDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"scores": datasets.Value("float64"), "is_noisy": datasets.Value("int64")}),
        )

    def _compute(self, scores, is_noisy):
        scores, is_noisy = np.asarray(scores, dtype=float), np.asarray(is_noisy, dtype=int)
        noisy_count = int(is_noisy.sum())
        result = {"noise_rate": float(is_noisy.mean()), "auroc": None, "average_precision": None,
                  "precision_at_noise_rate": None}
        if 0 < noisy_count < len(is_noisy):
            result["auroc"] = float(roc_auc_score(is_noisy, scores))
            result["average_precision"] = float(average_precision_score(is_noisy, scores))
            result["precision_at_noise_rate"] = precision_at_count(scores, is_noisy, noisy_count)
        return result
