"""The PSD-versus-CLIP study: `python -m eval study --config studies/noise.yaml [--quick] [--output DIR]`.

A study is a matrix of training runs: methods (train.py option sets, e.g. CLIP and PSD with each teacher) x cells
(a caption-noise level and a number of training pairs) x seeds, all with the same optimizer steps, so fewer pairs
means more epochs over them (the memorisation end of the data-size axis). Each run is trained by train.py itself,
in a subprocess (its own code path, checkpoints and resume), then evaluated with this package's tasks on the
built-in synthetic splits: zero-shot shape, colour and count on clean test, retrieval on clean val, a linear probe
on shape, zero-shot on the shifted splits, noisy-pair detection on the run's own noisy training pairs, and the
validation loss curve train.py logged. A finished run is never redone: a killed study continues where it stopped.

The study's YAML file holds `output`, `seeds`, `methods` ({name: train options}), `noise` ({name: train options}),
`cells` ([{noise, train_samples}]), `train` (options of every run), `eval` (`num_samples`, `noisy_pairs`),
optionally `launcher` (a command that runs train.py, e.g. "accelerate launch --multi_gpu") and `quick` (overrides
of any of these for `--quick`; `train` and `eval` are merged key by key).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from modeling_psdclip.cli import first_line, write_json_atomically

from .data import CLEAN, load_eval_data
from .errors import EvalInputError
from .linear_probe import linear_probe
from .model import EmbeddingModel
from .noisy_pairs import noisy_pair_detection
from .retrieval import retrieval
from .zeroshot import zero_shot_classification

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
STUDY_KEYS = {"output", "seeds", "methods", "noise", "cells", "train", "eval", "launcher", "quick"}
MERGED_KEYS = ("train", "eval")
ATTRIBUTES = ("shape", "colour", "count")
SHIFTED_SPLITS = ("sketch", "unseen_texture", "unseen_shade")
DIAGNOSTICS = ("train/teacher_share", "train/teacher_entropy", "train/paired_probability", "train/teacher_agreement",
               "train/loss_soft", "train/logit_multiplier")
EVAL_VERSION = 1  # part of each run's eval.json: bump it when evaluation changes, and finished runs are re-evaluated


@dataclass(frozen=True)
class Run:
    method: str
    noise: str
    train_samples: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.noise}-{self.train_samples}-{self.method}-seed{self.seed}"

    @property
    def cell(self) -> str:
        return f"{self.noise} noise, {self.train_samples} pairs"


def load_study(path: str | Path, quick: bool = False) -> dict:
    """The study's settings, with the `quick` overrides applied when asked; EvalInputError names a mistake."""
    try:
        study = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise EvalInputError(f"cannot read study {path}: {first_line(error)}") from error
    if not isinstance(study, dict):
        raise EvalInputError(f"study {path} must be a mapping")
    unknown = set(study) - STUDY_KEYS
    if unknown:
        raise EvalInputError(f"study {path}: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(STUDY_KEYS))})")
    overrides = study.pop("quick", None) or {}
    if quick:
        for key, value in overrides.items():
            study[key] = {**study.get(key, {}), **value} if key in MERGED_KEYS else value
    for key in ("seeds", "methods", "noise", "cells"):
        if not study.get(key):
            raise EvalInputError(f"study {path} needs a non-empty {key!r}")
    for cell in study["cells"]:
        if cell.get("noise") not in study["noise"] or not isinstance(cell.get("train_samples"), int):
            raise EvalInputError(f"study {path}: cell {cell} needs a noise level of 'noise' and an integer "
                                 "train_samples")
    if "clip" not in study["methods"]:
        raise EvalInputError(f"study {path}: the methods need a 'clip' baseline to compare with")
    study.setdefault("output", "outputs/study")
    study.setdefault("train", {})
    study.setdefault("eval", {})
    return study


def planned_runs(study: dict) -> list[Run]:
    return [Run(method, cell["noise"], cell["train_samples"], seed)
            for cell in study["cells"] for seed in study["seeds"] for method in study["methods"]]


def train_options(study: dict, run: Run, folder: Path) -> dict:
    return {**study["train"], **study["noise"][run.noise], **study["methods"][run.method],
            "train_samples": run.train_samples, "seed": run.seed, "output_dir": str(folder / "model"),
            "run_dir": str(folder / "run"), "report_to": "none", "progress_bar": False}


