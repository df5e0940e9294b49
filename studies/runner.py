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
- A data cell ({noise, data}) trains on the `train` split of a folder built by
  `python -m modeling_psdclip.data.openmoji` (validating on its `validation` split); its noise level only names the
  cell and adds train options. It is evaluated with zero-shot group and subgroup and retrieval on the folder's
  `test` split (emoji unseen in training), and noisy-pair detection on its `train` split, whose `noise` column marks
  the mismatched captions.

The study's YAML file holds `output`, `seeds`, `methods` ({name: train options}), `noise` ({name: train options}),
`cells`, `train` (options of every run), `eval` (`num_samples`, `noisy_pairs`: synthetic sizes; `batch_size`;
`linear_probe`, `shifted`: whether synthetic cells run those tasks, default true), optionally `pretrain` and `quick`
(overrides of any of these for `--quick`; `train`, `eval` and `pretrain` are merged key by key); STUDY_SCHEMA
declares them. A command that runs each training in a subprocess is the command line's `--launcher`, never a key of
a file someone else may have written.

`pretrain` (train options) makes the fine-tuning protocol of noisy-correspondence learning: a starting model is
trained once with those options (cached in the study's output as `pretrained/`, resumable like any run), and every
run fine-tunes it (`init_from`). With it, a synthetic cell's noise level is the share of the fine-tuning pairs
whose caption is another pair's (`p_mismatch`), and evaluation adds Recall@1 and @5 in each direction on the
clean validation split. `starting_model` (a model folder, e.g. another study's `pretrained/model` or a converted
CLIP) is fine-tuned instead of training one with `pretrain`.

`base` (a study file, relative to this one) starts from that study's settings at the same size: this file's keys
(its `quick` ones too, with `--quick`) replace the base's, except `train`, `eval` and `pretrain`, which are merged key
by key, and a key set to null is removed; so a follow-up study names only what it changes (its methods, cells and
output). Like `output`, `starting_model` is a path from the folder the study runs in.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from modeling_psdclip.utils import cannot_create_in, first_line, write_json_atomically
from modeling_psdclip.data import saved_with_splits
from modeling_psdclip.training.cli import main_in_process

from eval.data import CLEAN, EvalData, load_eval_data
from eval.errors import EvalInputError
from eval.linear_probe import linear_probe
from eval.model import EmbeddingModel
from eval.noisy_pairs import noisy_pair_detection
from eval.retrieval import retrieval
from eval.zeroshot import zero_shot_classification

# What a study file may hold, checked whole (its `quick` overrides too) before anything runs: each key and the type of
# its value. A type; [T]: a list of T; {str: T}: a mapping of names to T; a dict of keys: a mapping of those keys
# only. A key of such a mapping set to null is removed when files are merged.
CELL_SCHEMA = {"noise": str, "train_samples": int, "data": str, "world": str}
EVAL_SCHEMA = {"num_samples": int, "noisy_pairs": int, "batch_size": int, "linear_probe": bool, "shifted": bool}
STUDY_SCHEMA = {"output": str, "seeds": [int], "methods": {str: dict}, "noise": {str: dict}, "cells": [CELL_SCHEMA],
                "train": dict, "eval": EVAL_SCHEMA, "pretrain": dict, "starting_model": str, "quick": dict,
                "base": str, "recommended": str}
STUDY_KEYS = set(STUDY_SCHEMA)
MERGED_KEYS = ("train", "eval", "pretrain")
ATTRIBUTES = ("shape", "colour", "count")
SHIFTED_SPLITS = ("sketch", "unseen_texture", "unseen_shade")
DATA_LABELS = ("group", "subgroup")  # the class columns of a folder built by modeling_psdclip.data.openmoji
DIAGNOSTICS = ("train/teacher_share", "train/teacher_entropy", "train/paired_probability", "train/teacher_agreement",
               "train/loss_soft", "train/logit_multiplier")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
EVAL_VERSION = 3  # part of each run's eval.json: bump it when evaluation changes, and finished runs are re-evaluated


@dataclass(frozen=True)
class Run:
    method: str
    noise: str
    train_samples: int | None
    seed: int
    data: str | None = None  # a data cell's folder; None for the built-in synthetic data
    world: str = "standard"  # the synthetic world a synthetic cell trains on and is evaluated in

    @property
    def name(self) -> str:
        data = Path(self.data).name if self.data else self.train_samples
        world = f"{self.world}-" if self.world != "standard" else ""
        return f"{self.noise}-{world}{data}-{self.method}-seed{self.seed}"

    @property
    def cell(self) -> str:
        world = f" of {self.world}" if self.world != "standard" else ""
        return f"{self.noise} noise, {Path(self.data).name if self.data else f'{self.train_samples} pairs{world}'}"


def schema_problem(value, schema, where: str) -> str | None:
    """What in `value` does not fit `schema` (see STUDY_SCHEMA), as one line naming the key; None when it fits."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} must be a list, got {value!r}"
        return next(filter(None, (schema_problem(item, schema[0], f"{where}[{index}]")
                                  for index, item in enumerate(value))), None)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} must be a mapping, got {value!r}"
        if str in schema:
            return next(filter(None, (schema_problem(item, schema[str], key_of(where, key))
                                      for key, item in value.items())), None)
        unknown = next((key for key in value if key not in schema), None)
        if unknown is not None:
            return f"unknown key {key_of(where, unknown)} (keys: {', '.join(schema)})"
        return next(filter(None, (schema_problem(item, schema[key], key_of(where, key))
                                  for key, item in value.items() if item is not None)), None)
    # bool is an int to Python, not to a study; an int is a float
    accepted = (int, float) if schema is float else schema
    if isinstance(value, bool) != (schema is bool) or not isinstance(value, accepted):
        return f"{where} must be {schema.__name__ if schema is not dict else 'a mapping'}, got {value!r}"
    return None


def key_of(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def read_study_file(path: Path, quick: bool, extending: tuple[Path, ...] = ()) -> dict:
    """A study file's settings at the size asked for, on top of its `base` chain's at that size: each file's own
    `quick` applies to that file first, so a file's keys always beat its base's, quick or not."""
    try:
        study = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise EvalInputError(f"cannot read study {path}: {first_line(error)}") from error
    if not isinstance(study, dict):
        raise EvalInputError(f"study {path} must be a mapping")
    problem = schema_problem(study, STUDY_SCHEMA, "")
    overrides = study.pop("quick", None) or {}
    if not problem and ("base" in overrides or "quick" in overrides):
        problem = "quick holds the keys it changes, not base or quick"
    problem = problem or schema_problem(overrides, STUDY_SCHEMA, "quick")
    if problem:
        raise EvalInputError(f"study {path}: {problem}")
    if quick:
        study = merged_study(study, overrides)
    if "base" not in study:
        return {key: value for key, value in study.items() if value is not None}
    base = (path.parent / str(study.pop("base"))).resolve()
    if base in extending or base == path.resolve():
        raise EvalInputError(f"study {path}: its base {base} extends it in turn")
    return merged_study(read_study_file(base, quick, (*extending, path.resolve())), study)


def merged_study(study: dict, changes: dict) -> dict:
    """`study` with `changes`: `train`, `eval` and `pretrain` merged key by key, any other key replaced, and a key
    set to null removed (e.g. `pretrain: null` fine-tunes nothing)."""
    merged = dict(study)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif key in MERGED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_study(path: str | Path, quick: bool = False) -> dict:
    """The study's settings, with the `quick` overrides applied when asked; EvalInputError names a mistake."""
    study = read_study_file(Path(path), quick)
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
    for name, method in study["methods"].items():
        check_evaluated_method(path, study, name, method)
    if study.get("recommended", "clip") not in study["methods"]:
        raise EvalInputError(f"study {path}: the recommended method {study['recommended']!r} is not one of its methods")
    names = [run.name for run in planned_runs(study)]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:  # runs share their folder by name, so a second would take the first one's results
        raise EvalInputError(f"study {path}: run {repeated} is planned twice (a repeated seed or cell, or two data "
                             "folders of the same name)")
    study.setdefault("output", "outputs/study")
    study.setdefault("train", {})
    study.setdefault("eval", {})
    return study


# Methods that train nothing, and their keys.
EVALUATED = {"start": set(), "wise_ft": {"of", "choose_on"}, "early_stopping": {"of", "choose_on"}}
CHOICE_DATA = ("noisy", "clean")


def check_evaluated_method(path, study: dict, name: str, method) -> None:
    """A method that trains nothing (`evaluate: start` or `evaluate: wise_ft` with `of` and `choose_on`) names
    nothing else, and only on a study that fine-tunes."""
    if not isinstance(method, dict) or "evaluate" not in method:
        return
    kind = method["evaluate"]
    if kind not in EVALUATED or set(method) != {"evaluate", *EVALUATED[kind]}:
        raise EvalInputError(f"study {path}: method {name!r} must be {{evaluate: start}} or {{evaluate: wise_ft or "
                             "early_stopping, of: METHOD, choose_on: noisy or clean}}")
    if not fine_tunes(study):
        raise EvalInputError(f"study {path}: method {name!r} needs a starting model (pretrain or starting_model)")
    if kind != "start" and ("evaluate" in study["methods"].get(method["of"], {"evaluate": None})
                            or method["choose_on"] not in CHOICE_DATA):
        raise EvalInputError(f"study {path}: method {name!r} builds on {method['of']!r}, which must be a trained "
                             f"method of the study, and chooses on one of {', '.join(CHOICE_DATA)}")


def planned_runs(study: dict) -> list[Run]:
    return [Run(method, cell["noise"], cell.get("train_samples"), seed, cell.get("data"), cell.get("world", "standard"))
            for cell in study["cells"] for seed in study["seeds"] for method in study["methods"]]


def require_data_folders(runs: list[Run]) -> None:
    """Fail before any training when a data cell's folder has not been built."""
    for data in dict.fromkeys(run.data for run in runs if run.data):
        if not saved_with_splits(data):
            raise EvalInputError(f"data folder {data} is not built: python -m modeling_psdclip.data.openmoji {data} "
                                 "--p-mismatch P (the study file's header gives P)")


def synthetic_noise(study: dict, run: Run) -> dict:
    """A synthetic cell's caption-noise options, all three explicit, so that evaluation rebuilds exactly the pairs
    the run trained on whatever train.py's defaults are."""
    return {"p_mismatch": 0.0, "p_partial": 0.0, "p_generic": 0.0, **study["noise"][run.noise]}


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
        raise EvalInputError(f"run {name} failed (exit {status}; log {log}): {last}")


def fine_tunes(study: dict) -> bool:
    return bool(study.get("starting_model") or study.get("pretrain"))


def starting_model_folder(study: dict) -> Path:
    """The model every run fine-tunes: the study's `starting_model`, or the one its `pretrain` options train."""
    return Path(study["starting_model"]) if study.get("starting_model") else \
        Path(study["output"]) / "pretrained" / "model"


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


def starting_model_ready(study: dict) -> bool:
    """Whether the starting model is saved whole: a given folder's config and weights, or a `pretrain` run's
    metrics.json (written last; a study reported while its starting model trains has none yet)."""
    folder = starting_model_folder(study)
    if not study.get("starting_model"):
        return (folder / "metrics.json").is_file()
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def evaluate(study: dict, run: Run, folder: Path) -> dict:
    """Every metric of one trained run, and what its training logged."""
    return {**measure(study, run, folder / "model", run.name), **training_record(folder)}


def evaluate_starting_model(study: dict, run: Run, root: Path) -> dict:
    """The starting model's measures (on `run`'s cell and seed), cached in the study's output for that very model
    (its path and the times its files were written) and evaluation version."""
    folder = starting_model_folder(study)
    stamp = {"version": EVAL_VERSION, "model": str(folder.resolve()),
             "written_ns": max(path.stat().st_mtime_ns for path in folder.iterdir())}
    evaluated = root / "pretrained" / "eval.json"
    cached = json.loads(evaluated.read_text()) if evaluated.is_file() else {}
    if any(cached.get(key) != value for key, value in stamp.items()):
        evaluated.parent.mkdir(parents=True, exist_ok=True)
        cached = {**stamp, **measure(study, run, folder, "starting model")}
        write_json_atomically(evaluated, cached)
    return {key: value for key, value in cached.items() if key not in stamp}


def eval_settings(study: dict) -> dict:
    return {"num_samples": 1000, "noisy_pairs": 2000, "batch_size": 256, "linear_probe": True, "shifted": True,
            **study["eval"]}


def load_model(study: dict, model_folder: Path, name: str) -> EmbeddingModel:
    return EmbeddingModel.from_pretrained(model_folder, name=name, batch_size=eval_settings(study)["batch_size"],
                                          progress=False)


def measure(study: dict, run: Run, model_folder: Path, name: str) -> dict:
    """The evaluation tasks of `run`'s cell on the model in `model_folder`."""
    return measure_model(study, run, load_model(study, model_folder, name))


def measure_model(study: dict, run: Run, model: EmbeddingModel) -> dict:
    return evaluate_on_folder(model, run) if run.data else \
        evaluate_on_synthetic(model, study, run, eval_settings(study))


def synthetic_split(model: EmbeddingModel, settings: dict, split: str, attribute: str = "shape", **options) -> EvalData:
    """A built-in split at the model's input size, `num_samples` of it unless `options` say otherwise."""
    options.setdefault("num_samples", settings["num_samples"])
    return load_eval_data(f"synthetic:{split}", label_column=f"label_{attribute}",
                          image_size=model.model.config.vision_config.image_size, **options)


def old_world(study: dict) -> str:
    """The world the starting model was trained in (its `pretrain` options'; a given starting model's is not known
    and taken as the standard one)."""
    return (study.get("pretrain") or {}).get("synthetic_world", "standard")


def evaluate_on_synthetic(model: EmbeddingModel, study: dict, run: Run, settings: dict) -> dict:
    def data(split, attribute="shape", **options):
        return synthetic_split(model, settings, split, attribute, **{"world": run.world, **options})

    test = {attribute: data("test", attribute) for attribute in ATTRIBUTES}
    results = zero_shot_accuracies(model, test)
    val = data("val")
    results.update(retrieval_recalls(model, val))
    if fine_tunes(study) and old_world(study) != run.world:
        # What fine-tuning in a new world forgets of the old one, measured the same way.
        old = {attribute: data("test", attribute, world=old_world(study)) for attribute in ATTRIBUTES}
        results.update({f"old_{key}": value for key, value in [*zero_shot_accuracies(model, old).items(),
                        *retrieval_recalls(model, data("val", world=old_world(study))).items()]})
    if settings["linear_probe"]:
        results["linear_probe_shape"] = linear_probe(model, val, test["shape"], seed=run.seed)["top1_accuracy"]
    if settings["shifted"]:
        shifted = {split: zero_shot_classification(model, data(split))["top1_accuracy"] for split in SHIFTED_SPLITS}
        results["shifted"] = shifted
        results["shifted_accuracy"] = sum(shifted.values()) / len(shifted)
    # Exactly the pairs the run trained on (train.py's generator arguments: which scene a mismatched caption
    # describes depends on the number of pairs), a seeded sample of `noisy_pairs` of them.
    noise = {key: value for key, value in synthetic_noise(study, run).items() if key.startswith("p_")}
    trained_pairs = data("train", num_samples=run.train_samples, seed=run.seed, **noise)
    results["noisy_pair_auroc"] = noisy_pair_auroc(model, trained_pairs.sample(settings["noisy_pairs"], run.seed),
                                                   run.seed)
    return results


def evaluate_on_folder(model: EmbeddingModel, run: Run) -> dict:
    test = {label: load_eval_data(f"{run.data}:test", label_column=label) for label in DATA_LABELS}
    results = zero_shot_accuracies(model, test)
    results.update(retrieval_recalls(model, test[DATA_LABELS[0]]))
    results["noisy_pair_auroc"] = noisy_pair_auroc(model, load_eval_data(f"{run.data}:train"), run.seed)
    return results


def zero_shot_accuracies(model: EmbeddingModel, labelled: dict[str, EvalData]) -> dict:
    """`zeroshot_<label>` top-1 accuracy for each labelling of the same images, encoded once."""
    image_features = model.encode_images(next(iter(labelled.values())).images)
    return {f"zeroshot_{label}": zero_shot_classification(model, data, image_features=image_features)["top1_accuracy"]
            for label, data in labelled.items()}


def retrieval_recalls(model: EmbeddingModel, data: EvalData) -> dict:
    """Recall@1 and @5 each way (identical caption texts as one item) and `retrieval_r1`, the mean of the R@1s."""
    found = retrieval(model, data, k=(1, 5))
    recalls = {f"{short}_r{k}": found[f"{direction}_recall@{k}"] for k in (1, 5)
               for short, direction in (("i2t", "image_to_text"), ("t2i", "text_to_image"))}
    return {"retrieval_r1": (recalls["i2t_r1"] + recalls["t2i_r1"]) / 2, **recalls}


def noisy_pair_auroc(model: EmbeddingModel, data: EvalData, seed: int) -> float | None:
    """None when no pair is labelled noisy: there is nothing to detect."""
    if data.noise is None or all(label == CLEAN for label in data.noise):
        return None
    return noisy_pair_detection(model, data, seed=seed)[0].get("auroc")


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


# WiSE-FT's coefficients: 0 is the starting model, 1 the fine-tuned one.
WISE_FT_COEFFICIENTS = tuple(step / 10 for step in range(11))
NOISY_VALIDATION_SEED = 10_000  # apart from every run's seed: pairs no run trained on


def evaluate_without_training(study: dict, run: Run, root: Path) -> dict:
    """The measures of a method that trains nothing (its `evaluate`): the starting model itself, or WiSE-FT."""
    method = study["methods"][run.method]
    if method["evaluate"] == "start":
        return measure(study, run, starting_model_folder(study), run.name)
    return {"wise_ft": wise_ft, "early_stopping": early_stopping}[method["evaluate"]](study, run, root, method)


def fine_tuned_model(study: dict, run: Run, root: Path, method: dict) -> tuple[EmbeddingModel, Path]:
    """The `of` method's model of `run`'s cell and seed, and its run folder."""
    fine_tuned_run = Run(method["of"], run.noise, run.train_samples, run.seed, run.data, run.world)
    folder = root / "runs" / fine_tuned_run.name
    if not (folder / "model" / "metrics.json").is_file():
        raise EvalInputError(f"run {run.name} needs {fine_tuned_run.name}, which has not finished: list the method "
                             f"{method['of']!r} before {run.method!r}")
    return load_model(study, folder / "model", run.name), folder


def choose_weights(study: dict, run: Run, model: EmbeddingModel, candidates: dict, choose_on: str) -> tuple:
    """Load into `model` the candidate weights (`{key: function giving a state dict}`) with the best mean retrieval
    R@1 on `choose_on` data: `noisy`, held-out pairs drawn like the fine-tuning pairs (noise included: what a user
    has), or `clean`, the held-out split the study reports (an oracle). Returns the key chosen (the first of equal
    scores, so list the candidates nearest the start first) and every candidate's score."""
    settings = eval_settings(study)
    if choose_on == "clean":
        choice_data = synthetic_split(model, settings, "val", world=run.world)
    else:
        noise = {key: value for key, value in synthetic_noise(study, run).items() if key.startswith("p_")}
        choice_data = synthetic_split(model, settings, "train", world=run.world, seed=NOISY_VALIDATION_SEED + run.seed,
                                      **noise)
    scores = {}
    for key, weights in candidates.items():
        model.model.load_state_dict(weights())
        scores[key] = retrieval_recalls(model, choice_data)["retrieval_r1"]
    chosen = max(scores, key=scores.get)
    model.model.load_state_dict(candidates[chosen]())
    return chosen, [[key, score] for key, score in scores.items()]


def wise_ft(study: dict, run: Run, root: Path, method: dict) -> dict:
    """WiSE-FT (Wortsman et al., CVPR 2022): the weights `(1 - c) start + c fine-tuned`, with the fine-tuned model
    the `of` method's run of the same cell and seed, and c the one of `WISE_FT_COEFFICIENTS` that `choose_weights`
    picks on the method's `choose_on` data."""
    model, _ = fine_tuned_model(study, run, root, method)
    start = load_model(study, starting_model_folder(study), "starting model").model.state_dict()
    fine_tuned = {name: tensor.clone() for name, tensor in model.model.state_dict().items()}
    candidates = {coefficient: functools.partial(interpolated, start, fine_tuned, coefficient)
                  for coefficient in WISE_FT_COEFFICIENTS}
    chosen, scores = choose_weights(study, run, model, candidates, method["choose_on"])
    return {**measure_model(study, run, model), "wise_ft_coefficient": chosen, "choice_scores": scores}


def interpolated(start: dict, end: dict, coefficient: float) -> dict:
    return {name: torch.lerp(start[name].float(), tensor.float(), coefficient).to(tensor.dtype)
            for name, tensor in end.items()}


def early_stopping(study: dict, run: Run, root: Path, method: dict) -> dict:
    """Early stopping: of the `of` method's run, the checkpoint (or final model) that `choose_weights` picks on the
    method's `choose_on` data. The `of` method must keep its checkpoints (`checkpoint_every`, `keep_checkpoints`)."""
    model, folder = fine_tuned_model(study, run, root, method)
    final = {name: tensor.clone() for name, tensor in model.model.state_dict().items()}
    checkpoints = sorted((folder / "run" / "checkpoints").glob("step-*"))
    if not checkpoints:
        raise EvalInputError(f"run {run.name} chooses among the checkpoints of {folder}, which kept none: give the "
                             f"method {method['of']!r} checkpoint_every and keep_checkpoints")
    candidates = {int(path.name.removeprefix("step-")): functools.partial(load_file, path / "model.safetensors")
                  for path in checkpoints}
    candidates.setdefault(json.loads((folder / "model" / "metrics.json").read_text())["steps"], lambda: final)
    chosen, scores = choose_weights(study, run, model, candidates, method["choose_on"])
    return {**measure_model(study, run, model), "stopped_at_step": chosen, "choice_scores": scores}


def mean_of(values: list) -> float | None:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return sum(finite) / len(finite) if finite else None


def run_study(config: str | Path, quick: bool = False, output: str | Path | None = None,
              progress=print, finished_only: bool = False, launcher: str | None = None) -> tuple[dict, list[dict]]:
    """Train and evaluate every run not finished yet; returns the study settings and every run's results.
    `finished_only`: train and evaluate nothing, and return the runs already evaluated (a study still running).
    `launcher`: a command that runs each training in a subprocess (`LAUNCHER -m modeling_psdclip.training`); a
    command line option, never a study file's key, since study files are shared like configs."""
    study = load_study(config, quick)
    root = Path(output or study["output"])
    unusable = f"is a {'link' if root.is_symlink() else 'file'}" if (root.is_symlink() or root.exists()) and \
        not root.is_dir() else cannot_create_in(root)
    if unusable:
        raise EvalInputError(f"study output {root} cannot hold the runs: {unusable}")
    study["launcher"] = launcher
    runs = planned_runs(study)
    require_data_folders(runs)
    study["output"] = str(root)  # where the runs find the starting model
    if not finished_only:
        prepare_starting_model(study, root, progress)
    if fine_tunes(study) and starting_model_ready(study):
        study["starting_model_results"] = evaluate_starting_model(study, runs[0], root)
    results = []
    for number, run in enumerate(runs, 1):
        folder = root / "runs" / run.name
        evaluated = folder / "eval.json"
        record = json.loads(evaluated.read_text()) if evaluated.is_file() else None
        if finished_only and (record is None or record.get("version") != EVAL_VERSION):
            continue
        if record is None or record.get("version") != EVAL_VERSION:
            started = time.perf_counter()
            if "evaluate" in study["methods"][run.method]:
                progress(f"[{number}/{len(runs)}] evaluating {run.name} (no training)")
                measured = evaluate_without_training(study, run, root)
            else:
                if not (folder / "model" / "metrics.json").is_file():
                    progress(f"[{number}/{len(runs)}] training {run.name}")
                    train(study, run, folder)
                measured = evaluate(study, run, folder)
            record = {"version": EVAL_VERSION, "run": asdict(run), **measured}
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomically(evaluated, record)
            progress(f"[{number}/{len(runs)}] {run.name} done in {time.perf_counter() - started:.0f} s")
        results.append(record)
    if finished_only and not results:
        raise EvalInputError(f"no run of the study in {root} has finished yet: report it once one has")
    return study, results


__all__ = ["Run", "evaluate", "load_study", "planned_runs", "run_study"]
