"""The data layer: built-in synthetic scenes, user data through `datasets`, and batching for training.

Typical use in a training loop::

    dataset = load_image_text_dataset("synthetic", num_samples=10_000, p_mismatch=0.2)
    sampler = EpochSampler(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=256, sampler=sampler, num_workers=2,
                        collate_fn=ImageTextCollator(processor, seed=0))

To feed an accelerator, train.py's collator leaves the crops in uint8 (`uint8_pixels=True`, a quarter of the bytes
for the workers to send) and standardises each batch once it is on the device:
`batch = with_standardized_pixels(batch, processor.image_processor)`.
"""

from .collate import ImageTextCollator, model_inputs, with_standardized_pixels
from .errors import DataError
from .image_text import ImageTextDataset, ImageTextStream
from .records import SKIP_REASONS, RecordColumns
from .sampling import EpochSampler, SampleKey
from .scenes import COLOURS, COUNTS, SHAPES
from .sources import caption_noise, load_image_text_dataset, saved_to_disk, saved_with_splits
from .synthetic import CLEAN, NOISE_KINDS, SPLITS, WORLDS, build_synthetic_dataset

__all__ = [
    "CLEAN", "COLOURS", "COUNTS", "NOISE_KINDS", "SHAPES", "SKIP_REASONS", "SPLITS", "WORLDS", "DataError",
    "EpochSampler", "ImageTextCollator", "ImageTextDataset", "ImageTextStream", "RecordColumns", "SampleKey",
    "build_synthetic_dataset", "caption_noise", "load_image_text_dataset", "model_inputs", "saved_to_disk",
    "saved_with_splits", "with_standardized_pixels",
]
