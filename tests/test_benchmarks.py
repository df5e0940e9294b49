"""The benchmarks run end to end on a few images (their numbers are measured by hand, not here)."""

import csv
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from benchmarks.data_loading import (
    WEB_ASPECT, WEB_SIDES, decode_only_loader, samples_per_second, transformers_loader,
    write_images,
)
from modeling_psdclip.processing import build_processor

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("decode only", "train.py, shards", "train.py, CSV of files", "datasets + CLIPImageProcessor")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    # The loaders read CSVs and shards through `datasets`, which caches what it builds.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def run_module(module: str, *args: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_data_loading_benchmark_reads_every_pipeline_and_size_with_and_without_workers(tmp_path):
    done = run_module("benchmarks.data_loading", "--samples", "24", "--distinct", "3", "--batch-size", "8",
                      "--workers", "0", "1", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = re.split(r"^(?=\S.*JPEGs)", done.stdout, flags=re.M)[1:]
    assert [size.splitlines()[0].split(",")[0] for size in sizes] == [
        "224 px JPEGs", f"web-sized JPEGs (long side {WEB_SIDES[0]}-{WEB_SIDES[1]} px)"]
    for size in sizes:
        lines = re.findall(r"^  (.+?) +(\d) workers: +([0-9.]+) samples/s \( *([0-9.]+) per core, ([0-9.]+)x decode "
                           r"only\)$", size, re.M)
        assert [(name, workers) for name, workers, *_ in lines] == [
            (name, workers) for workers in "01" for name in PIPELINES]
        decode = {workers: float(rate) for name, workers, rate, *_ in lines if name == "decode only"}
        for name, workers, rate, per_core, relative in lines:
            assert float(rate) > 0 and float(per_core) == pytest.approx(float(rate), abs=0.1)  # one core each
            assert float(relative) == pytest.approx(float(rate) / decode[workers], abs=0.006)
        assert re.search(r"consumes \d+ samples/s: \d+ to \d+ cores of train.py's loader", size)


def test_web_sized_images_are_written_with_their_sides_and_reused_in_turn(tmp_path):
    samples = write_images(tmp_path, 7, web=True, distinct=3)
    assert [key for key, _, _ in samples] == [f"{index:06d}" for index in range(7)]
    assert [jpeg for _, jpeg, _ in samples] == [samples[index % 3][1] for index in range(7)]
    for _, jpeg, _ in samples[:3]:
        width, height = Image.open(io.BytesIO(jpeg)).size
        assert WEB_SIDES[0] <= max(width, height) <= WEB_SIDES[1]
        assert max(width, height) / min(width, height) <= WEB_ASPECT + 0.01
    with (tmp_path / "files" / "pairs.csv").open(newline="") as table:
        assert [(row["path"], row["caption"]) for row in csv.DictReader(table)] == [
            (f"{key}.jpg", caption) for key, _, caption in samples]
    with tarfile.open(tmp_path / "shards" / "00000.tar") as shard:
        assert len(shard.getnames()) == 14
    small = write_images(tmp_path / "small", 2)
    assert {Image.open(io.BytesIO(jpeg)).size for _, jpeg, _ in small} == {(224, 224)}


def test_the_transformers_pipeline_gives_the_clip_processors_pixels_and_the_tokenized_captions(tmp_path):
    samples = write_images(tmp_path, 4, web=True)
    table = tmp_path / "files" / "pairs.csv"
    batch = next(iter(transformers_loader(table, workers=0, batch_size=4)))
    processor = build_processor(224, 77)
    images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for _, jpeg, _ in samples]
    expected = processor(images=images, text=[caption for _, _, caption in samples], padding="max_length",
                         max_length=77, truncation=True, return_tensors="pt")
    # The loader shuffles; each row is matched to its image by its pixels.
    order = [min(range(4), key=lambda index: (expected["pixel_values"][index] - row).abs().max().item())
             for row in batch["pixel_values"]]
    assert sorted(order) == [0, 1, 2, 3]
    assert torch.allclose(batch["pixel_values"], expected["pixel_values"][order])
    assert torch.equal(batch["input_ids"], expected["input_ids"][order])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"][order])


def test_decode_only_counts_decoded_files_and_the_timer_needs_a_batch_after_the_first_wave(tmp_path):
    write_images(tmp_path, 6, distinct=2)
    table = tmp_path / "files" / "pairs.csv"
    assert list(decode_only_loader(table, workers=0, batch_size=2)) == [2, 2, 2]
    assert samples_per_second(decode_only_loader(table, workers=0, batch_size=2), workers=0) > 0
    with pytest.raises(ValueError, match="too few samples"):
        samples_per_second(decode_only_loader(table, workers=0, batch_size=3), workers=2)
