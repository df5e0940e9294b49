"""Training a study's runs and its starting model through the training package (in this process, or under a
launcher), and reading back what the training logged."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import yaml

from modeling_psdclip.training.cli import main_in_process
from modeling_psdclip.training.options import OptionError, TrainingOptions, check_ranges, read_yaml

from eval.errors import EvalInputError

from .plan import NOISE_OPTIONS, Run, fine_tunes, starting_model_folder, starting_model_ready, synthetic_noise


class StudyRunFailed(RuntimeError):
    """A training run of the study failed: not the user's input, but a failure (the message names the run's log)."""


DIAGNOSTICS = ("train/teacher_share", "train/teacher_entropy", "train/paired_probability", "train/teacher_agreement",
               "train/loss_soft", "train/logit_multiplier")


# Exit statuses of a training stopped by SIGINT or SIGTERM (128 + the signal, as a shell reports it).
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)
# Set on the command line of every training (train.yaml is its --config), so a file's value would be ignored.
COMMAND_LINE_OPTIONS = ("config", "resume")


class StudyStopped(Exception):
    """A training of the study was stopped by a signal (Ctrl-C): a rerun continues where it stopped."""

    def __init__(self, status: int):
        super().__init__(f"stopped (exit {status})")
        self.status = status


def folder_options(folder: Path) -> dict:
    """The options the study sets for any training in `folder`, whatever its file says."""
    return {"output_dir": str(folder / "model"), "run_dir": str(folder / "run"), "report_to": "none",
            "progress_bar": False}


def runner_options(study: dict, run: Run, folder: Path) -> dict:
    """The options the study sets itself for a run: its folders, seed, data, and starting model."""
    data = {"data": run.data, "val_data": run.data} if run.data else \
        {"train_samples": run.train_samples, "synthetic_world": run.world, **synthetic_noise(study, run)}
    starting = {"init_from": str(starting_model_folder(study))} if fine_tunes(study) else {}
    return {**starting, **data, "seed": run.seed, **folder_options(folder)}


def train_options(study: dict, run: Run, folder: Path) -> dict:
    return {**study["train"], **study["noise"][run.noise], **study["methods"][run.method],
            **runner_options(study, run, folder)}


def check_training_options(path, study: dict, runs: list[Run], root: Path) -> None:
    """Before anything trains, EvalInputError for an option the study sets itself (the file's value would be
    ignored) and for what train.py would refuse when a run starts (hours into a study, when the bad option is the
    last method's)."""
    trainings = []  # (which training, the file's sections of its options, what the study sets, all its options)
    if study.get("pretrain") and not study.get("starting_model"):
        owned = folder_options(root / "pretrained")
        trainings.append(("pretrain", [("pretrain", study["pretrain"])], owned, {**study["pretrain"], **owned}))
    for run in runs:
        if "evaluate" in study["methods"][run.method]:  # a method that trains nothing has no train options
            continue
        folder = root / "runs" / run.name
        noise = {key: value for key, value in study["noise"][run.noise].items() if key not in NOISE_OPTIONS}
        sections = [("train", study["train"]), (f"noise {run.noise!r}", noise),
                    (f"method {run.method!r}", study["methods"][run.method])]
        trainings.append((f"run {run.name}", sections, runner_options(study, run, folder),
                          train_options(study, run, folder)))
    for training, sections, owned, options in trainings:
        for section, given in sections:
            key = next((key for key in given if str(key).replace("-", "_") in (*owned, *COMMAND_LINE_OPTIONS)), None)
            if key is not None:
                raise EvalInputError(f"study {path}: {section} sets {key}, which the study sets itself ({training}): "
                                     "leave it out")
        problem = training_option_problem(options)
        if problem:
            raise EvalInputError(f"study {path}: {training}: {problem}")


def training_option_problem(options: dict) -> str | None:
    """What train.py would refuse in `options` (read as its --config file), in one line; None when nothing.
    Whether the starting model exists is left to the run: a pretrain makes it first."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "options.yaml"
        config.write_text(yaml.safe_dump({key: value for key, value in options.items() if key != "init_from"}))
        try:
            check_ranges(TrainingOptions(**read_yaml(str(config))))
        except OptionError as error:
            return str(error).replace("--config: ", "").replace(f" in {config}", "")
    return None


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
            status = subprocess.run([*launcher_command(study["launcher"]), "-m", "modeling_psdclip.training",
                                     *arguments], stdout=output, stderr=subprocess.STDOUT,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    else:
        status = main_in_process(arguments, log)
    if status in STOPPED or status < 0:  # Ctrl-C (or SIGTERM): the checkpoints are kept, not a failed run
        raise StudyStopped(status)
    if status != 0:
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        raise StudyRunFailed(f"run {name} failed (exit {status}; log {log}): {last}")


def launcher_command(launcher: str) -> list[str]:
    """`--launcher` as a command line, EvalInputError when it names no command this machine has (checked before
    anything runs, where subprocess would fail with a FileNotFoundError traceback at the first training)."""
    try:
        command = shlex.split(launcher)
    except ValueError as error:  # an unclosed quote
        raise EvalInputError(f"--launcher {launcher!r}: {error}") from None
    if not command or shutil.which(command[0]) is None:
        raise EvalInputError(f"--launcher {launcher!r}: command {command[0] if command else ''!r} not found")
    return command


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
        run_training(study, {**study["pretrain"], **folder_options(folder)}, folder, "pretrain")


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

