"""Speed of feature extraction: `python -m benchmarks.feature_extraction [--num-images 10000] [--image-size 64]`.

Times `ImageTextEmbedder.encode_images` (preprocessing + forward, batched under inference mode) on a randomly
initialised PSD-CLIP model of the given preset, over images made beforehand so that making them is not timed.
Weights do not change the cost, so a random model measures what a trained one would.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from modeling_psdclip.embedding import ImageTextEmbedder


def random_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def benchmark(num_images: int = 10_000, image_size: int = 64, preset: str = "tiny", batch_size: int = 256) -> dict:
    from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel

    config = PSDCLIPConfig.from_preset(preset)
    config.vision_config.image_size = image_size
    size = {"height": image_size, "width": image_size}
    # Only images are encoded, so the image half of the processor is all that is needed.
    processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size)
    model = ImageTextEmbedder(PSDCLIPModel(config), processor, name=preset, batch_size=batch_size)
    images = random_images(num_images, image_size)
    start = time.perf_counter()
    features = model.encode_images(images)
    seconds = time.perf_counter() - start
    return {"preset": preset, "num_images": num_images, "image_size": image_size, "seconds": round(seconds, 2),
            "images_per_second": round(num_images / seconds, 1), "embedding_dim": features.shape[1],
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feature_extraction",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    print(benchmark(args.num_images, args.image_size, args.preset, args.batch_size))


if __name__ == "__main__":
    main()
