"""Image-text retrieval with several captions per image, identical caption texts counted as one item."""

from __future__ import annotations

import torch

from modeling_psdclip.embedding import ImageTextEmbedder
from modeling_psdclip.ranking import distinct_items, image_carries, retrieval_ranks
from modeling_psdclip.tokenization import clip_normalizer

from .data import EvalData
from .errors import EvalInputError
from .metrics import load_metric

# "distinct_texts": identical caption texts (after CLIP's text normalisation) are one item. "clip_benchmark": every
# caption is its own item and an image->text hit needs the image's own copy, as CLIP_benchmark counts (it assumes
# unique captions; with repeated texts it penalises a model for the copies it cannot tell apart).
PROTOCOLS = ("distinct_texts", "clip_benchmark")


def retrieval(model: ImageTextEmbedder, data: EvalData, k: tuple[int, ...] = (1, 5, 10),
              protocol: str = "distinct_texts") -> dict:
    """Image->text and text->image Recall@k. Image->text counts a hit when any of the image's caption texts is in
    the top k; text->image (one query per distinct text) when any image carrying that text is. Ties count against
    the model (see `modeling_psdclip.ranking`)."""
    if protocol not in PROTOCOLS:
        raise EvalInputError(f"unknown retrieval protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    data.require("retrieval", "captions")
    texts = [caption for captions in data.captions for caption in captions]
    if not texts:
        raise EvalInputError(f"retrieval needs captions; every image of data {data.name!r} has none")
    caption_image = torch.repeat_interleave(torch.tensor([len(captions) for captions in data.captions]))
    if protocol == "distinct_texts":
        normalizer = clip_normalizer()  # what the CLIP processor does to a text before tokenising it
        first, item_of = distinct_items([normalizer.normalize_str(text) for text in texts])
    else:
        first = item_of = torch.arange(len(texts))
    carries = image_carries(item_of, caption_image, len(data))
    image_features = model.encode_images(data.images)
    text_features = model.encode_texts([texts[index] for index in first.tolist()])  # one encoding per distinct text
    image_ranks, text_ranks = retrieval_ranks(image_features, text_features, carries)
    recall = load_metric("recall_at_k")
    image_to_text = recall.compute(ranks=image_ranks, k=list(k))
    text_to_image = recall.compute(ranks=text_ranks, k=list(k))
    return {
        **{f"image_to_text_{name}": value for name, value in image_to_text.items()},
        **{f"text_to_image_{name}": value for name, value in text_to_image.items()},
        "num_images": len(data),
        "num_captions": len(texts),
        "num_distinct_texts": len(first),
        "protocol": protocol,
    }
