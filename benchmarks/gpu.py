"""One prepared GPU check: `python -m benchmarks.gpu [--out DIR]`, sized for under 8 minutes on one H100/H200/A100.

ViT-B/32 at 224 px (`PSDCLIPConfig.from_preset("vit-b-32")`), batch 256, train.py's step (forward with the loss,
backward, gradient clipping, fused AdamW) under Accelerate's bf16 autocast (`--mixed_precision bf16`) with SDPA
attention, on one batch of synthetic 224 px JPEGs read through train.py's loader. In order:

  precision      the PSD loss of that batch (EMA teacher at its first step, alpha 0.5, the similarity scale at its
                 bound) under bf16 autocast and in fp32 with TF32 off: do they agree within 1e-2?
  clip eager     CLIP's step: samples/s, TFLOP/s and MFU against the card's dense bf16 peak (train.py's FLOPs
                 estimate), peak memory (`torch.cuda.max_memory_allocated`)
  teachers       the step time of PSD with the previous-epoch and with the EMA teacher over CLIP's, the three taking
                 turns (eager: three compilations would not fit)
  loader         train.py's DataLoader with one worker per CPU core on 224 px JPEG shards, against the samples/s
                 the GPU consumes
  clip compiled  as clip eager, the model compiled by torch.compile as train.py's `--compile` does it, and the
                 first step's time (the compilation)

Each part runs a few warm-up steps and `--rounds` x `--steps` timed ones (the median is reported), so the whole
check fits one 8-minute call. After every part `gpu_check.json` and `gpu_check.md` are rewritten in `--out`: a run
cut short keeps what it measured, and a part that fails is reported and the next one runs. Without a CUDA GPU the
check exits with status 2 and one line.
"""

import argparse
import contextlib
import itertools
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import accelerate
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin

from benchmarks.data_loading import samples_per_second, train_loader, write_images
from benchmarks.train_speed import StepLoop, new_model, teacher_loops, timed_rounds
from modeling_psdclip.data import model_inputs
from modeling_psdclip.modeling_psdclip import TrainingProgress
from modeling_psdclip.training.optim import training_flops_per_sample
from modeling_psdclip.training.step import TrainingStep
from modeling_psdclip.utils import OneLineErrorParser, fail, first_line, write_json_atomically

