"""Training augmentation: the crop's bounds, the JPEG reduction they allow, and the resampling against Pillow's."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_psdclip.data.records import decode_image
from modeling_psdclip.data.render import render_scene
from modeling_psdclip.data.scenes import SceneStyle, sample_scene
from modeling_psdclip.data.transforms import (
    CROP_RATIO, CROP_SCALE, JPEG_REDUCTIONS, crop_box, jpeg_reduction, resized_crops, smallest_crop, standardize,
)


@pytest.mark.parametrize("scale, ratio", [(CROP_SCALE, CROP_RATIO), ((0.5, 1.0), CROP_RATIO), ((0.08, 1.0), CROP_RATIO),
                                          (CROP_SCALE, (1 / 4, 4)), ((0.5, 1.0), (0.1, 10))])
def test_every_crop_is_at_least_the_smallest_crop_which_is_nearly_reached(scale, ratio):
    rng = np.random.default_rng(0)
    margins = []
    for _ in range(5000):
        width, height = (int(side) for side in rng.integers(1, 1500 if rng.random() < 0.7 else 40, size=2))
        left, top, right, bottom = crop_box(width, height, rng, scale, ratio)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        bound_width, bound_height = smallest_crop(width, height, scale, ratio)
        margins += [right - left - bound_width, bottom - top - bound_height]
    assert min(margins) >= 0
    assert min(margins) < 1  # a bound far below every crop would reduce JPEGs less than they can be


def test_a_jpeg_reduces_as_far_as_its_crops_stay_at_the_input_size():
    rng = np.random.default_rng(1)
    for _ in range(300):
        width, height = (int(side) for side in rng.integers(100, 4000, size=2))
        input_size = int(rng.integers(16, 400))
        reduction = jpeg_reduction(width, height, input_size)
        reduced = (-(-width // reduction), -(-height // reduction))
        assert min(smallest_crop(*reduced)) >= input_size or reduction == 1
        larger = [factor for factor in JPEG_REDUCTIONS if factor > reduction]
        if larger:  # the next reduction would let some crop be enlarged
            factor = min(larger)
            assert min(smallest_crop(-(-width // factor), -(-height // factor))) < input_size


def test_decoded_jpegs_are_reduced_and_their_crops_are_still_shrunk():
    for size in ((1200, 675), (675, 1200), (900, 900), (480, 400)):
        buffer = io.BytesIO()
        Image.new("RGB", size, "green").save(buffer, "JPEG")
        image = decode_image(buffer.getvalue(), input_size=224)
        reduction = jpeg_reduction(*size, 224)
        assert image.size == (-(-size[0] // reduction), -(-size[1] // reduction))
        rng = np.random.default_rng(0)
        for _ in range(200):
            left, top, right, bottom = crop_box(*image.size, rng)
            assert min(right - left, bottom - top) >= 224
    assert [jpeg_reduction(*size, 224) for size in ((1200, 675), (900, 900), (480, 400))] == [2, 2, 1]


def scene(side: int) -> Image.Image:
    rng = np.random.default_rng(side)
    return render_scene(sample_scene(rng, SceneStyle()), 224, rng).resize((side, side), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("side", [224, 900])  # training crops enlarged by a few percent, and shrunk by about 4x
def test_crops_resample_as_pillows_bicubic_resize(side):
    image, rng = scene(side), np.random.default_rng(side)
    differences = []
    for _ in range(20):
        box = crop_box(side, side, rng)
        ours = resized_crops([image], [box], (224, 224))[0].float()
        pillow = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC, box=box), dtype=np.float32)
        differences.append((ours - torch.from_numpy(pillow).permute(2, 0, 1)).abs())
    differences = torch.stack(differences)
    # Rounding apart, the same values: a few pixels in a million differ by more than one grey level.
    assert differences.mean() < 0.01 and (differences > 1).float().mean() < 1e-4 and differences.max() <= 8


def test_crops_are_laid_out_by_row_and_standardised_per_channel():
    colours = [(255, 0, 51), (0, 102, 255)]
    images = [Image.new("RGB", (30, 20), colour) for colour in colours]
    crops = resized_crops(images, [(0, 0, 30, 20), (3, 2, 20, 17)], (8, 6))
    assert crops.shape == (2, 3, 8, 6) and crops.dtype == torch.uint8
    mean, std = [0.5, 0.25, 0.125], [0.5, 0.25, 2.0]
    batch = standardize(crops, mean, std)
    assert batch.dtype == torch.float32
    for row, colour in zip(batch, colours):
        expected = (torch.tensor(colour) / 255 - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(row, expected.view(3, 1, 1).expand(3, 8, 6), atol=1e-6)
