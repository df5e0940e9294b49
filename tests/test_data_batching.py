"""Batching: the collator's output, seeded augmentation, the epoch sampler and resuming, skip counts across workers."""

import collections
import io

import pytest
import torch
from accelerate import skip_first_batches
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

from modeling_psdclip.data import (
    SKIP_REASONS, EpochSampler, ImageTextCollator, SampleKey, load_image_text_dataset, with_standardized_pixels,
)

CONTEXT_LENGTH = 12
IMAGE_SIZE = 24


@pytest.fixture(scope="module")
def processor():
    """A CLIPProcessor with a word-level tokenizer trained on the spot: nothing is downloaded."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(["a red circle on the left", "two blue squares and a green star"],
                                  trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"]))
    return CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                          bos_token="<bos>", eos_token="<eos>", model_max_length=CONTEXT_LENGTH),
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthetic")
    return load_image_text_dataset("synthetic:train", num_samples=24, image_size=32, p_generic=0.2, cache_dir=cache)


def test_batch_format(processor, synthetic):
    records = [synthetic[SampleKey(0, i)] for i in range(3)]
    records[0] = {**records[0], "caption": "a red circle " * 3000, "skipped": {"corrupt_image": 2}}
    batch = ImageTextCollator(processor)(records)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "pair_index", "skipped"}
    assert batch["pair_index"].tolist() == [0, 1, 2]
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, CONTEXT_LENGTH)
    expected = torch.zeros(3, len(SKIP_REASONS), dtype=torch.long)
    expected[0, SKIP_REASONS.index("corrupt_image")] = 2
    assert torch.equal(batch["skipped"], expected)


def test_augmentation_is_reproducible_by_seed_and_key(processor, synthetic):
    def pixels(seed, epoch):
        return ImageTextCollator(processor, seed=seed, crop_scale=(0.5, 1.0))(
            [synthetic[SampleKey(epoch, i)] for i in range(4)])["pixel_values"]

    assert torch.equal(pixels(seed=0, epoch=0), pixels(seed=0, epoch=0))
    assert not torch.equal(pixels(seed=0, epoch=0), pixels(seed=0, epoch=1))
    assert not torch.equal(pixels(seed=0, epoch=0), pixels(seed=1, epoch=0))


def test_eval_transform_is_the_image_processors(processor, synthetic):
    records = [synthetic[i] for i in range(2)]
    batch = ImageTextCollator(processor, train=False)(records)
    expected = processor.image_processor([record["image"] for record in records], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])


def test_train_crops_keep_the_image_near_full_scale(processor):
    image = Image.new("RGB", (40, 30), "blue")
    batch = ImageTextCollator(processor)([{"image": image, "caption": "a", "key": SampleKey(0, 0)}])
    mean, std = processor.image_processor.image_mean[2], processor.image_processor.image_std[2]
    assert torch.allclose(batch["pixel_values"][0, 2], torch.full((IMAGE_SIZE, IMAGE_SIZE), (1 - mean) / std))


def test_uint8_crops_standardise_where_they_are_used_to_the_default_batch(processor, synthetic):
    records = [synthetic[SampleKey(1, i)] for i in range(3)]
    floats = ImageTextCollator(processor, seed=4)(records)
    uint8 = ImageTextCollator(processor, seed=4, uint8_pixels=True)(records)
    assert uint8["pixel_values"].dtype == torch.uint8 and uint8["pixel_values"].shape == floats["pixel_values"].shape
    standardized = with_standardized_pixels(uint8, processor.image_processor)
    assert torch.equal(standardized["pixel_values"], floats["pixel_values"])
    assert all(torch.equal(standardized[key], floats[key]) for key in floats if key != "pixel_values")
    assert with_standardized_pixels(floats, processor.image_processor) is floats
    # Evaluation batches come from the image processor, in floats, either way.
    evaluation = ImageTextCollator(processor, train=False, uint8_pixels=True)(records)
    assert evaluation["pixel_values"].dtype == torch.float32


def test_sampler_order_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(50, seed=7)
    first = list(sampler)
    assert sorted(key.index for key in first) == list(range(50)) and {key.epoch for key in first} == {0}
    assert list(EpochSampler(50, seed=7)) == first
    sampler.set_epoch(1)
    assert [key.index for key in sampler] != [key.index for key in first]
    assert [key.index for key in EpochSampler(50, seed=8)] != [key.index for key in first]


def loader(dataset, processor, **kwargs):
    sampler = EpochSampler(len(dataset), seed=3)
    sampler.set_epoch(2)
    return torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler,
                                       collate_fn=ImageTextCollator(processor, seed=3), **kwargs)


def test_resume_after_k_batches_reads_the_same_batches(processor, synthetic):
    uninterrupted = list(loader(synthetic, processor))
    resumed = list(skip_first_batches(loader(synthetic, processor), 2))
    assert len(resumed) == len(uninterrupted) - 2
    for expected, got in zip(uninterrupted[2:], resumed):
        assert torch.equal(expected["pixel_values"], got["pixel_values"])
        assert torch.equal(expected["input_ids"], got["input_ids"])


def test_skip_counts_add_up_across_workers(processor, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    (images / "good.png").write_bytes(buffer.getvalue())
    (images / "bad.png").write_bytes(b"not an image")
    rows = ["images/good.png,a red circle"] * 10 + ["images/bad.png,a broken one"] * 3 + ["images/none.png,gone"] * 3
    (tmp_path / "pairs.csv").write_text("filepath,caption\n" + "\n".join(rows) + "\n")
    dataset = load_image_text_dataset(str(tmp_path / "pairs.csv"))
    totals = collections.Counter()
    batches = list(loader(dataset, processor, num_workers=2))
    for batch in batches:
        totals.update(dict(zip(SKIP_REASONS, batch["skipped"].sum(0).tolist())))
    assert +totals == {"corrupt_image": 3, "missing_image": 3}
    assert [len(batch["input_ids"]) for batch in batches] == [4, 4, 4, 4]  # bad rows are replaced, not dropped