def train(study: dict, run: Run, folder: Path) -> None:
    """Train one run with train.py, continuing its own checkpoints when an earlier study was killed mid-run."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump(train_options(study, run, folder), sort_keys=False))
    launcher = shlex.split(study.get("launcher") or shlex.quote(sys.executable))
    log = folder / "train.log"
    with log.open("w") as output:
        done = subprocess.run([*launcher, str(TRAIN_SCRIPT), "--config", str(config), "--resume", "latest"],
                              stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        raise EvalInputError(f"run {run.name} failed (exit {done.returncode}; log {log}): {last}")


def evaluate(study: dict, run: Run, folder: Path) -> dict:
    """Every metric of one trained run, and what its training logged."""
    settings = {"num_samples": 1000, "noisy_pairs": 2000, "batch_size": 256, **study["eval"]}
    model = EmbeddingModel.from_pretrained(folder / "model", name=run.name, batch_size=settings["batch_size"],
                                           progress=False)
    image_size = model.model.config.vision_config.image_size

    def data(split, attribute="shape", **options):
        options.setdefault("num_samples", settings["num_samples"])
        return load_eval_data(f"synthetic:{split}", label_column=f"label_{attribute}", image_size=image_size,
                              **options)

    test = {attribute: data("test", attribute) for attribute in ATTRIBUTES}
    test_features = model.encode_images(test["shape"].images)
    results = {f"zeroshot_{attribute}": zero_shot_classification(model, test[attribute],
                                                                 image_features=test_features)["top1_accuracy"]
               for attribute in ATTRIBUTES}
    val = data("val")
    found = retrieval(model, val, k=(1,))
    results["retrieval_r1"] = (found["image_to_text_recall@1"] + found["text_to_image_recall@1"]) / 2
    results["linear_probe_shape"] = linear_probe(model, val, test["shape"], seed=run.seed)["top1_accuracy"]
    shifted = {split: zero_shot_classification(model, data(split))["top1_accuracy"] for split in SHIFTED_SPLITS}
    results["shifted"] = shifted
    results["shifted_accuracy"] = sum(shifted.values()) / len(shifted)
    noise = {key: value for key, value in study["noise"][run.noise].items() if key.startswith("p_") and value}
    noisy_train = data("train", num_samples=settings["noisy_pairs"], seed=run.seed, **noise)
    has_noise = any(label != CLEAN for label in noisy_train.noise)
    detection, _ = noisy_pair_detection(model, noisy_train, seed=run.seed)
    results["noisy_pair_auroc"] = detection.get("auroc") if has_noise else None

    log = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    results["val_loss_curve"] = [[line["step"], line["val/loss"]] for line in log if "val/loss" in line]
    results["val_loss"] = results["val_loss_curve"][-1][1] if results["val_loss_curve"] else None
    last_train = [line for line in log if "train/loss" in line][-1]
    results["diagnostics"] = {name.removeprefix("train/"): last_train.get(name) for name in DIAGNOSTICS}
    trained = json.loads((folder / "model" / "metrics.json").read_text())
    results["training_flops"] = trained.get("training_flops")
    results["train_wall_time_s"] = trained.get("wall_time_s")
    return results


def run_study(config: str | Path, quick: bool = False, output: str | Path | None = None,
              progress=print) -> tuple[dict, list[dict]]:
    """Train and evaluate every run not finished yet; returns the study settings and every run's results."""
    study = load_study(config, quick)
    root = Path(output or study["output"])
    if not TRAIN_SCRIPT.is_file():
        raise EvalInputError(f"the study trains with {TRAIN_SCRIPT}, which is not there (run it from a checkout)")
    runs = planned_runs(study)
    results = []
    for number, run in enumerate(runs, 1):
        folder = root / "runs" / run.name
        evaluated = folder / "eval.json"
        record = json.loads(evaluated.read_text()) if evaluated.is_file() else None
        if record is None or record.get("version") != EVAL_VERSION:
            started = time.perf_counter()
            if not (folder / "model" / "metrics.json").is_file():
                progress(f"[{number}/{len(runs)}] training {run.name}")
                train(study, run, folder)
            record = {"version": EVAL_VERSION, "run": asdict(run), **evaluate(study, run, folder)}
            write_json_atomically(evaluated, record)
            progress(f"[{number}/{len(runs)}] {run.name} done in {time.perf_counter() - started:.0f} s")
        results.append(record)
    return study, results


__all__ = ["Run", "evaluate", "load_study", "planned_runs", "run_study"]
