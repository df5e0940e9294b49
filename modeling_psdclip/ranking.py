"""Ranks of true matches in a similarity ranking, the input of the recall metrics.

A query's rank is the number of wrong items that score at least as high as its best-scoring true match, so a
tie with a wrong item counts against the model (a model that scores everything equal is at chance, never at
100%), while ties among true matches do not matter. Query q is a hit at k when its rank is below k.
"""

import numpy as np
import torch


def ranks_from_scores(scores: torch.Tensor, is_true: torch.Tensor) -> torch.Tensor:
    """Per row of `scores` (queries x items), the rank of its best true item (`is_true`, same shape)."""
    best_true = scores.masked_fill(~is_true, float("-inf")).max(dim=1).values
    return ((scores >= best_true[:, None]) & ~is_true).sum(dim=1)


def label_ranks(scores, labels) -> np.ndarray:
    """Ranks of the true class in per-class scores (examples x classes)."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels)
    return ranks_from_scores(scores, labels[:, None] == torch.arange(scores.shape[1])).numpy()


def true_match_ranks(queries: torch.Tensor, items: torch.Tensor, query_groups, item_groups,
                     chunk_size: int = 1024) -> np.ndarray:
    """Rank every query against every item by dot product; item j is a true match of query q when
    `item_groups[j] == query_groups[q]` (classification: class ids; retrieval: image ids of captions).

    Chunked over queries so that e.g. 50,000 captions against 10,000 images never materialise at once.
    """
    query_groups, item_groups = torch.as_tensor(query_groups), torch.as_tensor(item_groups)
    ranks = [
        ranks_from_scores(queries[start:start + chunk_size] @ items.T,
                          query_groups[start:start + chunk_size, None] == item_groups[None, :])
        for start in range(0, len(queries), chunk_size)
    ]
    return torch.cat(ranks).numpy()
