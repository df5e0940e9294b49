"""Zero-shot classification: class names written into prompt templates become the classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modeling_psdclip.embedding import ImageTextEmbedder
from modeling_psdclip.ranking import label_ranks

from .data import EvalData
from .metrics import load_metric
from .templates import TEMPLATE_SETS, fill_template


def zero_shot_classifier(model: ImageTextEmbedder, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """One weight row per class: its prompts' normalised text embeddings averaged, then renormalised."""
    prompts = [fill_template(template, name) for name in class_names for template in templates]
    embeddings = model.encode_texts(prompts).view(len(class_names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def zero_shot_classification(model: ImageTextEmbedder, data: EvalData, templates: list[str] | None = None,
                             image_features: torch.Tensor | None = None) -> dict:
    """Top-1 and top-5 accuracy and mean per-class recall of the zero-shot classifier on `data`.

    Templates: `templates`, else the data's own (a CLIP_benchmark export ships them), else the 80 ImageNet
    prompts. `image_features` skips re-encoding images already encoded by the caller.
    """
    data.require("zero-shot classification", "labels", "class_names")
    templates = templates or data.templates or list(TEMPLATE_SETS["imagenet80"])
    classifier = zero_shot_classifier(model, data.class_names, templates)
    if image_features is None:
        image_features = model.encode_images(data.images)
    ranks = label_ranks(image_features @ classifier.T, data.labels)
    recall = load_metric("recall_at_k").compute(ranks=ranks, k=[1, 5])
    per_class = load_metric("mean_per_class_recall").compute(ranks=ranks, labels=data.labels)
    return {
        "top1_accuracy": recall["recall@1"],
        "top5_accuracy": recall["recall@5"],
        **per_class,
        "num_images": len(data),
        "num_classes": len(data.class_names),
        "num_templates": len(templates),
    }
