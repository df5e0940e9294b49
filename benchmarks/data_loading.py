"""Data loading speed: `python -m benchmarks.data_loading [--samples 1024] [--workers 0 1 2]`.

Writes `--samples` 224-px JPEG captioned images twice, as WebDataset `.tar` shards and as files listed in a CSV,
then reads each through train.py's own loader (`load_image_text_dataset`, `EpochSampler`, `ImageTextCollator`
with its random resized crop, tokenizer and normalisation, a `DataLoader`) at 224 px with 0, 1 and 2 workers.
It prints samples/s and the rate per core (the main process with no worker, else per worker), and how many
cores feed one GPU that trains ViT-B/32 at 224 px at `--mfu` of `--peak-tflops` (an H100's dense bf16 peak by
default), from train.py's FLOPs estimate.

The images are synthetic scenes with sensor-like noise added, so that they compress like photographs (a flat
drawing decodes faster than a photo of the same size). The first batch of each setting is not timed: it
includes starting the workers.
"""

import argparse
import csv
import io
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.data import EpochSampler, ImageTextCollator, load_image_text_dataset
from modeling_psdclip.data.render import render_scene
from modeling_psdclip.data.scenes import SceneStyle, describe, sample_scene
from modeling_psdclip.processing import build_processor
from modeling_psdclip.training.optim import training_flops_per_sample

IMAGE_SIZE = 224
SHARD_SIZE = 256


def write_images(folder: Path, count: int) -> list[tuple[str, bytes, str]]:
    """`count` (key, JPEG bytes, caption) written as shards under `folder/shards` and files under `folder/files`."""
    samples = []
    for index in range(count):
        rng = np.random.default_rng(index)
        scene = sample_scene(rng, SceneStyle())
        pixels = np.asarray(render_scene(scene, IMAGE_SIZE, rng), np.float32)
        pixels += rng.normal(0, 8, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        samples.append((f"{index:06d}", buffer.getvalue(), describe(scene, rng)))
    (folder / "shards").mkdir()
    for start in range(0, count, SHARD_SIZE):
        with tarfile.open(folder / "shards" / f"{start // SHARD_SIZE:05d}.tar", "w") as shard:
            for key, jpeg, caption in samples[start:start + SHARD_SIZE]:
                for name, data in ((f"{key}.jpg", jpeg), (f"{key}.txt", caption.encode())):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    shard.addfile(member, io.BytesIO(data))
    (folder / "files").mkdir()
    with (folder / "files" / "pairs.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["path", "caption"])
        for key, jpeg, caption in samples:
            (folder / "files" / f"{key}.jpg").write_bytes(jpeg)
            writer.writerow([f"{key}.jpg", caption])
    return samples


def samples_per_second(source: str, workers: int, batch_size: int) -> float:
    data = load_image_text_dataset(source)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, drop_last=True, num_workers=workers, sampler=EpochSampler(len(data)),
        collate_fn=ImageTextCollator(build_processor(image_size=IMAGE_SIZE, context_length=77), train=True))
    batches = iter(loader)
    next(batches)
    started, timed = time.perf_counter(), 0
    for batch in batches:
        timed += len(batch["pixel_values"])
    return timed / (time.perf_counter() - started)


def gpu_samples_per_second(peak_tflops: float, mfu: float) -> float:
    """ViT-B/32 CLIP training samples/s at `mfu` of `peak_tflops`, by train.py's FLOPs per sample."""
    with torch.device("meta"):
        model = PSDCLIPModel(PSDCLIPConfig.from_preset("vit-b-32", distill_alpha_max=0.0))
    return peak_tflops * 1e12 * mfu / training_flops_per_sample(model, feature_caching=False, ema_teacher=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU to feed")
    parser.add_argument("--mfu", type=float, default=0.4)
    options = parser.parse_args()
    torch.set_num_threads(1)  # decoding is per core; the loader's workers each get one core

    with tempfile.TemporaryDirectory() as scratch:
        samples = write_images(Path(scratch), options.samples)
        mean_kib = np.mean([len(jpeg) for _, jpeg, _ in samples]) / 1024
        print(f"{platform.machine()} CPU, {os.cpu_count()} cores; {options.samples} JPEGs of {IMAGE_SIZE} px "
              f"(mean {mean_kib:.1f} KiB), batch {options.batch_size}, random resized crop to {IMAGE_SIZE} px")
        per_core = []
        for name, source in (("webdataset shards", Path(scratch) / "shards"),
                             ("CSV of files", Path(scratch) / "files" / "pairs.csv")):
            for workers in options.workers:
                rate = samples_per_second(str(source), workers, options.batch_size)
                per_core.append(rate / max(workers, 1))
                print(f"  {name:18s} {workers} workers: {rate:7.1f} samples/s ({per_core[-1]:6.1f} per core)")
    need = gpu_samples_per_second(options.peak_tflops, options.mfu)
    print(f"one GPU training ViT-B/32 at {options.mfu:.0%} of {options.peak_tflops:.0f} TFLOP/s consumes "
          f"{need:.0f} samples/s: {need / max(per_core):.0f} to {need / min(per_core):.0f} cores at these rates")


if __name__ == "__main__":
    main()
