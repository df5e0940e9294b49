"""The CLIP processor: OpenAI's preprocessing, any PIL mode, and reloading where this package is absent."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from modeling_psdclip.processing import build_processor
from modeling_psdclip.tokenization import train_bpe_tokenizer

SIZE = 32
MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
MODES = ["RGB", "L", "CMYK", "RGBA", "P", "LA"]
TEXTS = ["a photo of a cat", "Tom &amp; Jerry\u2019s caf\u00e9"]


@pytest.fixture(scope="module")
def processor():
    return build_processor(image_size=SIZE, context_length=16)


def noise_images() -> list[Image.Image]:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return [Image.fromarray(pixels).convert(mode) for mode in MODES]


def test_output_shapes(processor):
    batch = processor(text=TEXTS, images=noise_images(), padding="max_length", truncation=True,
                      return_tensors="pt")
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 16)
    assert batch["pixel_values"].shape == (len(MODES), 3, SIZE, SIZE)
    assert batch["pixel_values"].dtype == torch.float32


def test_normalises_with_clip_mean_and_std(processor):
    grey = Image.new("RGB", (50, 40), (128, 128, 128))
    pixels = processor(images=grey, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, ((128 / 255 - MEAN) / STD).expand(3, SIZE, SIZE))


def test_resizes_shortest_side_and_crops_centre(processor):
    # A wide image whose middle third is white: after resizing, the centre crop is exactly that third
    # (bicubic resampling blurs the two columns next to each black edge).
    image = np.zeros((SIZE * 2, SIZE * 6, 3), dtype=np.uint8)
    image[:, SIZE * 2 : SIZE * 4] = 255
    pixels = processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels[:, :, 2:-2], ((1 - MEAN) / STD).expand(3, SIZE, SIZE - 4))
    assert (pixels[:, :, [0, -1]] < pixels[:, :, [SIZE // 2]]).all()


def test_image_modes_become_rgb(processor):
    grey = Image.new("L", (SIZE, SIZE), 200)
    cmyk = Image.new("CMYK", (SIZE, SIZE), (0, 0, 0, 0))  # no ink: white
    transparent = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))  # composited over white
    pixels = processor(images=[grey, cmyk, transparent], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0], ((200 / 255 - MEAN) / STD).expand(3, SIZE, SIZE))
    torch.testing.assert_close(pixels[1:], ((1 - MEAN) / STD).expand(2, 3, SIZE, SIZE))


def test_custom_tokenizer(processor):
    tokenizer = train_bpe_tokenizer(["a photo of a cat", "a photo of a dog"] * 5, vocab_size=600)
    custom = build_processor(image_size=SIZE, tokenizer=tokenizer)
    assert custom.tokenizer is tokenizer


RELOAD = """
import sys
sys.modules["modeling_psdclip"] = None  # reloading must not need this package
import numpy as np, torch
from PIL import Image
from transformers import AutoProcessor
folder, modes, texts = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
pixels = np.load(f"{folder}/pixels.npy")
processor = AutoProcessor.from_pretrained(folder)
images = [Image.fromarray(pixels).convert(mode) for mode in modes]
batch = processor(text=texts, images=images, padding="max_length", truncation=True, return_tensors="pt")
torch.save({**batch, "tokenizer_module": type(processor.tokenizer).__module__}, f"{folder}/reloaded.pt")
"""


def test_reloads_without_this_package(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path), ",".join(MODES), *TEXTS],
                   cwd=tmp_path, env=env, check=True)

    reloaded = torch.load(tmp_path / "reloaded.pt", weights_only=False)
    expected = processor(text=TEXTS, images=noise_images(), padding="max_length", truncation=True,
                         return_tensors="pt")
    assert reloaded.pop("tokenizer_module").startswith("transformers.")
    for key, value in expected.items():
        assert torch.equal(reloaded[key], value), key
