"""Linear probe: logistic regression on frozen, L2-normalised image features, as in the CLIP paper."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from modeling_psdclip.embedding import ImageTextEmbedder
from modeling_psdclip.ranking import label_ranks

from .data import EvalData
from .errors import EvalInputError
from .metrics import load_metric

# The CLIP paper sweeps the inverse regularisation over 1e-6..1e6 on a log scale; one value per decade keeps
# 13 fits affordable on a CPU. Pass `c_values` for a finer sweep.
DEFAULT_C_VALUES = tuple(np.logspace(-6, 6, 13))


def linear_probe(model: ImageTextEmbedder, train: EvalData, test: EvalData, val: EvalData | None = None,
                 c_values=DEFAULT_C_VALUES, val_fraction: float = 0.2, seed: int = 0, max_iter: int = 1000) -> dict:
    """Choose C by validation top-1 accuracy, refit on train+val with it, and score on test.

    Without `val`, a stratified `val_fraction` of `train` is held out for the sweep.
    """
    for data in (train, test, *([val] if val else [])):
        data.require("linear probe", "labels", "class_names")
    if test.class_names != train.class_names or (val and val.class_names != train.class_names):
        raise EvalInputError("linear probe needs the same class names in its train, val and test data")
    train_x, train_y = model.encode_images(train.images).numpy(), train.labels
    if val is None:
        train_x, val_x, train_y, val_y = _hold_out(train_x, train_y, val_fraction, seed)
    else:
        val_x, val_y = model.encode_images(val.images).numpy(), val.labels
    test_x = model.encode_images(test.images).numpy()

    def fit(x, y, c):
        return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=seed).fit(x, y)

    sweep = {float(c): float(fit(train_x, train_y, c).score(val_x, val_y)) for c in c_values}
    best_c = max(sweep, key=sweep.get)
    classifier = fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), best_c)
    # Scores for every class name, also those the training data lacks, so ranks match zero-shot's.
    scores = np.full((len(test_x), len(train.class_names)), -np.inf)
    scores[:, classifier.classes_] = classifier.decision_function(test_x).reshape(len(test_x), -1)
    if len(classifier.classes_) == 2:  # scikit-learn returns one column, the positive class's margin
        scores[:, classifier.classes_[0]] = -scores[:, classifier.classes_[1]]
    ranks = label_ranks(scores, test.labels)
    recall = load_metric("recall_at_k").compute(ranks=ranks, k=[1, 5])
    return {
        "top1_accuracy": recall["recall@1"],
        "top5_accuracy": recall["recall@5"],
        **load_metric("mean_per_class_recall").compute(ranks=ranks, labels=test.labels),
        "best_c": best_c,
        "val_accuracy_by_c": sweep,
        "num_train": len(train_x) + len(val_x),
        "num_test": len(test_x),
    }


def _hold_out(x, y, fraction, seed):
    try:
        return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y)
    except ValueError as error:  # a class with one example cannot be stratified
        raise EvalInputError(f"cannot hold out a validation split: {error}; pass separate validation data") from error
