"""Every task: 100% for a model aligned by construction, about chance for a random one."""

import numpy as np
import pytest
import torch
from tests.support import ConstantEncoder, KeywordEncoder, RandomEncoder

from eval import EvalData, EvalInputError, linear_probe, noisy_pair_detection, retrieval, robustness
from eval import paired_probabilities, zero_shot_classification, zero_shot_classifier
from eval.noisy_pairs import write_suspects_csv
from eval.robustness import baseline_prediction, fit_baseline
from eval.templates import IMAGENET_TEMPLATES

CLASSES = ["cat", "dog", "car", "tree", "boat", "lamp", "bird", "cup"]


def classification_data(per_class=25, name="toy", classes=CLASSES):
    labels = np.repeat(np.arange(len(classes)), per_class)
    return EvalData(name=name, images=[classes[label] for label in labels], labels=labels, class_names=classes)


def test_the_clip_paper_templates_are_all_there():
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 80
    assert all(template.count("{}") == 1 for template in IMAGENET_TEMPLATES)


def test_zero_shot_classifier_rows_are_unit_norm_class_means():
    classifier = zero_shot_classifier(KeywordEncoder(CLASSES), CLASSES[:3], ["a photo of a {}.", "a {} drawing"])
    assert torch.allclose(classifier, torch.eye(len(CLASSES))[:3])


def test_zero_shot_aligned_is_perfect_random_and_constant_are_chance():
    data = classification_data()
    aligned = zero_shot_classification(KeywordEncoder(CLASSES), data)
    assert aligned["top1_accuracy"] == aligned["top5_accuracy"] == aligned["mean_per_class_recall"] == 1.0
    assert aligned["num_templates"] == 80
    random = zero_shot_classification(RandomEncoder(), classification_data(per_class=100), ["a photo of a {}."])
    assert random["top1_accuracy"] == pytest.approx(1 / 8, abs=0.06)
    assert random["top5_accuracy"] == pytest.approx(5 / 8, abs=0.08)
    # All scores tie: ties count against the model, so not even one class is "found".
    assert zero_shot_classification(ConstantEncoder(), data, ["{}"])["top1_accuracy"] == 0.0


def test_zero_shot_needs_labels():
    with pytest.raises(EvalInputError, match="labels"):
        zero_shot_classification(KeywordEncoder(CLASSES), EvalData(name="x", images=["cat"]))


def test_retrieval_with_several_captions_per_image():
    items = [f"item{i}" for i in range(30)]
    data = EvalData(name="pairs", images=items, captions=[[f"a photo of {item}", f"{item} again"] for item in items])
    aligned = retrieval(KeywordEncoder(items), data)
    assert all(aligned[f"{direction}_recall@{k}"] == 1.0 for direction in ("image_to_text", "text_to_image")
               for k in (1, 5, 10))
    assert aligned["num_captions"] == 60
    random = retrieval(RandomEncoder(), data)
    assert random["text_to_image_recall@10"] == pytest.approx(10 / 30, abs=0.2)
    assert random["image_to_text_recall@1"] < 0.3


def test_retrieval_counts_identical_texts_as_one_item():
    # Six images, three texts, each on two images: a model perfect up to identical texts (it cannot separate two
    # images that no caption separates) scores R@1 = 1; counting every copy as its own item scores it 0.
    keywords = ["circle", "square", "star"]
    images = [keyword for keyword in keywords for _ in range(2)]
    data = EvalData(name="repeated", images=images,
                    captions=[[f"A  {keyword.upper()}" if index % 2 else f"a {keyword}"]
                              for index, keyword in enumerate(images)])  # the same text after normalisation
    merged = retrieval(KeywordEncoder(keywords), data, k=(1,))
    assert merged["image_to_text_recall@1"] == merged["text_to_image_recall@1"] == 1.0
    assert merged["num_distinct_texts"] == 3 and merged["num_captions"] == 6
    per_copy = retrieval(KeywordEncoder(keywords), data, k=(1,), protocol="clip_benchmark")
    assert per_copy["image_to_text_recall@1"] == per_copy["text_to_image_recall@1"] == 0.0
    # Equal scores everywhere stay at (or, with ties counted against the model, below) chance.
    constant = retrieval(ConstantEncoder(), data, k=(1,))
    assert constant["image_to_text_recall@1"] <= 1 / 3 and constant["text_to_image_recall@1"] <= 2 / 6
    with pytest.raises(EvalInputError, match="protocol"):
        retrieval(KeywordEncoder(keywords), data, protocol="unique")


