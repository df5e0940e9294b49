"""Image-text retrieval with several captions per image."""

from __future__ import annotations

import numpy as np

from .data import EvalData
from .errors import EvalInputError
from .metrics import load_metric
from .model import ImageTextEncoder
from modeling_psdclip.ranking import true_match_ranks


def retrieval(model: ImageTextEncoder, data: EvalData, k: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Image->text and text->image Recall@k. Image->text counts a hit when any of the image's captions is in
    the top k; text->image when the caption's own image is. Ties count against the model (see `ranking`)."""
    data.require("retrieval", "captions")
    texts = [caption for captions in data.captions for caption in captions]
    caption_image = np.repeat(np.arange(len(data)), [len(captions) for captions in data.captions])
    if not texts:
        raise EvalInputError(f"retrieval needs captions; every image of data {data.name!r} has none")
    image_features, text_features = model.encode_images(data.images), model.encode_texts(texts)
    recall = load_metric("recall_at_k")
    image_to_text = recall.compute(ranks=true_match_ranks(image_features, text_features, np.arange(len(data)),
                                                          caption_image), k=list(k))
    text_to_image = recall.compute(ranks=true_match_ranks(text_features, image_features, caption_image,
                                                          np.arange(len(data))), k=list(k))
    return {
        **{f"image_to_text_{name}": value for name, value in image_to_text.items()},
        **{f"text_to_image_{name}": value for name, value in text_to_image.items()},
        "num_images": len(data),
        "num_captions": len(texts),
    }