PROG = "python -m benchmarks.gpu"
PRESET = "vit-b-32"
# Dense bf16 peaks, in TFLOP/s, of the SXM cards; PCIe cards are slower (an H100 PCIe: 756): pass --peak-tflops.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
LOSS_TOLERANCE = 1e-2
PARTS = ("precision", "clip_eager", "teachers", "loader", "clip_compiled")


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the card `torch.cuda.get_device_name` names, or None for a card not listed."""
    return next((peak for card, peak in PEAK_BF16_TFLOPS.items() if card in device_name.upper()), None)


def throughput(seconds_per_step: float, batch_size: int, flops_per_sample: float, peak: float | None) -> dict:
    samples = batch_size / seconds_per_step
    tflops = samples * flops_per_sample / 1e12
    return {"s_per_step": seconds_per_step, "samples_per_s": samples, "tflops": tflops,
            "mfu": tflops / peak if peak else None}


@dataclass
class Bench:
    accelerator: Accelerator
    batch: dict  # one collated batch, on the accelerator's device
    peak_tflops: float | None
    preset: str = PRESET
    warmup: int = 3
    rounds: int = 3
    steps: int = 10

    @property
    def batch_size(self) -> int:
        return len(self.batch["input_ids"])

    def model(self, **settings):
        """A model as train.py prepares it: on the device, its forward under the accelerator's autocast."""
        return self.accelerator.prepare_model(new_model(self.preset, **settings))


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@contextlib.contextmanager
def exact_fp32():
    """fp32 as written: cuDNN's convolutions (the patch embedding) round their inputs to TF32 by default."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def precision(bench: Bench) -> dict:
    """The PSD loss of the batch under bf16 autocast and in fp32.

    The teacher is the model's own fp32 embeddings, as an EMA teacher's are at the first step. The scale is set to
    its bound, where a trained CLIP ends up: the larger the scale, the more rounding moves the loss.
    """
    device = bench.accelerator.device
    model = new_model(bench.preset).to(device)
    model.logit_scale.fill_(math.log(model.config.logit_scale_max))
    inputs = model_inputs(bench.batch)
    with exact_fp32():
        teacher = model(**inputs, return_loss=False)
        targets = {"teacher_image_embeds": teacher.image_embeds, "teacher_text_embeds": teacher.text_embeds}
        fp32 = model(**inputs, return_loss=True, **targets).loss.item()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = model(**inputs, return_loss=True, **targets).loss.item()
    difference = abs(bf16 - fp32)
    return {"loss_fp32": fp32, "loss_bf16": bf16, "difference": difference, "tolerance": LOSS_TOLERANCE,
            "within_tolerance": difference <= LOSS_TOLERANCE, "logit_scale": model.config.logit_scale_max,
            "distill_alpha": model.psd_loss.alpha(TrainingProgress()), "distill_fraction": model.config.distill_fraction}


def clip_step(bench: Bench, compiled: bool) -> dict:
    device = bench.accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = bench.model(distill_alpha_max=0.0)
    psd = bench.accelerator.unwrap_model(model)
    flops = training_flops_per_sample(psd, feature_caching=False, teacher_forward_passes=0)
    if compiled:
        model = torch.compile(model, **TorchDynamoPlugin(backend="inductor").to_kwargs())
    loop = StepLoop(TrainingStep.build(model, bench.accelerator), itertools.repeat(bench.batch))
    first_step = loop.run(1)
    times = timed_rounds({"clip": loop}, bench.rounds, bench.steps, warmup=bench.warmup)["clip"]
    return {**throughput(statistics.median(times), bench.batch_size, flops, bench.peak_tflops),
            "best_s_per_step": min(times), "first_step_s": first_step, "flops_per_sample": flops,
            "attention": psd.config._attn_implementation, "peak_memory_gib": peak_memory_gib(device)}


def teachers(bench: Bench) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        # The bank keeps a row for every dataset index up to the largest the batch holds.
        loops = teacher_loops(bench.model, [bench.batch], bench.accelerator, folder,
                              num_pairs=int(bench.batch["pair_index"].max()) + 1)
        times = timed_rounds(loops, bench.rounds, bench.steps, warmup=bench.warmup)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"s_per_step": medians,
            "time_over_clip": {name: medians[name] / medians["clip"] for name in medians if name != "clip"}}


def loader(shards: Path, workers: int, batch_size: int) -> dict:
    rate = samples_per_second(train_loader(shards, workers, batch_size), workers)
    return {"workers": workers, "batch_size": batch_size, "samples_per_s": rate, "per_core": rate / max(workers, 1)}


def gpu_samples_per_s(report: dict) -> float | None:
    """The most samples/s a measured CLIP step consumed."""
    rates = [report[part]["samples_per_s"] for part in ("clip_eager", "clip_compiled") if part in report]
    return max(rates, default=None)


def rows(report: dict, part: str) -> list[tuple[str, str]]:
    """(measure, value) rows of one measured part of the report."""
    result = report.get(part)
    if result is None:
        return []
    if part == "precision":
        return [("PSD loss, fp32 / bf16 autocast", f"{result['loss_fp32']:.5f} / {result['loss_bf16']:.5f}"),
                ("difference", f"{result['difference']:.2e}: "
                               f"{'within' if result['within_tolerance'] else 'NOT within'} {result['tolerance']:g}")]
    if part in ("clip_eager", "clip_compiled"):
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (unknown peak: pass --peak-tflops)"
        return [("attention", result["attention"]),
                ("s/step, median (best)", f"{result['s_per_step']:.4f} ({result['best_s_per_step']:.4f})"),
                ("samples/s", f"{result['samples_per_s']:.0f}"),
                ("TFLOP/s (train.py's estimate)", f"{result['tflops']:.1f}"),
                (f"MFU of {report['device']['peak_bf16_tflops'] or '?'} TFLOP/s", mfu),
                ("peak memory", f"{result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None
                 else "n/a"),
                ("first step (compilation, allocator and kernel choice)", f"{result['first_step_s']:.1f} s")]
    if part == "teachers":
        return [*((f"{name} s/step, median", f"{seconds:.4f}") for name, seconds in result["s_per_step"].items()),
                *((f"{name} / clip step time", f"{ratio:.3f}") for name, ratio in result["time_over_clip"].items())]
    if part == "loader":
        gpu = gpu_samples_per_s(report)
        return [(f"samples/s, {result['workers']} workers, batch {result['batch_size']}",
                 f"{result['samples_per_s']:.0f} ({result['per_core']:.0f} per core)"),
                ("over the GPU's CLIP samples/s (the faster step)",
                 f"{result['samples_per_s'] / gpu:.2f}" if gpu else "n/a (no CLIP step measured)")]
    raise ValueError(f"unknown part {part!r}")


TITLES = {"precision": "bf16 against fp32", "clip_eager": "CLIP step, eager", "teachers": "PSD teachers (eager)",
          "loader": "train.py's DataLoader on 224 px JPEG shards", "clip_compiled": "CLIP step, torch.compile"}


def markdown(report: dict) -> str:
    device, setup = report["device"], report["setup"]
    lines = [f"# GPU check: {device['name']}", "",
             f"`{PROG}`: {setup['preset']} at {setup['image_size']} px, batch {setup['batch_size']}, "
             f"{setup['precision']}; {setup['rounds']} rounds of {setup['steps']} "
             f"timed steps after {setup['warmup_steps']} warm-up steps. {device['cpu_cores']} CPU cores; torch "
             f"{device['torch']}, transformers {device['transformers']}, accelerate {device['accelerate']}.", ""]
    for part in PARTS:
        if part in report:
            lines += [f"## {TITLES[part]}", "", "| measure | value |", "|---|---|",
                      *(f"| {measure} | {value} |" for measure, value in rows(report, part)), ""]
    if report["errors"]:
        lines += ["## Failed", "", "| part | error |", "|---|---|",
                  *(f"| {part} | {error} |" for part, error in report["errors"].items()), ""]
    missing = [part for part in PARTS if part not in report and part not in report["errors"]]
    if missing:
        lines += [f"Not run (yet): {', '.join(missing)}.", ""]
    return "\n".join(lines)


def write_report(folder: Path, report: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(folder / "gpu_check.json", report)
    staging = folder / ".gpu_check.md.tmp"
    staging.write_text(markdown(report))
    os.replace(staging, folder / "gpu_check.md")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder of gpu_check.json and gpu_check.md")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: by its name)")
    parser.add_argument("--loader-batch-size", type=int, default=128)
    parser.add_argument("--loader-waves", type=int, default=5,
                        help="batches per loader worker; the first wave is not timed")
    parser.add_argument("--loader-distinct", type=int, default=512, help="distinct images among the JPEGs")
    options = parser.parse_args(argv)
    for name in ("batch_size", "warmup_steps", "rounds", "steps", "loader_batch_size", "loader_distinct"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if options.loader_waves < 2:
        parser.error("--loader-waves must be at least 2")
    if not torch.cuda.is_available():
        fail(PROG, "no CUDA GPU here; this check measures one (an H100, H200 or A100)")

    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:4.0f} s] {message}", flush=True)

    name = torch.cuda.get_device_name()
    cores = len(os.sched_getaffinity(0))
    samples = max(options.loader_waves * cores * options.loader_batch_size, options.batch_size)
    accelerator = Accelerator(mixed_precision="bf16")
    report = {
        "device": {"name": name, "peak_bf16_tflops": options.peak_tflops or peak_tflops(name), "cpu_cores": cores,
                   "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "accelerate": accelerate.__version__},
        "setup": {"preset": PRESET, "image_size": 224, "batch_size": options.batch_size,
                  "precision": "bf16 autocast (Accelerate)", "warmup_steps": options.warmup_steps,
                  "rounds": options.rounds, "steps": options.steps},
        "errors": {},
    }
    out = Path(options.out)
    with tempfile.TemporaryDirectory() as scratch:
        progress(f"{name}; writing {samples} JPEGs of 224 px")
        write_images(Path(scratch), samples, distinct=options.loader_distinct)
        shards = Path(scratch) / "shards"
        batch = next(iter(train_loader(shards, 0, options.batch_size, uint8_pixels=False)))
        bench = Bench(accelerator, {key: value.to(accelerator.device) for key, value in batch.items()},
                      report["device"]["peak_bf16_tflops"], warmup=options.warmup_steps, rounds=options.rounds,
                      steps=options.steps)
        parts = {"precision": lambda: precision(bench), "clip_eager": lambda: clip_step(bench, compiled=False),
                 "teachers": lambda: teachers(bench),
                 "loader": lambda: loader(shards, cores, options.loader_batch_size),
                 "clip_compiled": lambda: clip_step(bench, compiled=True)}
        for part in PARTS:
            progress(f"{TITLES[part]} ...")
            try:
                report[part] = parts[part]()
            except Exception as error:  # one part failing must not lose the others on a lent GPU
                traceback.print_exc()
                report["errors"][part] = first_line(error)
            accelerator.free_memory()
            write_report(out, report)
            for measure, value in rows(report, part) or [("failed", report["errors"].get(part))]:
                progress(f"  {measure}: {value}")
    progress(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
