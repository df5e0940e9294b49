"""Training a study's runs and its starting model through the training package (in this process, or under a
launcher), and reading back what the training logged."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import yaml

from modeling_psdclip.training.cli import main_in_process

from eval.errors import EvalInputError

from .plan import Run, fine_tunes, starting_model_folder, starting_model_ready, synthetic_noise


class StudyRunFailed(RuntimeError):
    """A training run of the study failed: not the user's input, but a failure (the message names the run's log)."""


DIAGNOSTICS = ("train/teacher_share", "train/teacher_entropy", "train/paired_probability", "train/teacher_agreement",
               "train/loss_soft", "train/logit_multiplier")


def train_options(study: dict, run: Run, folder: Path) -> dict:
    data = {"data": run.data, "val_data": run.data} if run.data else \
        {"train_samples": run.train_samples, "synthetic_world": run.world, **synthetic_noise(study, run)}
    starting = {"init_from": str(starting_model_folder(study))} if fine_tunes(study) else {}
    return {**study["train"], **starting, **study["noise"][run.noise], **study["methods"][run.method], **data,
            "seed": run.seed, "output_dir": str(folder / "model"), "run_dir": str(folder / "run"),
            "report_to": "none", "progress_bar": False}


def train(study: dict, run: Run, folder: Path) -> None:
    """Train one run, continuing its own checkpoints when an earlier study was killed mid-run."""
    run_training(study, train_options(study, run, folder), folder, run.name)


def run_training(study: dict, options: dict, folder: Path, name: str) -> None:
    """Train with `options` through the training package (in this process, or under the study's `launcher`),
    logging to the folder; it resumes from the folder's own checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump(options, sort_keys=False))
    arguments = ["--config", str(config), "--resume", "latest"]
    log = folder / "train.log"
    if study.get("launcher"):
        with log.open("w") as output:
            status = subprocess.run([*shlex.split(study["launcher"]), "-m", "modeling_psdclip.training", *arguments],
                                    stdout=output, stderr=subprocess.STDOUT,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    else:
        status = main_in_process(arguments, log)
    if status != 0:
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        raise StudyRunFailed(f"run {name} failed (exit {status}; log {log}): {last}")


def prepare_starting_model(study: dict, root: Path, progress=print) -> None:
    """Train the study's starting model once with its `pretrain` options, unless it is given as `starting_model`
    (then check that it is there)."""
    if study.get("starting_model"):
        if not starting_model_ready(study):
            raise EvalInputError(f"starting model {study['starting_model']} is not a saved model folder (config.json "
                                 "and weights); train it first (e.g. run the study it comes from)")
        return
    if not study.get("pretrain"):
        return
    folder = root / "pretrained"
    if not (folder / "model" / "metrics.json").is_file():
        progress("training the starting model (pretrain)")
        options = {**study["pretrain"], "output_dir": str(folder / "model"), "run_dir": str(folder / "run"),
                   "report_to": "none", "progress_bar": False}
        run_training(study, options, folder, "pretrain")


def training_record(folder: Path) -> dict:
    """The validation loss curve, the teacher diagnostics over training (curves, and means over the steps that
    distilled), and the training's compute and time, from what the training logged."""
    log = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [[line["step"], line["val/loss"]] for line in log if "val/loss" in line]
    train_lines = [line for line in log if "train/loss" in line]
    # A diagnostic is NaN (JSON NaN) while no row has a teacher: those steps are not part of the distilling run.
    distilling = [line for line in train_lines if line.get("train/distill_alpha", 0) > 0
                  and math.isfinite(line.get("train/teacher_share", math.nan)) and line["train/teacher_share"] > 0]
    trained = json.loads((folder / "model" / "metrics.json").read_text())
    return {"val_loss_curve": curve, "val_loss": curve[-1][1] if curve else None,
            "diagnostics": {name.removeprefix("train/"): mean_of([line.get(name) for line in distilling])
                            for name in DIAGNOSTICS},
            "diagnostic_curves": {name.removeprefix("train/"): [[line["step"], line.get(name)] for line in train_lines]
                                  for name in DIAGNOSTICS},
            "training_flops": trained.get("training_flops"), "train_wall_time_s": trained.get("wall_time_s")}


def mean_of(values: list) -> float | None:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return sum(finite) / len(finite) if finite else None

