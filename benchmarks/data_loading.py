"""Data loading speed: `python -m benchmarks.data_loading [--samples 1024] [--workers 0 1 2] [--sizes 224 web]`.

Writes `--samples` captioned JPEGs of each size, as WebDataset `.tar` shards and as files listed in a CSV: 224 px
squares, and web-sized ones (long side 400-1200 px, aspect ratio up to 16:9, as crawled pairs are). Each size is
read by six pipelines, on the same files and with 0, 1 and 2 `DataLoader` workers:

  decode only                     Pillow decodes each file at full scale and converts it to RGB, nothing else: the
                                  floor of every pipeline that decodes whole images
  train.py, shards / CSV          train.py's own loader (`load_image_text_dataset`, `EpochSampler`,
                                  `ImageTextCollator` with its random resized crop to 224 px and tokenizer) on
                                  the shards and on the CSV; a JPEG decodes at the largest reduction (1/2, 1/4,
                                  1/8: Pillow's `draft`) that keeps every crop at least 224 px each way. Like
                                  train.py's, its batches carry uint8 crops, standardised later on the accelerator
  train.py, CSV, no JPEG draft    the same on the CSV with every JPEG decoded at full scale: what drafting gains
  train.py, shards, float pixels  the same on the shards with the crops standardised to floats in the loader, as
                                  the collator does by default: what standardising on the accelerator saves it
  datasets + CLIPImageProcessor   what a transformers user writes instead, after transformers' contrastive
                                  image-text example (run_clip.py): the CSV loaded with `datasets`, captions
                                  tokenised once by `map` (not timed, as there), images opened by path and run
                                  through the CLIP image processor (resize, centre crop, normalise) in
                                  `with_transform`, the batch stacked by its collate function

It prints samples/s, the rate per core (the main process with no worker, else per worker), the ratio to decode
only with as many workers, and how many cores feed one GPU that trains ViT-B/32 at 224 px at `--mfu` of
`--peak-tflops` (an H100's dense bf16 peak by default), from train.py's FLOPs estimate.

The images are synthetic scenes with sensor-like noise added, so that they compress like photographs (a flat
drawing decodes faster than a photo of the same size). Only `--distinct` images are drawn per size and the rows
reuse them in turn: decoding the same bytes again costs the same, and drawing a scene at web size takes seconds.
"""

import argparse
import csv
import functools
import io
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import datasets
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
CONTEXT_LENGTH = 77
SHARD_SIZE = 256
WEB_SIDES = (400, 1200)  # the long side of a web-sized image, in pixels
WEB_ASPECT = 16 / 9  # the widest a web-sized image gets, either way round
SIZES = {"224": "224 px JPEGs", "web": f"web-sized JPEGs (long side {WEB_SIDES[0]}-{WEB_SIDES[1]} px)"}


def jpeg_scene(index: int, web: bool) -> tuple[bytes, str]:
    """Scene `index` as JPEG bytes, 224 px square or web-sized, and its caption."""
    rng = np.random.default_rng(index)
    scene = sample_scene(rng, SceneStyle())
    # Drawn at 224 px and enlarged: drawing at 1200 px takes seconds. The noise, added after, gives every size
    # a photograph's entropy per pixel.
    image = render_scene(scene, IMAGE_SIZE, rng)
    if web:
        long_side = int(rng.integers(WEB_SIDES[0], WEB_SIDES[1] + 1))
        short_side = round(long_side / rng.uniform(1, WEB_ASPECT))
        image = image.resize((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side),
                             Image.Resampling.BICUBIC)
    pixels = np.asarray(image, np.float32) + rng.normal(0, 8, (image.height, image.width, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), describe(scene, rng)


def write_images(folder: Path, count: int, *, web: bool = False, distinct: int | None = None
                 ) -> list[tuple[str, bytes, str]]:
    """`count` (key, JPEG bytes, caption) rows over `distinct` scenes, written as shards under `folder/shards` and
    as files listed in `folder/files/pairs.csv`."""
    scenes = [jpeg_scene(index, web) for index in range(min(distinct or count, count))]
    samples = [(f"{index:06d}", *scenes[index % len(scenes)]) for index in range(count)]
    (folder / "shards").mkdir(parents=True)
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


def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def train_loader(source: Path, workers: int, batch_size: int, draft: bool = True, uint8_pixels: bool = True
                 ) -> torch.utils.data.DataLoader:
    """train.py's training loader over `source`, cropping to 224 px. Without `draft`, every JPEG decodes at full
    scale (train.py decodes it at a reduced scale when every crop keeps at least 224 px each way); without
    `uint8_pixels`, the crops come standardised to floats (train.py standardises them on the accelerator)."""
    data = load_image_text_dataset(str(source), input_size=IMAGE_SIZE if draft else None)
    collator = ImageTextCollator(build_processor(IMAGE_SIZE, CONTEXT_LENGTH), train=True, uint8_pixels=uint8_pixels)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, drop_last=True, num_workers=workers,
                                       sampler=EpochSampler(len(data)), collate_fn=collator)


