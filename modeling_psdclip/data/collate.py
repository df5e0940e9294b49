"""From a list of decoded records to a model batch: augmentation or eval preprocessing, tokenization, skip counts."""

import torch

from ..tokenization import CaptionTokenizer
from .records import SKIP_REASONS
from .sampling import AUGMENTATION_STREAM, SampleKey, sample_rng
from .transforms import CROP_RATIO, CROP_SCALE, crop_box, resized_crops, standardize

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")


def model_inputs(batch: dict) -> dict:
    """The entries of a collated batch that the model's forward takes (not `pair_index` or `skipped`)."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def with_standardized_pixels(batch: dict, image_processor) -> dict:
    """`batch` with uint8 `pixel_values` (from a collator with `uint8_pixels`) standardised where they are, by the
    image processor's mean and std; a batch whose pixel values are already floats is returned as it is."""
    pixels = batch.get("pixel_values")
    if pixels is None or pixels.dtype != torch.uint8:
        return batch
    return {**batch, "pixel_values": standardize(pixels, image_processor.image_mean, image_processor.image_std)}


class ImageTextCollator:
    """The DataLoader `collate_fn`; it runs in the workers, so augmentation does too.

    Returns `{"pixel_values", "input_ids", "attention_mask", "pair_index", "skipped"}`. `pair_index` is each
    record's index in a map-style dataset (the same pair in every epoch; what a previous-epoch teacher stores its
    embeddings under). `skipped` is a `(batch,
    len(SKIP_REASONS))` count tensor: per record, the bad rows of each reason passed over on the way to it.
    Summing it over batches, workers and processes gives the run's totals. It is a tensor with one row per record
    so that Accelerate can concatenate, broadcast and split it with the rest of the batch (as it does for
    streamed data over several processes).

    `train=True` crops at random (CLIP's random resized crop, seeded by the sample key so a resumed run crops
    alike) and normalises with the image processor's mean and std; `train=False` uses the image processor
    itself (resize, centre crop, normalise). There is no flip: captions say "left" and "right".

    `uint8_pixels=True` leaves training crops in uint8, to be standardised by `with_standardized_pixels` where the
    batch is used: train.py does so on the accelerator, so that its loader workers neither convert the pixels nor
    send four bytes for each.

    Data loaded with an `input_size` decodes large JPEGs reduced as far as the default `crop_scale` and `crop_ratio`
    allow (`transforms.jpeg_reduction`); smaller crops than those would be enlarged from such images.
    """

    def __init__(self, processor, *, train: bool = True, seed: int = 0, crop_scale: tuple[float, float] = CROP_SCALE,
                 crop_ratio: tuple[float, float] = CROP_RATIO, context_length: int | None = None,
                 uint8_pixels: bool = False):
        self.processor = processor
        self.train = train
        self.seed = seed
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.context_length = context_length or processor.tokenizer.model_max_length
        self.uint8_pixels = uint8_pixels
        self.tokenize = CaptionTokenizer(processor.tokenizer, self.context_length)

    def __call__(self, records: list[dict]) -> dict:
        keys = [record.get("key") for record in records]
        text = self.tokenize([record["caption"] for record in records])
        return {
            "pixel_values": self._pixel_values([record["image"] for record in records], keys),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pair_index": torch.tensor([key.index if key is not None else -1 for key in keys], dtype=torch.long),
            "skipped": torch.tensor([[record.get("skipped", {}).get(reason, 0) for reason in SKIP_REASONS]
                                     for record in records], dtype=torch.long),
        }

    def _pixel_values(self, images: list, keys: list[SampleKey | None]) -> torch.Tensor:
        image_processor = self.processor.image_processor
        if not self.train:
            return image_processor(images, return_tensors="pt")["pixel_values"]
        size = (image_processor.crop_size["height"], image_processor.crop_size["width"])
        boxes = [crop_box(*image.size, sample_rng(self.seed, key or SampleKey(0, position), AUGMENTATION_STREAM),
                          self.crop_scale, self.crop_ratio)
                 for position, (image, key) in enumerate(zip(images, keys))]
        crops = resized_crops(images, boxes, size)
        return crops if self.uint8_pixels else standardize(crops, image_processor.image_mean, image_processor.image_std)
