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

A synthetic cell's `world` (a `modeling_psdclip.data.WORLDS` name: `sketch`, `novel_shapes`, ...) trains and
evaluates it in that world; a fine-tuning study whose starting model was trained in another world (`pretrain`'s
`synthetic_world`) also measures each run there, as `old_*`: what fine-tuning forgot. A method `{evaluate: start}`
trains nothing and measures the starting model; `{evaluate: wise_ft | early_stopping, of: METHOD, choose_on:
noisy | clean}` interpolates between the start and METHOD's model (WiSE-FT) or picks one of METHOD's checkpoints
(early stopping), choosing on held-out pairs drawn like the noisy fine-tuning pairs (what a user has) or on the
clean split the study reports (an oracle). `recommended` names the method the report sets against every other.

The parts: `plan` (the file and the runs), `training_runs` (training them), `measures` (evaluating them), this
module (the loop that does each run not done yet) and `report`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from modeling_psdclip.utils import cannot_create_in, write_json_atomically

from eval.errors import EvalInputError

from .measures import EVAL_VERSION, evaluate, evaluate_starting_model, evaluate_without_training
from .plan import fine_tunes, load_study, planned_runs, require_data_folders, starting_model_ready
from .training_runs import check_training_options, launcher_command, prepare_starting_model, train



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
    if launcher is not None:
        launcher_command(launcher)  # a command that is not there fails now, not at the first training
    study["launcher"] = launcher
    runs = planned_runs(study)
    check_training_options(config, study, runs, root)
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



__all__ = ["run_study"]
