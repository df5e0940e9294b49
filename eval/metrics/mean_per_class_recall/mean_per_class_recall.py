"""Mean per-class recall: top-1 recall of each class, averaged over the classes present."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Mean per-class recall (balanced accuracy) of a classifier, from the same ranks as `recall_at_k`: an example is
correct when no wrong class scores at least as high as its true class (ties count against the model).
Classes absent from `labels` are left out of the mean. Written here rather than with scikit-learn's
`balanced_accuracy_score`, which needs predicted labels and so would break ties differently from top-k.
"""

_KWARGS_DESCRIPTION = """
Args:
    ranks (`list` of `int`): per example, wrong classes scoring at least as high as the true class.
    labels (`list` of `int`): per example, its true class.
Returns:
    `dict` with "mean_per_class_recall", a float in [0, 1].
Examples:
    >>> metric = evaluate.load("eval/metrics/mean_per_class_recall")
    >>> metric.compute(ranks=[0, 1, 0, 0], labels=[0, 0, 1, 1])
    {'mean_per_class_recall': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanPerClassRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"ranks": datasets.Value("int64"), "labels": datasets.Value("int64")}),
        )

    def _compute(self, ranks, labels):
        correct, labels = np.asarray(ranks) == 0, np.asarray(labels)
        recalls = [correct[labels == label].mean() for label in np.unique(labels)]
        return {"mean_per_class_recall": float(np.mean(recalls))}
