"""What a study is: its file (checked whole against a declared schema, merged over its `base` chain, at the size
asked for) and the runs it plans. The file format is described in runner.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from modeling_psdclip.data import saved_with_splits
from modeling_psdclip.utils import first_line, read_settings_file, yaml_error_line

from eval.errors import EvalInputError

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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


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
        study = read_settings_file(path)
    except yaml.YAMLError as error:
        raise EvalInputError(f"cannot read study {path}: {yaml_error_line(error)}") from error
    except (OSError, ValueError) as error:
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
    if quick and study == read_study_file(Path(path), False):  # else --quick would silently run the full size
        raise EvalInputError(f"study {path} has no quick section (in it or its base chain), so --quick would run "
                             "the full size: leave out --quick, or add a quick section")
    for key in ("seeds", "methods", "noise", "cells"):
        if not study.get(key):
            raise EvalInputError(f"study {path} needs a non-empty {key!r}")
    bad_seed = next((seed for seed in study["seeds"] if not 0 <= seed < 2 ** 32), None)
    if bad_seed is not None:  # numpy's range, refused before any run rather than when one starts
        raise EvalInputError(f"study {path}: seeds must be in [0, 2**32 - 1], got {bad_seed}")
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


NOISE_OPTIONS = ("p_mismatch", "p_partial", "p_generic")


def synthetic_noise(study: dict, run: Run) -> dict:
    """A synthetic cell's caption-noise options, all three explicit, so that evaluation rebuilds exactly the pairs
    the run trained on whatever train.py's defaults are."""
    return {**dict.fromkeys(NOISE_OPTIONS, 0.0), **study["noise"][run.noise]}


def fine_tunes(study: dict) -> bool:
    return bool(study.get("starting_model") or study.get("pretrain"))


def starting_model_folder(study: dict) -> Path:
    """The model every run fine-tunes: the study's `starting_model`, or the one its `pretrain` options train."""
    return Path(study["starting_model"]) if study.get("starting_model") else \
        Path(study["output"]) / "pretrained" / "model"


def starting_model_ready(study: dict) -> bool:
    """Whether the starting model is saved whole: a given folder's config and weights, or a `pretrain` run's
    metrics.json (written last; a study reported while its starting model trains has none yet)."""
    folder = starting_model_folder(study)
    if not study.get("starting_model"):
        return (folder / "metrics.json").is_file()
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)

