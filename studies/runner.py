"""The PSD-versus-CLIP study: `python -m studies --config studies/noise.yaml [--quick] [--output DIR]`.

A study is a matrix of training runs: methods (train.py option sets, e.g. CLIP and PSD with each teacher) x cells
(a caption-noise level and a number of training pairs, or a data folder) x seeds, all with the same optimizer
steps, so fewer pairs means more epochs over them (the memorisation end of the data-size axis). Each run is
trained by the training package's own command (`modeling_psdclip.training`: train.py's code path, checkpoints and
resume) in this process, then evaluated with eval's tasks, and the validation loss curve and diagnostics train.py
logged are collected. A finished run is never redone: a killed study continues where it stopped.

- A synthetic cell ({noise, train_samples}) trains on the built-in scenes with the noise level's options and is
  evaluated on the built-in splits: zero-shot shape, colour and count on clean test, retrieval on clean val, a
  linear probe on shape, zero-shot on the shifted splits, noisy-pair detection on the run's own noisy pairs.
- A data cell ({noise, data}) trains on the `train` split of a folder built by `python -m eval build-openmoji`
  (validating on its `validation` split); its noise level only names the cell and adds train options. It is
  evaluated with zero-shot group and subgroup and retrieval on the folder's `test` split (emoji unseen in
  training), and noisy-pair detection on its `train` split, whose `noise` column marks the mismatched captions.

The study's YAML file holds `output`, `seeds`, `methods` ({name: train options}), `noise` ({name: train options}),
`cells`, `train` (options of every run), `eval` (`num_samples`, `noisy_pairs`: synthetic sizes; `batch_size`),
optionally `launcher` (a command that runs the training in a subprocess as `LAUNCHER -m modeling_psdclip.training`,
e.g. "accelerate launch --multi_gpu") and `quick` (overrides
of any of these for `--quick`; `train` and `eval` are merged key by key).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from modeling_psdclip.utils import first_line, write_json_atomically
from modeling_psdclip.data import saved_with_splits
from modeling_psdclip.training.cli import main_in_process

from eval.data import CLEAN, EvalData, load_eval_data
from eval.errors import EvalInputError
from eval.linear_probe import linear_probe
from eval.model import EmbeddingModel
from eval.noisy_pairs import noisy_pair_detection
from eval.retrieval import retrieval
from eval.zeroshot import zero_shot_classification

STUDY_KEYS = {"output", "seeds", "methods", "noise", "cells", "train", "eval", "launcher", "quick"}
MERGED_KEYS = ("train", "eval")
ATTRIBUTES = ("shape", "colour", "count")
SHIFTED_SPLITS = ("sketch", "unseen_texture", "unseen_shade")
DATA_LABELS = ("group", "subgroup")  # the class columns of a build-openmoji folder
DIAGNOSTICS = ("train/teacher_share", "train/teacher_entropy", "train/paired_probability", "train/teacher_agreement",
               "train/loss_soft", "train/logit_multiplier")
EVAL_VERSION = 1  # part of each run's eval.json: bump it when evaluation changes, and finished runs are re-evaluated


@dataclass(frozen=True)
class Run:
    method: str
    noise: str
    train_samples: int | None
    seed: int
    data: str | None = None  # a data cell's folder; None for the built-in synthetic data

    @property
    def name(self) -> str:
        data = Path(self.data).name if self.data else self.train_samples
        return f"{self.noise}-{data}-{self.method}-seed{self.seed}"

    @property
    def cell(self) -> str:
        return f"{self.noise} noise, {Path(self.data).name if self.data else f'{self.train_samples} pairs'}"


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
        synthetic, folder = isinstance(cell.get("train_samples"), int), isinstance(cell.get("data"), str)
        if cell.get("noise") not in study["noise"] or synthetic == folder:
            raise EvalInputError(f"study {path}: cell {cell} needs a noise level of 'noise' and either an integer "
                                 "train_samples (synthetic data) or a data folder")
    if "clip" not in study["methods"]:
        raise EvalInputError(f"study {path}: the methods need a 'clip' baseline to compare with")
    names = [run.name for run in planned_runs(study)]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:  # runs share their folder by name, so a second would take the first one's results
        raise EvalInputError(f"study {path}: run {repeated} is planned twice (a repeated seed or cell, or two data "
                             "folders of the same name)")
    study.setdefault("output", "outputs/study")
    study.setdefault("train", {})
    study.setdefault("eval", {})
    return study


def planned_runs(study: dict) -> list[Run]:
    return [Run(method, cell["noise"], cell.get("train_samples"), seed, cell.get("data"))
            for cell in study["cells"] for seed in study["seeds"] for method in study["methods"]]


def require_data_folders(runs: list[Run]) -> None:
    """Fail before any training when a data cell's folder has not been built."""
    for data in dict.fromkeys(run.data for run in runs if run.data):
        if not saved_with_splits(data):
            raise EvalInputError(f"data folder {data} is not built: python -m eval build-openmoji {data} "
                                 "--p-mismatch P (the study file's header gives P)")


