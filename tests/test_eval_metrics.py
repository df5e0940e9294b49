"""The metric modules and the ranking rule on hand-computed cases."""

import numpy as np
import pytest
import torch

from eval.metrics import METRICS_DIR, load_metric
from modeling_psdclip.ranking import (
    distinct_items, distinct_text_contrastive_loss, first_copies, image_carries, label_ranks, retrieval_ranks,
    true_match_ranks,
)
from transformers.models.clip.modeling_clip import image_text_contrastive_loss


def test_metrics_load_by_local_path_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("recall_at_k", "mean_per_class_recall", "noise_detection"):
        assert (METRICS_DIR / name / f"{name}.py").is_file()
        assert load_metric(name).name == name


def test_recall_at_k_counts_ranks_below_k():
    result = load_metric("recall_at_k").compute(ranks=[0, 3, 12, 4], k=[1, 5, 10])
    assert result == {"recall@1": 0.25, "recall@5": 0.75, "recall@10": 0.75}


def test_label_ranks_count_ties_against_the_model():
    scores = torch.tensor([[0.9, 0.1, 0.5],   # true 0, clear win: rank 0
                           [0.5, 0.5, 0.1],   # true 1, tied with a wrong class: rank 1
                           [0.2, 0.2, 0.2]])  # true 2, everything tied: rank 2
    assert label_ranks(scores, [0, 1, 2]).tolist() == [0, 1, 2]


def test_several_true_matches_hit_when_any_is_in_the_top_k():
    # Two images; captions 0, 1 belong to image 0 and captions 2, 3 to image 1.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    caption_image = torch.tensor([0, 0, 1, 1])
    carries = caption_image[None, :] == torch.arange(2)[:, None]  # images x captions
    # image 0 scores captions (0, 1, .6, 1): its best true caption 1 ties with wrong caption 3 -> rank 1.
    # image 1 scores captions (1, 0, .8, 0): its best true caption 2 is beaten by wrong caption 0 -> rank 1.
    assert true_match_ranks(images, captions, carries).tolist() == [1, 1]
    # Ties among true matches do not count: both true captions of image 0 score the same.
    assert true_match_ranks(images[:1], captions[[1, 3, 0]], [[True, True, False]]).tolist() == [0]
    # Chunking does not change the result.
    assert true_match_ranks(captions, images, carries.T, chunk_size=1).tolist() == [1, 0, 0, 1]


def test_identical_texts_are_one_item():
    first, item_of = distinct_items(["a cat", "a dog", "a cat", "a bird", "a dog"])
    assert item_of[[0, 2]].tolist() == [item_of[0]] * 2 and item_of[1] == item_of[4] and len(first) == 3
    assert all(item_of[first[item]] == item for item in range(3)) and sorted(first.tolist()) == [0, 1, 3]
    assert first_copies(torch.tensor([2, 0, 2, 1, 0])).tolist() == [1, 3, 0]
    # Rows of token ids group as the strings they encode (ids chosen to sort as the strings do: items number in order).
    token_ids = torch.tensor([[5, 7, 0], [5, 8, 0], [5, 7, 0], [5, 6, 9], [5, 8, 0]])
    assert [tensor.tolist() for tensor in distinct_items(token_ids)] == [first.tolist(), item_of.tolist()]


def test_image_carries_marks_the_items_of_each_images_captions():
    # Image 0 has captions of items 0 and 1, image 1 none, image 2 a caption of item 0 again.
    carries = image_carries(torch.tensor([0, 1, 0]), caption_image=torch.tensor([0, 0, 2]), num_images=3)
    assert carries.tolist() == [[True, True], [False, False], [True, False]]
    # A batch of pairs: caption j is image j's.
    assert image_carries(torch.tensor([1, 0, 1])).tolist() == [[False, True], [True, False], [False, True]]


def test_retrieval_ranks_let_any_image_carrying_a_text_match_it():
    # Images 0 and 1 both carry text 0; image 2 carries text 1. Text 0 scores image 1 above image 0: still a hit.
    images = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    texts = torch.tensor([[0.8, 0.2], [0.0, 1.0]])
    carries = torch.tensor([[True, False], [True, False], [False, True]])
    image_ranks, text_ranks = retrieval_ranks(images, texts, carries)
    assert image_ranks.tolist() == [0, 0, 0] and text_ranks.tolist() == [0, 0]


def test_distinct_text_loss_is_clips_when_texts_are_distinct():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.allclose(distinct_text_contrastive_loss(logits, torch.tensor([3, 0, 5, 1, 4, 2])),
                          image_text_contrastive_loss(logits))


def test_distinct_text_loss_matches_its_definition_with_repeated_texts():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(1)) * 2
    text_item = torch.tensor([0, 1, 0, 2, 1])
    first = [0, 1, 3]  # one column per distinct text
    image_to_text = -sum(torch.log_softmax(logits[i, first], 0)[text_item[i]] for i in range(5)) / 5
    text_to_image = -sum(torch.log(torch.softmax(logits[:, first[t]], 0)[text_item == t].sum()) for t in range(3)) / 3
    expected = (image_to_text + text_to_image) / 2
    assert torch.allclose(distinct_text_contrastive_loss(logits, text_item), expected)
    # A model perfect up to identical texts (each image scores its text's copies high) has a loss near 0, where
    # CLIP's per-copy loss stays above ln 2 for every repeated text.
    perfect = 50.0 * (text_item[:, None] == text_item[None, :]).float()
    assert distinct_text_contrastive_loss(perfect, text_item) < 1e-3 < image_text_contrastive_loss(perfect) - 0.3


def test_mean_per_class_recall_averages_over_present_classes():
    # class 0: 1 of 2 correct; class 1: 2 of 2; class 3: 0 of 1 -> (0.5 + 1 + 0) / 3
    result = load_metric("mean_per_class_recall").compute(ranks=[0, 2, 0, 0, 1], labels=[0, 0, 1, 1, 3])
    assert result["mean_per_class_recall"] == pytest.approx(0.5)


def test_noise_detection_perfect_and_tied_rankings():
    metric = load_metric("noise_detection")
    perfect = metric.compute(scores=[0.9, 0.1, 0.8, 0.2], is_noisy=[1, 0, 1, 0])
    assert perfect == {"noise_rate": 0.5, "auroc": 1.0, "average_precision": 1.0, "precision_at_noise_rate": 1.0}
    # Two noisy pairs; the top score is noisy, then three tie for the one slot left, one of them noisy.
    tied = metric.compute(scores=[0.9, 0.5, 0.5, 0.5, 0.1], is_noisy=[1, 1, 0, 0, 0])
    assert tied["precision_at_noise_rate"] == pytest.approx((1 + 1 / 3) / 2)
    assert metric.compute(scores=[0.3, 0.2], is_noisy=[0, 0])["auroc"] is None


def test_noise_detection_of_a_random_ranking_is_near_chance():
    rng = np.random.default_rng(0)
    is_noisy = rng.random(4000) < 0.2
    result = load_metric("noise_detection").compute(scores=rng.random(4000), is_noisy=is_noisy.astype(int))
    assert result["auroc"] == pytest.approx(0.5, abs=0.04)
    assert result["precision_at_noise_rate"] == pytest.approx(is_noisy.mean(), abs=0.04)
