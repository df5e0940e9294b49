"""The built-in synthetic scenes: determinism, sizes, noise, splits, labels and the on-disk cache."""

import collections

import datasets
import numpy as np
import pytest

from modeling_psdclip.data import COLOURS, COUNTS, SHAPES, DataError, build_synthetic_dataset, synthetic
from modeling_psdclip.data.scenes import COLOUR_TYPES, GENERIC_CAPTIONS, SHAPE_TYPES


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def image_bytes(dataset):
    return [image["bytes"] for image in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = build_synthetic_dataset("train", 20, seed=3, p_generic=0.3, cache_dir=tmp_path / "a")
    again = build_synthetic_dataset("train", 20, seed=3, p_generic=0.3, cache_dir=tmp_path / "b")
    other = build_synthetic_dataset("train", 20, seed=4, p_generic=0.3, cache_dir=tmp_path / "c")
    assert image_bytes(first) == image_bytes(again)
    assert first["caption"] == again["caption"] and first["noise"] == again["noise"]
    assert not set(image_bytes(first)) & set(image_bytes(other))


def test_size_columns_and_class_names(cache):
    dataset = build_synthetic_dataset("val", 12, image_size=32, cache_dir=cache)
    assert len(dataset) == 12
    assert {image.size for image in dataset["image"]} == {(32, 32)} and dataset[0]["image"].mode == "RGB"
    assert dataset.features["label_shape"].names == list(SHAPES)
    assert dataset.features["label_colour"].names == list(COLOURS)
    assert dataset.features["label_count"].names == list(COUNTS)
    assert all(len(captions) == synthetic.CAPTIONS_PER_EVAL_IMAGE for captions in dataset["captions"])
    assert set(dataset["noise"]) == {"clean"}


def test_noise_rates_roughly_as_requested(cache):
    dataset = build_synthetic_dataset("train", 2000, p_mismatch=0.2, p_partial=0.1, p_generic=0.1, image_size=16,
                                      cache_dir=cache)
    rates = {kind: count / len(dataset) for kind, count in collections.Counter(dataset["noise"]).items()}
    for kind, expected in {"mismatch": 0.2, "partial": 0.1, "generic": 0.1, "clean": 0.6}.items():
        assert abs(rates[kind] - expected) < 0.04, (kind, rates)
    generic = [caption for caption, noise in zip(dataset["caption"], dataset["noise"]) if noise == "generic"]
    assert set(generic) <= set(GENERIC_CAPTIONS)
    assert set(dataset["label_shape"]) == set(range(len(SHAPES)))


def test_partial_captions_name_a_wrong_attribute(cache):
    dataset = build_synthetic_dataset("train", 200, p_partial=1.0, image_size=16, cache_dir=cache)
    single_objects = dataset.filter(lambda row: row["label_count"] == 0)
    assert len(single_objects) > 20
    for row in single_objects:
        words = set(row["caption"].replace(",", " ").split())
        colour = COLOUR_TYPES[row["label_colour"]]
        names_true_colour = bool(words & ({colour.name} | {shade.name for shade in colour.shades}))
        names_true_shape = any(name in row["caption"] for name, _ in SHAPE_TYPES[row["label_shape"]].synonyms)
        assert not (names_true_colour and names_true_shape), row["caption"]


def test_clean_captions_use_the_zero_shot_class_names(cache):
    """Zero-shot prompts are built from SHAPES and COUNTS, so the captions say those very words."""
    dataset = build_synthetic_dataset("val", 200, image_size=16, cache_dir=cache)
    prefixes = {count: f"{word} {'shape' if count == 0 else 'shapes'}:" for count, word in enumerate(COUNTS)}
    with_count = 0
    for row in dataset:
        for caption in row["captions"]:
            assert SHAPES[row["label_shape"]] in caption, caption  # the main object's shape, by its class name
            assert not any(prefix in caption for count, prefix in prefixes.items() if count != row["label_count"])
            with_count += prefixes[row["label_count"]] in caption
    assert 0.3 < with_count / (len(dataset) * synthetic.CAPTIONS_PER_EVAL_IMAGE) < 0.7
    assert set(dataset["label_count"]) == set(range(len(COUNTS)))


def test_splits_with_one_seed_share_no_image(cache):
    train = set(image_bytes(build_synthetic_dataset("train", 100, image_size=16, cache_dir=cache)))
    val = set(image_bytes(build_synthetic_dataset("val", 100, image_size=16, cache_dir=cache)))
    assert not train & val


def saturated_pixels(dataset) -> float:
    """Pixels of a vivid colour: where objects are, since backgrounds are neutral."""
    counts = []
    for image in dataset["image"]:
        pixels = np.asarray(image, dtype=np.int16)
        counts.append(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())
    return float(np.mean(counts))


def test_sketch_draws_outlines_only(cache):
    sketch = build_synthetic_dataset("sketch", 40, cache_dir=cache)
    photo = build_synthetic_dataset("test", 40, cache_dir=cache)
    assert saturated_pixels(sketch) < 0.6 * saturated_pixels(photo)
    assert sketch.features == photo.features


def test_unseen_shades_are_never_drawn_in_train(cache):
    def shades_present(dataset):
        found = set()
        for image, colour in zip(dataset["image"], dataset["label_colour"]):
            pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
            found |= {index for index, shade in enumerate(COLOUR_TYPES[colour].shades) if shade.rgb in pixels}
        return found

    assert shades_present(build_synthetic_dataset("unseen_shade", 30, cache_dir=cache)) == {3}
    assert 3 not in shades_present(build_synthetic_dataset("train", 30, cache_dir=cache))


def test_unseen_textures_change_the_backgrounds(cache):
    def corner_colours(dataset):
        return {tuple(np.asarray(image)[0, 0]) for image in dataset["image"]}

    assert not corner_colours(build_synthetic_dataset("unseen_texture", 30, cache_dir=cache)) & corner_colours(
        build_synthetic_dataset("train", 30, cache_dir=cache))


def test_cache_is_reused(tmp_path, monkeypatch):
    first = build_synthetic_dataset("test", 10, cache_dir=tmp_path)
    monkeypatch.setattr(synthetic, "_build_to", lambda *args: pytest.fail("rebuilt a cached split"))
    again = build_synthetic_dataset("test", 10, cache_dir=tmp_path)
    assert again["caption"] == first["caption"]
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


def test_worlds_restyle_every_split_and_hold_shapes_and_their_words_apart(cache):
    """A fine-tuning benchmark's two worlds: the starting model's never shows (or names) the shapes of the other."""
    standard = build_synthetic_dataset("train", 300, p_mismatch=0.3, p_partial=0.3, image_size=16, cache_dir=cache)
    again = build_synthetic_dataset("train", 300, p_mismatch=0.3, p_partial=0.3, image_size=16, world="standard",
                                    cache_dir=cache / "again")
    assert again["caption"] == standard["caption"]  # the standard world is the scenes as they always were
    shape_words = {name: index for index, name in enumerate(SHAPES)}
    for world, shapes in (("familiar_shapes", {0, 1, 2, 3, 4}), ("novel_shapes", {5, 6, 7})):
        for split in ("train", "val", "test"):
            noise = {"p_mismatch": 0.3, "p_partial": 0.3} if split == "train" else {}
            dataset = build_synthetic_dataset(split, 300, image_size=16, world=world, cache_dir=cache, **noise)
            assert set(dataset["label_shape"]) == shapes, (world, split)
            named = {shape_words[word.rstrip("s").replace("crosse", "cross")]
                     for captions in dataset["captions"] for caption in captions for word in caption.split()
                     if word.rstrip("s").replace("crosse", "cross") in shape_words}
            assert named == shapes, (world, split)  # mismatched and partly wrong captions included
    sketch = build_synthetic_dataset("train", 40, world="sketch", cache_dir=cache)
    assert saturated_pixels(sketch) < 0.6 * saturated_pixels(build_synthetic_dataset("train", 40, cache_dir=cache))
    starts = {caption.split(" of ")[0] for caption in sketch["caption"] if " of " in caption}
    assert starts and starts <= {"a sketch", "an outline drawing", "a line drawing"}  # sketch captions only


@pytest.mark.parametrize("arguments", [
    {"split": "holdout"},
    {"split": "train", "world": "underwater"},
    {"split": "train", "p_mismatch": 0.7, "p_generic": 0.7},
    {"split": "val", "p_generic": 0.1},
    {"split": "train", "num_samples": 0},
])
def test_bad_parameters_are_one_line_errors(arguments, tmp_path):
    with pytest.raises(DataError) as error:
        build_synthetic_dataset(cache_dir=tmp_path, **arguments)
    assert "\n" not in str(error.value)
