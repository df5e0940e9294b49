"""The options of `train.py`: one dataclass, read from a YAML file and/or command-line flags (flags win).

Every field is one flag (`batch_size` -> `--batch-size`) and one YAML key (either spelling). A user mistake (an
unknown key, a value of the wrong type or out of range) ends the program with one line naming the option and exit
status 2, as argparse does for its own errors. This module imports nothing heavy (no torch, transformers or
Accelerate), so that `--help` and a mistyped option answer at once.
"""

import argparse
import ast
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..model_folder import ModelFolderError, check_model_folder_target, invalid_repo_id
from ..utils import OneLineErrorParser, cannot_create_in, fail, read_settings_file, yaml_error_line


def configuration_choices() -> dict[str, tuple[str, ...]]:
    """The names of `PRESETS` and the `DISTILL_*` choices as configuration_psdclip.py defines them,
    read from its source: importing it loads transformers and torch (seconds), which the options must not wait for.
    (That file is copied beside saved weights as remote code, so it cannot import them from a lighter module.)"""
    tree = ast.parse((Path(__file__).resolve().parents[1] / "configuration_psdclip.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "PRESETS":
                found[name] = tuple(key.value for key in node.value.keys)
            elif name in ("DISTILL_SCHEDULES", "DISTILL_TARGETS", "DISTILL_TEACHERS"):
                found[name] = tuple(ast.literal_eval(node.value))
    return found


CHOICES = configuration_choices()
PRESET_NAMES, DISTILL_SCHEDULES, DISTILL_TARGETS, DISTILL_TEACHERS = (
    CHOICES[name] for name in ("PRESETS", "DISTILL_SCHEDULES", "DISTILL_TARGETS", "DISTILL_TEACHERS"))


def option(default, help: str, **argparse_kwargs):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainingOptions:
    # What to train.
    config: str | None = option(None, "YAML file of options; command-line flags override it")
    preset: str = option("tiny", "architecture of a model trained from scratch", choices=sorted(PRESET_NAMES))
    init_from: str | None = option(None, "fine-tune this saved model folder (PSD-CLIP or a stock CLIPModel)")
    distill_alpha_max: float | None = option(None, "final teacher weight in [0, 1]; 0 trains plain CLIP "
                                                   "(default: the preset's or checkpoint's value, 0.5 for new models)")
    distill_fraction: float | None = option(None, "fraction of rows given soft targets each step (default: model's)")
    distill_schedule: str | None = option(None, "alpha schedule (default: model's)", choices=DISTILL_SCHEDULES)
    distill_temperature: float | None = option(None, "teacher softmax temperature (default: model's)")
    distill_teacher: str | None = option(None, "teacher of the soft targets: the previous epoch's stored embeddings "
                                               "(no extra compute), a momentum copy, ema (one more forward; "
                                               "works with --streaming), or uniform: label smoothing with the same "
                                               "alpha schedule and rows, the control arm (default: model's)",
                                         choices=DISTILL_TEACHERS)
    distill_ema_decay: float | None = option(None, "decay of the ema teacher's weight average, in [0, 1) "
                                                   "(default: model's)")
    distill_target: str | None = option(None, "what the teacher does to a drawn row: mix its distribution into the "
                                              "target by alpha, mix_by_doubt (alpha times 1 - its probability of the "
                                              "pair), or reweight the one-hot loss by 1 - alpha + alpha times that "
                                              "probability (default: model's)", choices=DISTILL_TARGETS)
    # Data.
    data: str = option("synthetic", "training data: 'synthetic' (built-in captioned scenes), an imagefolder, "
                                    "CSV/TSV/JSONL, parquet/arrow, save_to_disk or webdataset path, or a `datasets` name; "
                                    "SOURCE:SPLIT names a split (default: train, or the only one)")
    val_data: str | None = option(None, "validation data in the same forms; a save_to_disk folder of several splits "
                                        "gives its 'validation' split (default: a clean synthetic split when --data "
                                        "is synthetic, else none)")
    image_column: str | None = option(None, "image column of --data/--val-data (default: found by name)")
    caption_column: str | None = option(None, "caption column of --data/--val-data (default: found by name)")
    streaming: bool = option(False, "stream --data instead of loading it (needs --max-steps)")
    train_samples: int = option(25600, "size of the built-in synthetic training split (made once, then cached)")
    val_samples: int = option(512, "size of the built-in synthetic validation split")
    p_mismatch: float = option(0.2, "synthetic data: probability a caption describes another scene")
    p_partial: float = option(0.2, "synthetic data: probability one attribute of a caption is wrong")
    p_generic: float = option(0.1, "synthetic data: probability a caption is generic (fits many scenes)")
    synthetic_world: str = option("standard", "synthetic data: the world every split draws from (standard, or "
                                              "another style or set of shapes, to fine-tune on a new distribution)")
    image_size: int | None = option(None, "input resolution in pixels (default: the model's)")
    # modeling_psdclip.data.records.MAX_IMAGE_PIXELS, written out: importing the data package loads torch, which the
    # options must not wait for (tests/test_layout.py checks the two agree).
    max_image_pixels: int = option(50_000_000, "skip images that would decode to more pixels than this (JPEGs much "
                                               "larger than the input decode at 1/2 to 1/8 scale first), counted as "
                                               "image_too_large")
    num_workers: int = option(0, "DataLoader worker processes per training process")
    # Optimisation.
    batch_size: int = option(128, "global batch per optimizer step, over all processes and accumulation steps")
    accum_steps: int = option(1, "split each process's batch into this many micro-batches (feature caching: "
                                 "same loss and gradients as the full batch, less memory)")
    epochs: int = option(4, "passes over the training data (ignored when --max-steps is set)")
    max_steps: int = option(0, "optimizer steps to train; 0: --epochs worth")
    lr: float = option(1e-3, "peak learning rate")
    warmup_steps: int = option(50, "linear warm-up steps before the cosine decay")
    weight_decay: float = option(0.1, "AdamW weight decay (never on biases, norms, embeddings, logit scale)")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.98, "AdamW beta2")
    adam_eps: float = option(1e-6, "AdamW epsilon")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this; 0 disables (DeepSpeed: its gradient_clipping)")
    mixed_precision: str = option("no", "autocast dtype (Accelerate)", choices=("no", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the model")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    seed: int = option(0, "seed of everything: init, data order, augmentation, distilled-row draw")
    max_nonfinite_steps: int = option(5, "stop after this many non-finite losses in a row (each one is skipped)")
    # Output.
    output_dir: str = option("outputs/psdclip-tiny", "the Hub-ready model folder written at the end")
    run_dir: str | None = option(None, "checkpoints, logs and TensorBoard files (default: runs/<output-dir name>)")
    checkpoint_every: int = option(100, "save a resumable checkpoint every N steps; 0 disables")
    keep_checkpoints: int = option(2, "keep the last K checkpoints")
    resume: str | None = option(None, "'latest' (newest complete checkpoint in --run-dir, or a fresh start if "
                                      "none) or a checkpoint folder; from an earlier one, the later checkpoints are "
                                      "moved, not deleted, to a superseded-after-step-* folder beside them")
    log_every: int = option(10, "log training metrics every N steps")
    eval_every: int = option(160, "validate every N steps (and at the end); 0: only at the end")
    report_to: str = option("tensorboard", "Accelerate trackers, comma-separated ('none' for the JSONL log only)")
    peak_tflops: float = option(0.0, "the device's peak TFLOP/s; when set, MFU is logged next to TFLOP/s")
    push_to_hub: str | None = option(None, "after saving, upload the model folder to this Hub repository id")
    export_format: str | None = option(None, "format of the model folder: clip (transformers' CLIPModel, loads "
                                             "without remote code; the distillation settings are in its card) or "
                                             "psdclip (PSDCLIPConfig and its remote code) (default: clip with "
                                             "--push-to-hub, else psdclip)", choices=("clip", "psdclip"))
    progress_bar: bool = option(True, "show a progress bar")


POSITIVE = ("batch_size", "accum_steps", "max_image_pixels", "train_samples", "val_samples", "log_every",
            "keep_checkpoints", "max_nonfinite_steps", "lr", "adam_eps", "epochs", "distill_temperature")
NON_NEGATIVE = ("max_steps", "warmup_steps", "weight_decay", "max_grad_norm", "checkpoint_every", "eval_every",
                "num_workers", "peak_tflops")
PROBABILITIES = ("distill_alpha_max", "distill_fraction", "p_mismatch", "p_partial", "p_generic")
# Decays, in [0, 1): at 1 an average never moves (AdamW refuses such betas).
DECAYS = ("adam_beta1", "adam_beta2", "distill_ema_decay")
KNOWN_TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio", "swanlab")


class OptionError(ValueError):
    """A bad option value; the message names the option."""


def tracker_names(report_to: str) -> list[str]:
    """The trackers `--report-to` names (comma-separated); none for "none"."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    return [] if names == ["none"] else names


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_type(option_field: dataclasses.Field) -> type:
    """The non-None type of a field annotated `T` or `T | None`."""
    types = [t for t in typing.get_args(option_field.type) or (option_field.type,) if t is not type(None)]
    return types[0]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=prog, description="Pre-train or fine-tune PSD-CLIP (run it with "
                                "`accelerate launch` to use several GPUs or nodes).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for option_field in dataclasses.fields(TrainingOptions):
        kind = value_type(option_field)
        kwargs = {"help": option_field.metadata["help"], "default": option_field.default}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = option_field.name.upper()
            if "choices" in option_field.metadata:
                kwargs["choices"] = option_field.metadata["choices"]
                kwargs.pop("metavar")
        parser.add_argument(flag(option_field.name), dest=option_field.name, **kwargs)
    return parser


def read_yaml(path: str) -> dict:
    """Options from a YAML mapping, keys in either spelling, values converted to the option's type."""
    try:
        loaded = read_settings_file(path)
    except OSError as error:
        raise OptionError(f"--config: cannot read {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise OptionError(f"--config: {path} is not valid YAML: {yaml_error_line(error)}") from error
    except ValueError as error:  # not a regular file, too large, not UTF-8
        raise OptionError(f"--config: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise OptionError(f"--config: {path} must hold a mapping of option names to values")
    fields = {f.name: f for f in dataclasses.fields(TrainingOptions)}
    values = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in fields or name == "config":
            raise OptionError(f"--config: unknown option {key!r} in {path}")
        if name in values:  # the same option in both spellings
            raise OptionError(f"--config: {path} gives {flag(name)} twice")
        kind = value_type(fields[name])
        if value is None and type(None) not in typing.get_args(fields[name].type):
            raise OptionError(f"{flag(name)}: expected {kind.__name__} in {path}, got an empty value")
        if value is not None:
            acceptable = (int, float) if kind is float else kind
            if not isinstance(value, acceptable) or (kind is not bool and isinstance(value, bool)):
                raise OptionError(f"{flag(name)}: expected {kind.__name__} in {path}, got {value!r}")
            value = kind(value)
            choices = fields[name].metadata.get("choices")
            if choices and value not in choices:
                raise OptionError(f"{flag(name)}: must be one of {', '.join(choices)} in {path}, got {value!r}")
        values[name] = value
    return values


def check_ranges(options: TrainingOptions) -> None:
    """Raise OptionError naming the first option whose value is out of range."""
    for option_field in dataclasses.fields(options):
        value = getattr(options, option_field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{flag(option_field.name)} must be a finite number, got {value}")
        # An empty path is the current folder (`--run-dir ""` would write the run there), an empty name names nothing.
        if isinstance(value, str) and not value.strip():
            raise OptionError(f"{flag(option_field.name)} must not be empty")
    for name in POSITIVE:
        value = getattr(options, name)
        if value is not None and not value > 0:
            raise OptionError(f"{flag(name)} must be positive, got {value}")
    for name in NON_NEGATIVE:
        value = getattr(options, name)
        if not value >= 0:
            raise OptionError(f"{flag(name)} must not be negative, got {value}")
    for name in PROBABILITIES:
        value = getattr(options, name)
        if value is not None and not 0 <= value <= 1:
            raise OptionError(f"{flag(name)} must be in [0, 1], got {value}")
    for name in DECAYS:
        value = getattr(options, name)
        if value is not None and not 0 <= value < 1:
            raise OptionError(f"{flag(name)} must be in [0, 1), got {value}")
    if options.batch_size < 2:
        raise OptionError(f"--batch-size must be at least 2, got {options.batch_size}: the contrastive loss "
                          "compares each pair with the other pairs of its global batch")
    if not options.p_mismatch + options.p_partial + options.p_generic <= 1:
        raise OptionError("--p-mismatch, --p-partial and --p-generic must add up to at most 1")
    if options.image_size is not None and options.image_size <= 0:
        raise OptionError(f"--image-size must be positive, got {options.image_size}")
    if options.streaming and not options.max_steps:
        raise OptionError("--streaming needs --max-steps: a stream has no length to count epochs in")
    if options.streaming and options.data == "synthetic":
        raise OptionError("--streaming applies to user --data; the built-in data is generated on disk")
    if options.init_from and not Path(options.init_from).is_dir():
        raise OptionError(f"--init-from: no model folder at {options.init_from}")
    if options.resume not in (None, "latest") and not Path(options.resume).is_dir():
        raise OptionError(f"--resume: no checkpoint folder at {options.resume} (use 'latest' or a folder)")
    problem = options.push_to_hub is not None and invalid_repo_id(options.push_to_hub)
    if problem:
        raise OptionError(f"--push-to-hub: {problem}")
    unknown = [name for name in tracker_names(options.report_to) if name not in (*KNOWN_TRACKERS, "none", "all")]
    if unknown:
        raise OptionError(f"--report-to: unknown tracker {unknown[0]!r} (one of none, all, {', '.join(KNOWN_TRACKERS)})")


def check_output_dir(options: TrainingOptions) -> None:
    """Raise OptionError unless the model folder can be written at the end without destroying anything."""
    try:
        check_model_folder_target(options.output_dir)
    except ModelFolderError as error:
        raise OptionError(f"--output-dir: {error}") from None
    output, run = Path(options.output_dir).resolve(), Path(options.run_dir).resolve()
    if output == run or output in run.parents or run in output.parents:
        raise OptionError(f"--output-dir {options.output_dir} and --run-dir {options.run_dir} must be separate "
                          "folders, neither inside the other")


def check_run_dir(options: TrainingOptions) -> None:
    """Raise OptionError unless the run folder is a folder (or can be made one) that can be written in."""
    run = Path(options.run_dir)
    if (run.is_symlink() or run.exists()) and not run.is_dir():
        raise OptionError(f"--run-dir {options.run_dir} is a {'link' if run.is_symlink() else 'file'}, not a folder")
    reason = cannot_create_in(run)
    if reason:
        raise OptionError(f"--run-dir: cannot write the run's checkpoints and logs to {options.run_dir}: {reason}")


def parse_options(argv: list[str] | None = None, prog: str = "train.py") -> TrainingOptions:
    """Defaults, then the `--config` YAML file, then flags; exits with status 2 and one line on a bad value."""
    parser = build_parser(prog)
    config_path = parser.parse_args(argv).config
    try:
        if config_path:
            parser.set_defaults(**read_yaml(config_path))
        options = TrainingOptions(**vars(parser.parse_args(argv)))
        if options.run_dir is None:
            options.run_dir = str(Path("runs") / Path(options.output_dir).name)
        if options.export_format is None:
            options.export_format = "clip" if options.push_to_hub else "psdclip"
        check_ranges(options)
        check_output_dir(options)
        check_run_dir(options)
    except OptionError as error:
        fail(prog, str(error))
    return options
