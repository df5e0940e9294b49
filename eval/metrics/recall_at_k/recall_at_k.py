"""Recall@k from ranks: the share of queries whose best true match is among the top k.

Inputs are ranks, not score matrices, so that retrieval over tens of thousands of items does not push a
dense matrix through the metric's Arrow cache; `modeling_psdclip.ranking.true_match_ranks` computes them.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Recall@k for ranking tasks with one or several true matches per query (zero-shot classification: one class;
retrieval: several captions per image). `ranks[q]` is the number of wrong items that score at least as high
as the best-scoring true match of query q, so ties count against the model, and query q is a hit at k when
`ranks[q] < k`. For classification, recall@1 is top-1 accuracy and recall@5 top-5 accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    ranks (`list` of `int`): per query, wrong items scoring at least as high as its best true match.
    k (`list` of `int`, defaults to [1, 5, 10]): cut-offs.
Returns:
    `dict` mapping "recall@k" to a float in [0, 1] for each k.
Examples:
    >>> metric = evaluate.load("eval/metrics/recall_at_k")
    >>> metric.compute(ranks=[0, 3, 12], k=[1, 5])
    {'recall@1': 0.3333333333333333, 'recall@5': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"ranks": datasets.Value("int64")}),
        )

    def _compute(self, ranks, k=(1, 5, 10)):
        ranks = np.asarray(ranks)
        return {f"recall@{cutoff}": float(np.mean(ranks < cutoff)) for cutoff in k}