def train_options(study: dict, run: Run, folder: Path) -> dict:
    data = {"data": run.data, "val_data": run.data} if run.data else \
        {"train_samples": run.train_samples}
    return {**study["train"], **study["noise"][run.noise], **study["methods"][run.method], **data,
            "seed": run.seed, "output_dir": str(folder / "model"), "run_dir": str(folder / "run"),
            "report_to": "none", "progress_bar": False}


def train(study: dict, run: Run, folder: Path) -> None:
    """Train one run with the training package (in this process, or under the study's `launcher`), continuing its
    own checkpoints when an earlier study was killed mid-run."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump(train_options(study, run, folder), sort_keys=False))
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
        raise EvalInputError(f"run {run.name} failed (exit {status}; log {log}): {last}")


def evaluate(study: dict, run: Run, folder: Path) -> dict:
    """Every metric of one trained run, and what its training logged."""
    settings = {"num_samples": 1000, "noisy_pairs": 2000, "batch_size": 256, **study["eval"]}
    model = EmbeddingModel.from_pretrained(folder / "model", name=run.name, batch_size=settings["batch_size"],
                                           progress=False)
    measured = evaluate_on_folder(model, run) if run.data else evaluate_on_synthetic(model, study, run, settings)
    return {**measured, **training_record(folder)}


def evaluate_on_synthetic(model: EmbeddingModel, study: dict, run: Run, settings: dict) -> dict:
    image_size = model.model.config.vision_config.image_size

    def data(split, attribute="shape", **options):
        options.setdefault("num_samples", settings["num_samples"])
        return load_eval_data(f"synthetic:{split}", label_column=f"label_{attribute}", image_size=image_size,
                              **options)

    test = {attribute: data("test", attribute) for attribute in ATTRIBUTES}
    results = zero_shot_accuracies(model, test)
    val = data("val")
    results["retrieval_r1"] = retrieval_r1(model, val)
    results["linear_probe_shape"] = linear_probe(model, val, test["shape"], seed=run.seed)["top1_accuracy"]
    shifted = {split: zero_shot_classification(model, data(split))["top1_accuracy"] for split in SHIFTED_SPLITS}
    results["shifted"] = shifted
    results["shifted_accuracy"] = sum(shifted.values()) / len(shifted)
    noise = {key: value for key, value in study["noise"][run.noise].items() if key.startswith("p_") and value}
    noisy_train = data("train", num_samples=settings["noisy_pairs"], seed=run.seed, **noise)
    results["noisy_pair_auroc"] = noisy_pair_auroc(model, noisy_train, run.seed)
    return results


def evaluate_on_folder(model: EmbeddingModel, run: Run) -> dict:
    test = {label: load_eval_data(f"{run.data}:test", label_column=label) for label in DATA_LABELS}
    results = zero_shot_accuracies(model, test)
    results["retrieval_r1"] = retrieval_r1(model, test[DATA_LABELS[0]])
    results["noisy_pair_auroc"] = noisy_pair_auroc(model, load_eval_data(f"{run.data}:train"), run.seed)
    return results


def zero_shot_accuracies(model: EmbeddingModel, labelled: dict[str, EvalData]) -> dict:
    """`zeroshot_<label>` top-1 accuracy for each labelling of the same images, encoded once."""
    image_features = model.encode_images(next(iter(labelled.values())).images)
    return {f"zeroshot_{label}": zero_shot_classification(model, data, image_features=image_features)["top1_accuracy"]
            for label, data in labelled.items()}


def retrieval_r1(model: EmbeddingModel, data: EvalData) -> float:
    found = retrieval(model, data, k=(1,))
    return (found["image_to_text_recall@1"] + found["text_to_image_recall@1"]) / 2


def noisy_pair_auroc(model: EmbeddingModel, data: EvalData, seed: int) -> float | None:
    """None when no pair is labelled noisy: there is nothing to detect."""
    if data.noise is None or all(label == CLEAN for label in data.noise):
        return None
    return noisy_pair_detection(model, data, seed=seed)[0].get("auroc")


def training_record(folder: Path) -> dict:
    """The validation loss curve and last diagnostics the training logged, and its compute and time."""
    log = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [[line["step"], line["val/loss"]] for line in log if "val/loss" in line]
    last_train = [line for line in log if "train/loss" in line][-1]
    trained = json.loads((folder / "model" / "metrics.json").read_text())
    return {"val_loss_curve": curve, "val_loss": curve[-1][1] if curve else None,
            "diagnostics": {name.removeprefix("train/"): last_train.get(name) for name in DIAGNOSTICS},
            "training_flops": trained.get("training_flops"), "train_wall_time_s": trained.get("wall_time_s")}


def run_study(config: str | Path, quick: bool = False, output: str | Path | None = None,
              progress=print) -> tuple[dict, list[dict]]:
    """Train and evaluate every run not finished yet; returns the study settings and every run's results."""
    study = load_study(config, quick)
    root = Path(output or study["output"])
    runs = planned_runs(study)
    require_data_folders(runs)
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
