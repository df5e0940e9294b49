"""Evaluation of PSD-CLIP and stock CLIP models: zero-shot classification, linear probe, retrieval,
robustness to distribution shift and noisy-pair detection, one module per task behind one model interface.

Names load on first use, so that `python -m eval` (which imports this package first) parses its options before
importing torch, datasets and scikit-learn.
"""

from modeling_psdclip.utils import lazy_names

_EXPORTS = {
    "EvalData": "data", "load_eval_data": "data", "EvalInputError": "errors", "linear_probe": "linear_probe",
    "EmbeddingModel": "model", "noisy_pair_detection": "noisy_pairs",
    "paired_probabilities": "noisy_pairs", "write_suspects_csv": "noisy_pairs", "retrieval": "retrieval",
    "robustness": "robustness", "zero_shot_classification": "zeroshot", "zero_shot_classifier": "zeroshot",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