def test_linear_probe_aligned_is_perfect_random_is_chance():
    train, test = classification_data(per_class=20), classification_data(per_class=10)
    aligned = linear_probe(KeywordEncoder(CLASSES), train, test, c_values=[0.1, 10.0])
    assert aligned["top1_accuracy"] == 1.0
    assert set(aligned["val_accuracy_by_c"]) == {0.1, 10.0}
    random = linear_probe(RandomEncoder(), train, classification_data(per_class=30), c_values=[1.0])
    assert random["top1_accuracy"] < 0.3


def test_linear_probe_rejects_mismatched_classes():
    with pytest.raises(EvalInputError, match="same class names"):
        linear_probe(KeywordEncoder(CLASSES), classification_data(), classification_data(classes=CLASSES[::-1]))


def test_paired_probability_is_the_mean_of_both_softmax_directions():
    images = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = 2.0 * images @ texts.T
    expected = 0.5 * (logits.softmax(1).diagonal() + logits.softmax(0).diagonal())
    assert np.allclose(paired_probabilities(images, texts, 2.0, pool_size=None), expected.numpy())
    # Pools of one pair make every pair certain.
    assert np.allclose(paired_probabilities(images, texts, 2.0, pool_size=1), 1.0)
    for size in (0, -1, 2.5):  # -1 was once one pool of all pairs
        with pytest.raises(ValueError, match=rf"^pool_size must be None \(one pool of all pairs\) or a positive "
                                             rf"integer, got {size}$"):
            paired_probabilities(images, texts, 2.0, pool_size=size)


def test_noisy_pairs_aligned_finds_every_mismatch(tmp_path):
    items = [f"item{i}" for i in range(40)]
    noisy = set(range(0, 40, 5))  # 20% of captions name another item
    data = EvalData(name="noisy", images=items,
                    captions=[[f"a photo of {items[(i + 1) % 40] if i in noisy else items[i]}"] for i in range(40)],
                    noise=["swapped" if i in noisy else "clean" for i in range(40)])
    results, probabilities = noisy_pair_detection(KeywordEncoder(items), data, pool_size=None)
    assert results["auroc"] == results["precision_at_noise_rate"] == 1.0
    assert results["noise_rate"] == pytest.approx(0.2)
    csv_lines = write_suspects_csv(tmp_path / "suspects.csv", data, probabilities).read_text().splitlines()
    assert csv_lines[0] == "rank,index,paired_probability,caption,noise"
    assert {int(line.split(",")[1]) for line in csv_lines[1:9]} == noisy
    random, _ = noisy_pair_detection(RandomEncoder(), data, pool_size=8)
    assert 0.2 < random["auroc"] < 0.8


def test_effective_robustness_against_a_logit_linear_baseline():
    # Three models on the line logit(shifted) = logit(in) - 1: the fit recovers it; two models fit nothing (any
    # line through two points leaves no residual to measure).
    assert fit_baseline([0.5], [0.4]) is None
    assert fit_baseline([0.5, 0.7], [0.4, 0.5]) is None
    assert fit_baseline([0.5, 0.5, 0.5], [0.4, 0.5, 0.3]) is None
    in_accuracy = np.array([0.3, 0.5, 0.8])
    on_line = baseline_prediction((1.0, -1.0), in_accuracy)
    slope, intercept = fit_baseline(in_accuracy, on_line)
    assert (slope, intercept) == (pytest.approx(1.0), pytest.approx(-1.0))


def test_robustness_reports_accuracy_drop_and_effective_robustness():
    in_distribution = classification_data(per_class=10, name="in")
    shifted = classification_data(per_class=10, name="shifted")
    results = robustness([KeywordEncoder(CLASSES), RandomEncoder()], in_distribution, [shifted], ["a {}"])
    aligned, random = results["models"]
    assert aligned["in_distribution_accuracy"] == aligned["shifted"]["shifted"]["accuracy"] == 1.0
    assert aligned["shifted"]["shifted"]["drop"] == 0.0
    # Two models are too few for a baseline fit; a third gives one, and a value for every model.
    assert aligned["shifted"]["average"]["effective_robustness"] is None
    assert results["baselines"]["shifted"] is None
    three = robustness([KeywordEncoder(CLASSES), RandomEncoder(), RandomEncoder(seed=1)], in_distribution, [shifted],
                       ["a {}"])
    assert three["baselines"]["shifted"] is not None
    assert all(isinstance(entry["shifted"]["average"]["effective_robustness"], float) for entry in three["models"])
    with pytest.raises(EvalInputError, match="other class names"):
        robustness([RandomEncoder()], in_distribution, [classification_data(classes=CLASSES[::-1])])
