"""Ranks of true matches in a similarity ranking (the input of Recall@K), and retrieval's notion of one text item.

A query's rank is the number of wrong items that score at least as high as its best-scoring true match, so a
tie with a wrong item counts against the model (a model that scores everything equal is at chance, never at
100%), while ties among true matches do not matter. Query q is a hit at k when its rank is below k.

Texts that are identical after the processor's normalisation are one item: they have one embedding, so no model
can rank one copy above the other. Counting each copy as a separate item (CLIP_benchmark's definition, which
assumes unique captions) gives an image->text hit only for the image's own copy and lets the other copies, tied
with it, count against the model: a model perfect up to identical texts can score R@1 = 0.
"""

import numpy as np
import torch
import torch.nn.functional as F


def ranks_from_scores(scores: torch.Tensor, is_true: torch.Tensor) -> torch.Tensor:
    """Per row of `scores` (queries x items), the rank of its best true item (`is_true`, same shape)."""
    best_true = scores.masked_fill(~is_true, float("-inf")).max(dim=1).values
    return ((scores >= best_true[:, None]) & ~is_true).sum(dim=1)


def label_ranks(scores, labels) -> np.ndarray:
    """Ranks of the true class in per-class scores (examples x classes)."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels)
    return ranks_from_scores(scores, labels[:, None] == torch.arange(scores.shape[1])).numpy()


def true_match_ranks(queries: torch.Tensor, items: torch.Tensor, is_true, chunk_size: int = 1024) -> np.ndarray:
    """Rank every query against every item by dot product; `is_true` (queries x items, bool) marks the true matches.

    Chunked over queries so that e.g. 50,000 captions against 10,000 images never materialise at once.
    """
    is_true = torch.as_tensor(is_true, dtype=torch.bool)
    ranks = [ranks_from_scores(queries[start:start + chunk_size] @ items.T, is_true[start:start + chunk_size])
             for start in range(0, len(queries), chunk_size)]
    return torch.cat(ranks).numpy()


def text_items(keys) -> torch.Tensor:
    """Identical texts as one item: for one key per text (its normalised string, or its row of token ids in a
    tensor), every text's item number."""
    if isinstance(keys, torch.Tensor):
        return torch.unique(keys, dim=0, return_inverse=True)[1]
    return torch.as_tensor(np.unique(np.asarray(keys, dtype=str), return_inverse=True)[1].reshape(-1))


def distinct_items(keys) -> tuple[torch.Tensor, torch.Tensor]:
    """`text_items(keys)` and, before it, the index of each item's first text."""
    item_of = text_items(keys)
    return first_copies(item_of), item_of


def first_copies(item_of: torch.Tensor) -> torch.Tensor:
    """For the item number of every text, each item's first text."""
    positions = torch.arange(len(item_of), device=item_of.device)
    return torch.full((int(item_of.max()) + 1,), len(item_of), device=item_of.device).scatter_reduce(
        0, item_of, positions, "amin")


def image_carries(item_of: torch.Tensor, caption_image: torch.Tensor | None = None,
                  num_images: int | None = None) -> torch.Tensor:
    """Images x items, True where an image carries the item: caption j, of item `item_of[j]`, is a caption of
    image `caption_image[j]`. By default caption j is image j's (a batch of pairs)."""
    if caption_image is None:
        caption_image = torch.arange(len(item_of), device=item_of.device)
    # An image without captions carries nothing but is still a row: it stays a wrong match for every text.
    carries = torch.zeros(len(item_of) if num_images is None else num_images, int(item_of.max()) + 1,
                          dtype=torch.bool, device=item_of.device)
    carries[caption_image, item_of] = True
    return carries


def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor, carries) -> tuple[np.ndarray, np.ndarray]:
    """Image->text and text->image ranks, one text feature row per distinct text; `carries` (images x texts,
    bool) marks the texts each image carries. Image->text: a hit when a top-k text is any text of the image;
    text->image: every image carrying the text is a true match."""
    carries = torch.as_tensor(carries, dtype=torch.bool)
    return (true_match_ranks(image_features, text_features, carries),
            true_match_ranks(text_features, image_features, carries.T))


def distinct_text_contrastive_loss(logits_per_image: torch.Tensor, text_item: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over a batch of pairs whose identical captions are one item.

    `logits_per_image` (images x captions, caption j paired with image j); `text_item[j]` numbers caption j's
    distinct text. Image->text is a softmax over the distinct texts (one column per item) with the image's own
    text as target; text->image, for each distinct text, the probability mass on every image carrying it. With all
    texts distinct this is exactly `image_text_contrastive_loss`.
    """
    first = first_copies(text_item)
    image_to_text = F.cross_entropy(logits_per_image[:, first], text_item)
    carries = image_carries(text_item).t()
    log_probabilities = logits_per_image[:, first].t().log_softmax(dim=1)
    text_to_image = -torch.logsumexp(log_probabilities.masked_fill(~carries, float("-inf")), dim=1).mean()
    return (image_to_text + text_to_image) / 2
