"""From a list of decoded records to a model batch: augmentation or eval preprocessing, tokenization, skip counts."""

from collections import Counter

import torch

from .records import SKIP_REASONS
from .sampling import AUGMENTATION_STREAM, SampleKey, sample_rng
from .transforms import normalize, random_resized_crop


class ImageTextCollator:
    """The DataLoader `collate_fn`; it runs in the workers, so augmentation does too.

    Returns `{"pixel_values", "input_ids", "attention_mask", "skipped"}`, where `skipped` maps every reason in
    `SKIP_REASONS` to the number of bad rows passed over for this batch; summing it over batches, workers and
    processes gives the run's totals.

    `train=True` crops at random (CLIP's random resized crop, seeded by the sample key so a resumed run crops
    alike) and normalises with the image processor's mean and std; `train=False` uses the image processor
    itself (resize, centre crop, normalise). There is no flip: captions say "left" and "right".
    """

    def __init__(self, processor, *, train: bool = True, seed: int = 0, crop_scale: tuple[float, float] = (0.9, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), context_length: int | None = None):
        self.processor = processor
        self.train = train
        self.seed = seed
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.context_length = context_length or processor.tokenizer.model_max_length

    def __call__(self, records: list[dict]) -> dict:
        text = self.processor.tokenizer([record["caption"] for record in records], padding="max_length",
                                        truncation=True, max_length=self.context_length, return_tensors="pt")
        skipped = Counter()
        for record in records:
            skipped.update(record.get("skipped", {}))
        return {
            "pixel_values": self._pixel_values([record["image"] for record in records],
                                               [record.get("key") for record in records]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "skipped": {reason: skipped[reason] for reason in SKIP_REASONS},
        }

    def _pixel_values(self, images: list, keys: list[SampleKey | None]) -> torch.Tensor:
        image_processor = self.processor.image_processor
        if not self.train:
            return image_processor(images, return_tensors="pt")["pixel_values"]
        size = (image_processor.crop_size["height"], image_processor.crop_size["width"])
        crops = [
            random_resized_crop(image, sample_rng(self.seed, key or SampleKey(0, position), AUGMENTATION_STREAM),
                                size, self.crop_scale, self.crop_ratio)
            for position, (image, key) in enumerate(zip(images, keys))
        ]
        return torch.stack([normalize(crop, image_processor.image_mean, image_processor.image_std) for crop in crops])
