"""The benchmarks run end to end on a few images (their numbers are measured by hand, not here), and the GPU check's
CPU parts (report, FLOPs and MFU arithmetic, the loader part, the parts' code on the tiny preset, the refusal
without a GPU) work here."""

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from benchmarks import gpu
from benchmarks.data_loading import (
    WEB_ASPECT, WEB_SIDES, clip_flops_per_sample, decode_only_loader, samples_per_second, transformers_loader,
    write_images,
)
from modeling_psdclip.processing import build_processor

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("decode only", "train.py, shards", "train.py, CSV of files", "train.py, CSV, no JPEG draft",
             "train.py, shards, float pixels", "datasets + CLIPImageProcessor")


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


def test_feature_extraction_benchmark_encodes_images():
    from benchmarks.feature_extraction import benchmark

    result = benchmark(num_images=8, image_size=16, preset="tiny", batch_size=4)
    assert result["num_images"] == 8 and result["images_per_second"] > 0 and result["embedding_dim"] == 128


def test_training_speed_benchmark_times_every_loop_through_the_training_step(tmp_path, monkeypatch, capsys):
    from benchmarks.train_speed import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    main(["--batch-size", "8", "--rounds", "1", "--steps", "1"])
    printed = capsys.readouterr().out
    for loop in ("bare", "train.py", "trainer", "clip", "psd previous_epoch", "psd ema"):
        assert re.search(rf"^  {re.escape(loop)} +median +[0-9.]+ s/step", printed, re.M), loop


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


def test_the_gpu_check_refuses_in_one_line_without_a_gpu(tmp_path):
    done = run_module("benchmarks.gpu", "--out", str(tmp_path / "report"), tmp_path=tmp_path, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "python -m benchmarks.gpu: error: no CUDA GPU here; this check measures one (an H100, H200 or A100)"]
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", None)])
def test_peak_tflops_by_card_name(name, peak):
    assert gpu.peak_tflops(name) == peak


def test_mfu_is_the_achieved_flops_over_the_peak():
    flops = clip_flops_per_sample("vit-b-32")
    # 3 x 2 FLOPs per non-embedding weight per token: ~88M vision weights x 50 tokens, ~38M text weights x 77.
    assert flops == pytest.approx(3 * 2 * (87.8e6 * 50 + 37.8e6 * 77), rel=0.02)
    result = gpu.throughput(0.25, 256, flops, 989.0)
    assert result["samples_per_s"] == 1024.0
    assert result["tflops"] == pytest.approx(1024 * flops / 1e12)
    assert result["mfu"] == pytest.approx(1024 * flops / 989e12)
    assert gpu.throughput(0.25, 256, flops, None)["mfu"] is None


def measured_report() -> dict:
    clip = {"s_per_step": 0.1, "best_s_per_step": 0.095, "samples_per_s": 2560.0, "tflops": 112.6, "mfu": 0.1138,
            "first_step_s": 2.0, "flops_per_sample": 4.4e10, "attention": "sdpa", "peak_memory_gib": 21.5}
    return {
        "device": {"name": "NVIDIA H100 80GB HBM3", "peak_bf16_tflops": 989.0, "cpu_cores": 16, "cpu": "x86_64",
                   "torch": "2.9", "transformers": "5.2", "accelerate": "1.15"},
        "setup": {"preset": "vit-b-32", "image_size": 224, "batch_size": 256, "precision": "bf16 autocast",
                  "warmup_steps": 3, "rounds": 3, "steps": 10},
        "errors": {"clip_compiled": "BackendCompilerFailed: inductor"},
        "precision": {"loss_fp32": 5.54512, "loss_bf16": 5.54871, "difference": 0.00359, "tolerance": 0.01,
                      "within_tolerance": True, "logit_scale": 100.0, "distill_alpha": 0.5, "distill_fraction": 0.5},
        "clip_eager": clip,
        "teachers": {"s_per_step": {"clip": 0.1, "psd previous_epoch": 0.102, "psd ema": 0.135},
                     "time_over_clip": {"psd previous_epoch": 1.02, "psd ema": 1.35}},
        "loader": {"workers": 16, "batch_size": 128, "samples_per_s": 4096.0, "per_core": 256.0},
    }


def test_the_report_is_written_as_json_and_markdown(tmp_path):
    report = measured_report()
    gpu.write_report(tmp_path / "out", report)
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == report
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert text.startswith("# GPU check: NVIDIA H100 80GB HBM3\n")
    assert "| MFU of 989.0 TFLOP/s | 11.4% |" in text
    assert "| samples/s | 2560 |" in text and "| peak memory | 21.5 GiB |" in text
    assert "| difference | 3.59e-03: within 0.01 |" in text
    assert "| psd ema / clip step time | 1.350 |" in text
    assert "| samples/s, 16 workers, batch 128 | 4096 (256 per core) |" in text
    assert "| over the GPU's CLIP samples/s (the faster step) | 1.60 |" in text
    assert "| clip_compiled | BackendCompilerFailed: inductor |" in text
    assert "Not run" not in text and sorted(os.listdir(tmp_path / "out")) == ["gpu_check.json", "gpu_check.md"]

    # A run cut short: the loader compares with the step measured so far, and what is missing is named.
    del report["clip_eager"], report["teachers"]
    report["errors"] = {}
    report["clip_compiled"] = {**measured_report()["clip_eager"], "samples_per_s": 8192.0, "mfu": None}
    gpu.write_report(tmp_path / "out", report)
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| over the GPU's CLIP samples/s (the faster step) | 0.50 |" in text
    assert "n/a (unknown peak: pass --peak-tflops)" in text
    assert "Not run (yet): clip_eager, teachers." in text and "## Failed" not in text


def test_the_loader_part_reads_jpeg_shards_with_workers(tmp_path):
    write_images(tmp_path, 24, distinct=3)
    result = gpu.loader(tmp_path / "shards", workers=1, batch_size=8)
    assert (result["workers"], result["batch_size"]) == (1, 8)
    assert result["samples_per_s"] > 0 and result["per_core"] == result["samples_per_s"]


def test_the_gpu_parts_run_on_the_tiny_preset_on_cpu(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randn(8, 3, 48, 48, generator=generator),
             "input_ids": torch.randint(1, 49000, (8, 24), generator=generator),
             "attention_mask": torch.ones(8, 24, dtype=torch.long), "pair_index": torch.arange(8) * 3}
    bench = gpu.Bench(Accelerator(cpu=True), batch, peak_tflops=None, preset="tiny", warmup=1, rounds=1, steps=1)

    checked = gpu.precision(bench)
    assert checked["within_tolerance"] and 0 < checked["difference"] <= gpu.LOSS_TOLERANCE
    assert checked["loss_fp32"] == pytest.approx(checked["loss_bf16"], abs=gpu.LOSS_TOLERANCE)
    assert math.isfinite(checked["loss_fp32"]) and checked["distill_alpha"] == 0.5
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)  # restored

    clip = gpu.clip_step(bench, compiled=False)
    assert clip["samples_per_s"] == pytest.approx(8 / clip["s_per_step"])
    assert clip["mfu"] is None and clip["peak_memory_gib"] is None and clip["attention"] == "sdpa"
    assert clip["best_s_per_step"] <= clip["s_per_step"]

    ratios = gpu.teachers(bench)["time_over_clip"]
    assert set(ratios) == {"psd previous_epoch", "psd ema"} and all(ratio > 0 for ratio in ratios.values())
    assert np.isfinite(list(ratios.values())).all()
