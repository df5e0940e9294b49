"""Training augmentation: CLIP's random resized crop, sampled per image and resampled into the batch.

torchvision, which has it, cannot be used here. The sampling is torchvision's RandomResizedCrop; the resampling is
torch's antialiased bicubic on uint8 pixels, the filter Pillow's bicubic resize applies (a = -0.5, support scaled when
shrinking; the two differ by more than one grey level in 2-27 pixels in a million), which on this CPU runs 2.4x
faster than Pillow at 224 px and 5x faster when shrinking a web-sized crop.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# open_clip's training crop: at least 90% of the image's area, aspect ratio within 3:4 and 4:3.
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# The reductions a JPEG decoder applies while decoding (Pillow's `draft`), largest first.
JPEG_REDUCTIONS = (8, 4, 2)

Box = tuple[int, int, int, int]  # left, top, right, bottom


def crop_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE,
             ratio: tuple[float, float] = CROP_RATIO) -> Box:
    """A random box covering `scale` of the area with aspect ratio in `ratio`: ten tries, then a central box at the
    closest allowed ratio (torchvision's RandomResizedCrop sampling)."""
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_width, crop_height = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = int(rng.integers(width - crop_width + 1))
            top = int(rng.integers(height - crop_height + 1))
            return left, top, left + crop_width, top + crop_height
    aspect = min(max(width / height, ratio[0]), ratio[1])
    crop_width, crop_height = min(width, round(height * aspect)), min(height, round(width / aspect))
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def smallest_crop(width: int, height: int, scale: tuple[float, float] = CROP_SCALE,
                  ratio: tuple[float, float] = CROP_RATIO) -> tuple[float, float]:
    """A lower bound on the width and on the height of every box `crop_box` can return for an image of this size,
    with `scale` and `ratio` given as (low, high).

    A sampled box of area A with aspect a is kept when its height rounds to at most the image's, sqrt(A / a) <= H + 1/2,
    so its width sqrt(A * a) >= A / (H + 1/2) >= scale[0] * W * H / (H + 1/2), less 1/2 for rounding (and the same
    for the height). The central box keeps a whole side, or the other side times the nearest allowed ratio.
    """
    return (min(width, scale[0] * width * height / (height + 0.5) - 0.5, ratio[1] * height - 0.5),
            min(height, scale[0] * height * width / (width + 0.5) - 0.5, width / ratio[0] - 0.5))


def jpeg_reduction(width: int, height: int, input_size: int, scale: tuple[float, float] = CROP_SCALE,
                   ratio: tuple[float, float] = CROP_RATIO) -> int:
    """The largest reduction (8, 4, 2, else 1) at which a JPEG of this size can decode while every crop `crop_box` may
    take of the reduced image keeps at least `input_size` pixels each way, so that crops are shrunk, never enlarged.

    A decoder reducing by k outputs ceil(side / k) pixels; the reduction saves most of the decoding's work and of the
    resize's, which both grow with the pixels.
    """
    for reduction in JPEG_REDUCTIONS:
        crop_width, crop_height = smallest_crop(-(-width // reduction), -(-height // reduction), scale, ratio)
        if min(crop_width, crop_height) >= input_size:
            return reduction
    return 1


def resized_crops(images: list[Image.Image], boxes: list[Box], size: tuple[int, int]) -> torch.Tensor:
    """A (batch, 3, height, width) uint8 tensor: each RGB image's box resized to `size` (height, width)."""
    batch = torch.empty((len(images), 3, *size), dtype=torch.uint8)
    for image, (left, top, right, bottom), row in zip(images, boxes, batch):
        # np.array copies: torch only wraps writable memory. The channels-last view is what the uint8 kernel takes.
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None, :, top:bottom, left:right]
        row.copy_(F.interpolate(pixels, size=size, mode="bicubic", antialias=True)[0])
    return batch


def standardize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (batch, 3, height, width) pixels as floats standardised per channel, `(x / 255 - mean) / std`, where
    they are (on the accelerator, for a training batch): one scale and one shift in place."""
    mean, std = (torch.tensor(values, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
                 for values in (mean, std))
    return pixels.float().mul_(1 / (255.0 * std)).sub_(mean / std)
