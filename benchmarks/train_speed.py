"""Training speed, in one process, interleaved: `python -m benchmarks.train_speed [--memory]`.

Compared, on the same model and data (tiny preset, batch 128 by default):
  bare        a bare loop on fixed tensors: forward with the loss, backward, AdamW (the compute limit)
  train.py    train.py's own step (`TrainingStep`, clipping, AdamW) reading batches from a DataLoader as
              train.py's (uint8 crops, standardised where the model runs)
  trainer     transformers' Trainer (`PSDTrainer`, the package's collator) on the same data
and, on pre-collated batches (so only the step is timed), CLIP against PSD with each teacher (the previous-epoch
teacher timed in its second epoch, reading a filled bank). The methods take turns, `--steps` steps each per round;
each one's time is its median and its best over the rounds, and ratios are taken between those of one run: a
shared, noisy machine slows every method alike. `--memory` adds the peak memory per sample of a ViT-B/32 training
step at 224 px with and without gradient checkpointing (CUDA's peak allocation on a GPU; the growth of the peak
resident set, in a fresh process per setting, on a CPU).
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from accelerate import Accelerator
from transformers import TrainerCallback, TrainingArguments

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.data import (
    EpochSampler, ImageTextCollator, load_image_text_dataset, model_inputs, with_standardized_pixels,
)
from modeling_psdclip.modeling_psdclip import TrainingProgress
from modeling_psdclip.processing import build_processor
from modeling_psdclip.training.optim import adamw
from modeling_psdclip.training.step import TrainingStep
from modeling_psdclip.training.trainer import PSDTrainer

TEACHERS = {"clip": {"distill_alpha_max": 0.0}, "psd previous_epoch": {"distill_teacher": "previous_epoch"},
            "psd ema": {"distill_teacher": "ema"}}


def new_model(preset: str, **settings) -> PSDCLIPModel:
    torch.manual_seed(0)
    return PSDCLIPModel(PSDCLIPConfig.from_preset(preset, **{"distill_alpha_max": 0.5,
                                                             "distill_schedule": "constant", **settings}))


def synchronize(device: torch.device) -> None:
    # CUDA runs kernels after the Python that launches them returns: a clock read without waiting times the launch.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepLoop:
    """train.py's step (a `TrainingStep`) from an endless iterator of batches (a DataLoader or pre-collated
    tensors)."""

    def __init__(self, step: TrainingStep, batches):
        self.step, self.batches = step, batches
        self.optimizer = adamw(step.model.parameters(), step.accelerator.device, lr=1e-4)

    def run(self, steps: int) -> float:
        synchronize(self.step.accelerator.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step.forward_backward([next(self.batches)], TrainingProgress())  # the cost is alpha's and step's alike
            torch.nn.utils.clip_grad_norm_(self.step.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step.after_optimizer_step()
        synchronize(self.step.accelerator.device)
        return (time.perf_counter() - started) / steps


def endless(iterable):
    while True:
        yield from iterable


def teacher_loops(make_model, batches: list[dict], accelerator: Accelerator, folder: str, num_pairs: int
                  ) -> dict[str, StepLoop]:
    """train.py's step for CLIP and PSD with each teacher (`TEACHERS`), cycling through `batches`.

    `make_model(**settings)` builds each model. A teacher that teaches from its second epoch (the previous-epoch
    bank) has run its first, so that the timed steps read a filled bank.
    """
    loops = {}
    for name, settings in TEACHERS.items():
        step = TrainingStep.build(make_model(**settings), accelerator, bank_folder=f"{folder}/{name}",
                                  num_pairs=num_pairs)
        loop = StepLoop(step, endless(batches))
        if step.first_taught_epoch:
            step.start_epoch(0)
            loop.run(len(batches))
            step.start_epoch(step.first_taught_epoch)
        loops[name] = loop
    return loops


class BareLoop:
    def __init__(self, model, batch: dict, device: torch.device):
        self.model, self.batch, self.device = model, model_inputs(batch), device
        self.optimizer = adamw(model.parameters(), device, lr=1e-4)

    def run(self, steps: int) -> float:
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.model(**self.batch, return_loss=True).loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return (time.perf_counter() - started) / steps


class StepTimes(TrainerCallback):
    """Time between consecutive step ends: the whole step, reading and collating its batch included (Trainer
    fetches a step's batch before its step-begin event)."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.ends, self.ends[1:])]


class TrainerLoop:
    """PSDTrainer over the dataset, timed from one step's end to the next (the first step, which builds the
    DataLoader iterator, is not timed)."""

    def __init__(self, model, dataset, collator, batch_size: int, workers: int, folder: str):
        self.model, self.dataset, self.collator = model, dataset, collator
        self.batch_size, self.workers, self.folder = batch_size, workers, folder

    def run(self, steps: int) -> float:
        timer = StepTimes()
        args = TrainingArguments(output_dir=self.folder, max_steps=steps + 1, per_device_train_batch_size=self.batch_size,
                                 dataloader_num_workers=self.workers, report_to=[], save_strategy="no",
                                 disable_tqdm=True, logging_strategy="no", learning_rate=1e-4, use_cpu=not
                                 torch.cuda.is_available())
        PSDTrainer(model=self.model, args=args, train_dataset=self.dataset, data_collator=self.collator,
                   callbacks=[timer]).train()
        return statistics.mean(timer.times)


def timed_rounds(loops: dict, rounds: int, steps: int, warmup: int = 1) -> dict:
    for loop in loops.values():
        loop.run(warmup)
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            times[name].append(loop.run(steps))
    return times


def print_table(title: str, times: dict, batch_size: int, reference: str) -> None:
    print(f"\n{title}")
    median_ref, best_ref = statistics.median(times[reference]), min(times[reference])
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(f"  {name:20s} median {median:6.3f} s/step ({batch_size / median:6.1f} samples/s, "
              f"{median_ref / median:5.3f}x {reference} speed)   best {best:6.3f} s/step "
              f"({best_ref / best:5.3f}x {reference} speed)")


def memory_per_sample(gradient_checkpointing: bool, batch_size: int) -> float:
    """Peak memory of one ViT-B/32 training step at 224 px, per sample, in MiB (run in a fresh process)."""
    code = f"""
import json, resource, torch
from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
model = PSDCLIPModel(PSDCLIPConfig.from_preset("vit-b-32", distill_alpha_max=0.0))
if {gradient_checkpointing}:
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={{"use_reentrant": False}})
device = "cuda" if torch.cuda.is_available() else "cpu"
model.to(device).train()
batch = {{"pixel_values": torch.randn({batch_size}, 3, 224, 224, device=device),
          "input_ids": torch.randint(0, 49407, ({batch_size}, 77), device=device)}}
model(**batch, return_loss=True).loss.backward()  # warm-up: allocator caches, gradients allocated
model.zero_grad(set_to_none=False)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
else:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model(**batch, return_loss=True).loss.backward()
after = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps((after - before) / {batch_size} / 2**20))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of train.py and Trainer")
    parser.add_argument("--memory", action="store_true", help="also ViT-B/32 memory per sample")
    parser.add_argument("--memory-batch-size", type=int, default=8)
    options = parser.parse_args(argv)

    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    config = PSDCLIPConfig.from_preset(options.preset)
    processor = build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)
    dataset = load_image_text_dataset("synthetic:train", num_samples=options.batch_size * 8,
                                      image_size=config.vision_config.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, sampler=EpochSampler(len(dataset)),
                                         drop_last=True, collate_fn=ImageTextCollator(processor, uint8_pixels=True),
                                         num_workers=options.num_workers, persistent_workers=options.num_workers > 0)
    train_py_batches = (with_standardized_pixels(batch, processor.image_processor) for batch in endless(loader))
    collated = [batch for _, batch in zip(range(options.steps), train_py_batches)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"{options.preset} preset, batch {options.batch_size}, {device}; {options.rounds} rounds of "
          f"{options.steps} steps per method")

    with tempfile.TemporaryDirectory() as folder:
        loops = {"bare": BareLoop(new_model(options.preset, distill_alpha_max=0.0), collated[0], accelerator.device),
                 "train.py": StepLoop(TrainingStep(new_model(options.preset, distill_alpha_max=0.0),
                                                   accelerator=accelerator), train_py_batches),
                 "trainer": TrainerLoop(new_model(options.preset, distill_alpha_max=0.0), dataset,
                                        ImageTextCollator(processor), options.batch_size, options.num_workers, folder)}
        print_table("CLIP steps (train.py and Trainer read and collate their batches)",
                    timed_rounds(loops, options.rounds, options.steps), options.batch_size, "bare")

        teachers = teacher_loops(lambda **settings: new_model(options.preset, **settings), collated, accelerator,
                                 folder, num_pairs=len(dataset))
        print_table("Teachers (pre-collated batches)", timed_rounds(teachers, options.rounds, options.steps),
                    options.batch_size, "clip")

    if options.memory:
        print(f"\nViT-B/32, 224 px, peak memory per sample of a training step (batch {options.memory_batch_size}):")
        for checkpointing in (False, True):
            mib = memory_per_sample(checkpointing, options.memory_batch_size)
            print(f"  gradient checkpointing {'on ' if checkpointing else 'off'}: {mib:7.1f} MiB")


if __name__ == "__main__":
    main()
