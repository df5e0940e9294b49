"""Deterministic order and randomness: what makes a resumed run see the same samples, captions and crops."""

from typing import Iterator, NamedTuple

import numpy as np
import torch

# Independent random streams drawn from one sample key.
CAPTION_STREAM, AUGMENTATION_STREAM = 0, 1


class SampleKey(NamedTuple):
    """Which sample to load, and in which epoch: together they seed everything random about it."""

    epoch: int
    index: int


def sample_rng(seed: int, key: SampleKey, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, key.epoch, key.index, stream])


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset that depends only on (seed, epoch), yielding `SampleKey`s.

    Call `set_epoch(epoch)` before each epoch (accelerate's prepared DataLoader forwards its own `set_epoch`).
    Because the order is fixed by (seed, epoch), resuming after `k` batches is
    `accelerator.skip_first_batches(dataloader, k)` with the sampler set to the same epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[SampleKey]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        return (SampleKey(self.epoch, int(index)) for index in order)
