"""Noisy-pair detection: score every image-caption pair by how strongly the model pairs them, so that the
least-paired ones can be reviewed or dropped.

Paired probability of pair i, evaluated inside a pool P of pairs (i in P), with logits
Z_jk = s * <u_j, v_k> (u image and v text embeddings, L2-normalised; s the model's logit multiplier exp(logit_scale)):

    p_i = 0.5 * ( softmax_{k in P}(Z_ik)[i]  +  softmax_{j in P}(Z_ji)[i] )

the image's probability of its own caption among the pool's captions, averaged with the caption's
probability of its own image among the pool's images. It is the "mean paired probability" a PSD-CLIP forward
reports, per pair instead of averaged, with a training batch as the pool. Pools are a seeded random partition
of the data into near-equal parts of about `pool_size` pairs (`pool_size=None`: the whole data is one pool);
bigger pools make the score stricter. Suspicion is 1 - p_i.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from modeling_psdclip.embedding import ImageTextEmbedder

from .data import CLEAN, EvalData
from .metrics import load_metric

DEFAULT_POOL_SIZE = 256


def paired_probabilities(image_features: torch.Tensor, text_features: torch.Tensor, logit_multiplier: float,
                         pool_size: int | None = DEFAULT_POOL_SIZE, seed: int = 0) -> np.ndarray:
    """p_i of every pair (row i of both feature matrices), as defined in the module docstring. ValueError for a
    pool_size that is not None or a positive integer."""
    if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1):
        raise ValueError(f"pool_size must be None (one pool of all pairs) or a positive integer, got {pool_size!r}")
    count = len(image_features)
    pool_count = 1 if pool_size is None else max(1, math.ceil(count / pool_size))
    order = np.random.default_rng(seed).permutation(count)
    probabilities = np.empty(count)
    for pool in np.array_split(order, pool_count):
        logits = logit_multiplier * image_features[pool] @ text_features[pool].T
        image_to_text = logits.softmax(dim=1).diagonal()
        text_to_image = logits.softmax(dim=0).diagonal()
        probabilities[pool] = (0.5 * (image_to_text + text_to_image)).numpy()
    return probabilities


def noisy_pair_detection(model: ImageTextEmbedder, data: EvalData, pool_size: int | None = DEFAULT_POOL_SIZE,
                         seed: int = 0) -> tuple[dict, np.ndarray]:
    """Paired probability of every (image, first caption) pair, and how well 1 - p separates the pairs whose
    `noise` label is not "clean" (AUROC, average precision, precision at the true noise rate) when the data
    has noise labels. Returns (results, paired probabilities)."""
    data.require("noisy-pair detection", "captions")
    captions = [captions[0] if captions else "" for captions in data.captions]
    probabilities = paired_probabilities(model.encode_images(data.images), model.encode_texts(captions),
                                         model.logit_multiplier, pool_size, seed)
    results = {"mean_paired_probability": float(probabilities.mean()), "num_pairs": len(data),
               "pool_size": pool_size or len(data)}
    if data.noise is not None:
        is_noisy = [int(label != CLEAN) for label in data.noise]
        results.update(load_metric("noise_detection").compute(scores=1 - probabilities, is_noisy=is_noisy))
    return results, probabilities


def write_suspects_csv(path: str | Path, data: EvalData, probabilities: np.ndarray) -> Path:
    """All pairs, most suspect first: rank, row index in the data, paired probability, caption (and the noise
    label when the data has one). Drop the top rows' indices to clean the data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["rank", "index", "paired_probability", "caption"] + (["noise"] if data.noise is not None else [])
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for rank, index in enumerate(np.argsort(probabilities, kind="stable")):
            row = [rank, int(index), f"{probabilities[index]:.6f}", data.captions[index][0] if data.captions[index] else ""]
            writer.writerow(row + ([data.noise[index]] if data.noise is not None else []))
    return path
