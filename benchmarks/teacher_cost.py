"""What a teacher costs: step time of PSD with each teacher against CLIP, in one process, interleaved.

    python -m benchmarks.teacher_cost [--preset tiny] [--batch-size 128] [--rounds 6] [--steps 3]

Every method runs train.py's own step (`forward_backward`, clipping, AdamW, the teacher's update) on the same
pre-collated batches of the built-in data, so data loading is not timed. The methods take turns, `--steps` steps
each per round, and each method's time is the median over rounds: a shared, noisy machine slows all of them
alike. The previous-epoch teacher is timed in its second epoch, reading a filled bank.
"""

import argparse
import platform
import statistics
import tempfile
import time

import torch
from accelerate import Accelerator

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.data import ImageTextCollator, load_image_text_dataset
from modeling_psdclip.processing import build_processor
from modeling_psdclip.training.teachers import build_teacher
from train import forward_backward

METHODS = {"clip": {"distill_alpha_max": 0.0}, "psd-previous-epoch": {"distill_teacher": "previous_epoch"},
           "psd-ema": {"distill_teacher": "ema"}}


def batches(config: PSDCLIPConfig, batch_size: int, count: int) -> list[dict]:
    processor = build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)
    data = load_image_text_dataset("synthetic:train", num_samples=batch_size * count,
                                   image_size=config.vision_config.image_size)
    collate = ImageTextCollator(processor, train=True)
    return [collate([data[index] for index in range(start, start + batch_size)])
            for start in range(0, batch_size * count, batch_size)]


class Method:
    """A model, its optimizer and its teacher, stepping through train.py's step."""

    def __init__(self, overrides: dict, preset: str, data: list[dict], accelerator: Accelerator, bank_folder: str):
        torch.manual_seed(0)
        settings = {"distill_alpha_max": 0.5, "distill_schedule": "constant", **overrides}
        self.model = PSDCLIPModel(PSDCLIPConfig.from_preset(preset, **settings))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.teacher = build_teacher(self.model.config, self.model, accelerator, bank_folder, num_pairs=sum(
            len(batch["pair_index"]) for batch in data))
        self.accelerator, self.data = accelerator, data
        if self.teacher is not None:  # fill the bank (epoch 0), then time epoch 1
            self.teacher.start_epoch(0)
            self.run(len(data))
            self.teacher.start_epoch(1)

    def run(self, steps: int) -> float:
        started = time.perf_counter()
        for step in range(steps):
            _, parts = forward_backward(self.accelerator, self.model, [self.data[step % len(self.data)]], self.teacher)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.teacher is not None:
                self.teacher.after_optimizer_step(self.model)
        return (time.perf_counter() - started) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    options = parser.parse_args(argv)

    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    config = PSDCLIPConfig.from_preset(options.preset)
    data = batches(config, options.batch_size, count=options.steps)
    with tempfile.TemporaryDirectory() as bank_folder:
        methods = {name: Method(overrides, options.preset, data, accelerator, bank_folder)
                   for name, overrides in METHODS.items()}
        for method in methods.values():  # warm-up
            method.run(1)
        times = {name: [] for name in methods}
        for _ in range(options.rounds):
            for name, method in methods.items():
                times[name].append(method.run(options.steps))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"{options.preset} preset, batch {options.batch_size}, {device}; median of {options.rounds} rounds "
          f"of {options.steps} steps")
    clip = statistics.median(times["clip"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:20s} {median:7.3f} s/step  {median / clip:5.3f}x CLIP")


if __name__ == "__main__":
    main()
