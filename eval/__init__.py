"""Evaluation of PSD-CLIP and stock CLIP models: zero-shot classification, linear probe, retrieval,
robustness to distribution shift and noisy-pair detection, one module per task behind one model interface."""

from .data import EvalData, load_eval_data
from .errors import EvalInputError
from .linear_probe import linear_probe
from .model import EmbeddingModel, ImageTextEncoder
from .noisy_pairs import noisy_pair_detection, paired_probabilities, write_suspects_csv
from .retrieval import retrieval
from .robustness import robustness
from .zeroshot import zero_shot_classification, zero_shot_classifier

__all__ = [
    "EmbeddingModel", "EvalData", "EvalInputError", "ImageTextEncoder", "linear_probe", "load_eval_data",
    "noisy_pair_detection", "paired_probabilities", "retrieval", "robustness", "write_suspects_csv",
    "zero_shot_classification", "zero_shot_classifier",
]