class DecodedFiles(torch.utils.data.Dataset):
    """The image files a CSV lists, each decoded to RGB and dropped."""

    def __init__(self, table: Path):
        with table.open(newline="") as rows:
            self.paths = [table.parent / row["path"] for row in csv.DictReader(rows)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> None:
        decode(self.paths[index])


def decode_only_loader(table: Path, workers: int, batch_size: int) -> torch.utils.data.DataLoader:
    # Batches are counted, not collated: sending the decoded images back from the workers is not decoding.
    return torch.utils.data.DataLoader(DecodedFiles(table), batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, collate_fn=len)


def tokenize(tokenizer, rows: dict) -> dict:
    return tokenizer(rows["caption"], padding="max_length", truncation=True, max_length=CONTEXT_LENGTH)


def process_images(image_processor, folder: Path, rows: dict) -> dict:
    images = [decode(folder / path) for path in rows["path"]]
    return {"pixel_values": image_processor(images, return_tensors="pt")["pixel_values"],
            "input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]}


def stack(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            **{name: torch.tensor([example[name] for example in examples], dtype=torch.long)
               for name in ("input_ids", "attention_mask")}}


def transformers_loader(table: Path, workers: int, batch_size: int) -> torch.utils.data.DataLoader:
    """The CSV through `datasets` and the CLIP processor that train.py saves (`AutoProcessor` gives it back)."""
    processor = build_processor(IMAGE_SIZE, CONTEXT_LENGTH)
    data = datasets.load_dataset("csv", data_files=str(table), split="train")
    data = data.map(functools.partial(tokenize, processor.tokenizer), batched=True, remove_columns=["caption"])
    data = data.with_transform(functools.partial(process_images, processor.image_processor, table.parent))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, collate_fn=stack)


PIPELINES = {
    "decode only": lambda folder, *args: decode_only_loader(folder / "files" / "pairs.csv", *args),
    "train.py, shards": lambda folder, *args: train_loader(folder / "shards", *args),
    "train.py, CSV of files": lambda folder, *args: train_loader(folder / "files" / "pairs.csv", *args),
    "train.py, CSV, no JPEG draft": lambda folder, *args: train_loader(folder / "files" / "pairs.csv", *args,
                                                                       draft=False),
    "train.py, shards, float pixels": lambda folder, *args: train_loader(folder / "shards", *args, uint8_pixels=False),
    "datasets + CLIPImageProcessor": lambda folder, *args: transformers_loader(folder / "files" / "pairs.csv", *args),
}
TRAIN_PY = ("train.py, shards", "train.py, CSV of files")


def samples_per_second(loader: torch.utils.data.DataLoader, workers: int) -> float:
    """Samples per second of a `drop_last` loader, timed from its second wave of batches."""
    batches = iter(loader)
    # Each worker's first batch includes the worker's start-up, and the first wave arrives all at once.
    for _ in range(max(workers, 1)):
        next(batches)
    started, timed = time.perf_counter(), 0
    for _ in batches:
        timed += loader.batch_size
    if not timed:
        raise ValueError(f"too few samples: {len(loader)} batches leave none to time after the first "
                         f"{max(workers, 1)}")
    return timed / (time.perf_counter() - started)


def clip_flops_per_sample(preset: str = "vit-b-32") -> float:
    """train.py's FLOPs estimate of one CLIP training sample of `preset`."""
    with torch.device("meta"):
        model = PSDCLIPModel(PSDCLIPConfig.from_preset(preset, distill_alpha_max=0.0))
    return training_flops_per_sample(model, feature_caching=False, teacher_forward_passes=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_loading", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="rows per size")
    parser.add_argument("--distinct", type=int, default=256, help="distinct images per size")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--pipelines", nargs="+", choices=list(PIPELINES), default=list(PIPELINES),
                        metavar="PIPELINE", help=f"of {', '.join(map(repr, PIPELINES))}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU to feed")
    parser.add_argument("--mfu", type=float, default=0.4)
    options = parser.parse_args(argv)
    if options.samples < (max(options.workers) + 2) * options.batch_size:
        parser.error(f"--samples must give each setting a batch to time after its first wave of workers: at least "
                     f"{(max(options.workers) + 2) * options.batch_size}")
    torch.set_num_threads(1)  # decoding is per core; the loader's workers each get one core
    datasets.disable_progress_bars()

    need = options.peak_tflops * 1e12 * options.mfu / clip_flops_per_sample()
    print(f"{platform.machine()} CPU, {os.cpu_count()} cores; {options.samples} rows over {options.distinct} images "
          f"per size, batch {options.batch_size}, train.py crops to {IMAGE_SIZE} px")
    for size in options.sizes:
        with tempfile.TemporaryDirectory() as scratch:
            samples = write_images(Path(scratch), options.samples, web=size == "web", distinct=options.distinct)
            mean_kib = np.mean([len(jpeg) for _, jpeg, _ in samples]) / 1024
            print(f"\n{SIZES[size]}, mean {mean_kib:.1f} KiB:")
            rates = {}
            for workers in options.workers:
                for name in options.pipelines:
                    rates[name, workers] = rate = samples_per_second(
                        PIPELINES[name](Path(scratch), workers, options.batch_size), workers)
                    baseline = rates.get(("decode only", workers))
                    relative = f", {rate / baseline:4.2f}x decode only" if baseline else ""
                    print(f"  {name:30s} {workers} workers: {rate:7.1f} samples/s "
                          f"({rate / max(workers, 1):6.1f} per core{relative})")
        per_core = [rate / max(workers, 1) for (name, workers), rate in rates.items() if name in TRAIN_PY]
        if per_core:
            print(f"  one GPU training ViT-B/32 at {options.mfu:.0%} of {options.peak_tflops:.0f} TFLOP/s consumes "
                  f"{need:.0f} samples/s: {need / max(per_core):.0f} to {need / min(per_core):.0f} cores of "
                  f"train.py's loader at these rates")


if __name__ == "__main__":
    main()
