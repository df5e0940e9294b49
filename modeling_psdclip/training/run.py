"""A training run: its state, set-up, resume, loop and save (`python train.py`; options in options.py).

The run writes resumable checkpoints, `metrics.jsonl` and TensorBoard files to `--run-dir`, and at the end a
Hub-ready model folder (weights, remote code, processor, model card, metrics.json) to `--output-dir`
(`--export-format clip`, the default with `--push-to-hub`, writes it as transformers' CLIPModel, which loads
without remote code). The step itself (forward, backward, the teacher) is `TrainingStep` (step.py).
"""

import dataclasses
import itertools
import json
import math
import pickle
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin, set_seed
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoProcessor, get_cosine_schedule_with_warmup

# Through the package, which registers "psdclip" with the Auto classes (AutoProcessor may need AutoConfig).
from .. import PSDCLIPConfig, PSDCLIPModel
from ..data import (
    SKIP_REASONS, DataError, EpochSampler, ImageTextCollator, caption_noise, load_image_text_dataset,
    saved_with_splits, with_standardized_pixels,
)
from ..export import save_clip_folder
from ..model_folder import (
    HubError, ModelFolderError, pickle_weights_note, push_folder_to_hub, refused_pickle, save_model_folder,
)
from ..processing import build_processor
from ..utils import fail, first_line, write_json_atomically
from .card_fields import training_card_fields
from .checkpoints import CheckpointError, CheckpointManager, is_complete, read_state, restore
from .optim import adamw, parameter_groups, training_flops_per_sample
from .options import OptionError, TrainingOptions, flag, tracker_names
from .run_lock import hold_run_dir
from .step import TrainingStep, feature_caching_unsupported, validate
from .stops import STOPS, describe_stop, leave_interrupts_to_the_main_process, sigterm_interrupts
from .teachers import active_teacher_class

logger = get_logger("train")


class TrainState:
    """Where training is, saved in every checkpoint as JSON (`CheckpointManager.save`)."""

    def __init__(self):
        self.step = 0  # optimizer steps taken (a skipped non-finite step counts: the schedule moves on)
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches this process has read in the current epoch
        self.samples_seen = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.skipped_records = Counter()  # bad records dropped by the collator, per reason, all processes

    def state_dict(self) -> dict:
        return {**vars(self), "skipped_records": dict(self.skipped_records)}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
        self.skipped_records = Counter(state["skipped_records"])


class JsonlLog:
    """One JSON object per line, appended by the main process; a resumed run drops the lines it will redo."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def restart_from(self, step: int) -> None:
        if not self.enabled:
            return
        kept = []
        if step > 0 and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if self._step_of(line) <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept))

    @staticmethod
    def _step_of(line: str) -> float:
        """The line's step; infinity (dropped, as a line to redo) for a line torn by a kill mid-write."""
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return math.inf

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


class TimeEstimate:
    """Says once, early in a run, how long its training will take: the progress bar's ETA, but printed where
    it stays on screen and in a captured log. Timed from the end of the first steps, which warm up and compile.

    Kept rather than the bar's own rate (`format_dict`), for exactness: tqdm's smoothed rate still weighs the first
    steps (a 3 s first step then 30 ms steps: 5x the real total at step 12), and a bar that is not shown keeps none.
    """

    def __init__(self, steps_left: int, enabled: bool, warmup_steps: int = 2, timed_steps: int = 10):
        self.steps_left, self.enabled = steps_left, enabled and steps_left > warmup_steps + timed_steps
        self.warmup_steps, self.timed_steps = warmup_steps, timed_steps
        self.started = self.timed_from = time.perf_counter()

    def after_step(self, steps_this_run: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if steps_this_run == self.warmup_steps:
            self.timed_from = now
        elif steps_this_run == self.warmup_steps + self.timed_steps:
            per_step = (now - self.timed_from) / self.timed_steps
            total = now - self.started + per_step * (self.steps_left - steps_this_run)
            tqdm.write(f"estimated training time: {total / 60:.1f} min for {self.steps_left} steps "
                       f"({per_step:.2f} s/step), then a final validation and the save", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Model and data


def build_model_and_processor(options):
    """A new model from `--preset` or the one in `--init-from`, with the distillation options applied."""
    model, processor = model_and_processor_to_start_from(options)
    if options.distill_teacher is not None and model.config.distill_alpha_max == 0:
        logger.warning(f"--distill-teacher {options.distill_teacher}: the teacher's final weight is 0 (the model's "
                       "distill_alpha_max), so nothing is distilled; pass --distill-alpha-max to distil",
                       main_process_only=True)
    return model, processor


def model_and_processor_to_start_from(options):
    """The model and processor `build_model_and_processor` starts from; OptionError when they cannot train."""
    overrides = {name: getattr(options, name) for name in
                 ("distill_alpha_max", "distill_fraction", "distill_schedule", "distill_temperature",
                  "distill_teacher", "distill_ema_decay", "distill_target")
                 if getattr(options, name) is not None}
    overrides["distill_seed"] = options.seed
    if options.init_from is None:
        vision = {"image_size": options.image_size} if options.image_size else {}
        config = PSDCLIPConfig.from_preset(options.preset, vision_config=vision, **overrides)
        model = PSDCLIPModel(config)
        processor = build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)
        return model, processor
    try:
        model_type = PSDCLIPConfig.get_config_dict(options.init_from)[0].get("model_type")
        if model_type not in ("psdclip", "clip"):
            raise OptionError(f"--init-from: {options.init_from} holds a {model_type!r} model, not a PSD-CLIP or "
                              "CLIP one")
        note = pickle_weights_note(options.init_from)
        if note:
            logger.warning(note, main_process_only=True)
        config = PSDCLIPConfig.from_pretrained(options.init_from, **overrides)
        model = PSDCLIPModel.from_pretrained(options.init_from, config=config)
    except OptionError:
        raise
    except pickle.UnpicklingError:
        raise OptionError(f"--init-from: {refused_pickle(options.init_from)}") from None
    except (OSError, ValueError, StrictDataclassError, SafetensorError) as error:
        raise OptionError(f"--init-from: cannot load a model from {options.init_from}: {first_line(error)}")
    if options.image_size and options.image_size != config.vision_config.image_size:
        raise OptionError(f"--image-size: the model in {options.init_from} takes "
                          f"{config.vision_config.image_size} px images, got {options.image_size}")
    try:
        processor = AutoProcessor.from_pretrained(options.init_from)
    except (OSError, ValueError):  # A bare weights folder: CLIP's shipped tokenizer and image processing.
        processor = build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)
    crop, size = processor.image_processor.crop_size, config.vision_config.image_size
    if (crop["height"], crop["width"]) != (size, size):
        raise OptionError(f"--init-from: the processor in {options.init_from} crops images to {crop['height']}x"
                          f"{crop['width']} px, its model takes {size}x{size} px: set its image processor's crop_size "
                          "(and size) to the model's")
    return model, processor


def build_datasets(options, image_size: int):
    """Training and validation datasets and a description of the data for the model card."""
    def load(flag: str, source: str, split: str, **kwargs):
        if source == "synthetic":
            kwargs.update(num_samples=options.train_samples if flag == "--data" else options.val_samples,
                          image_size=image_size, world=options.synthetic_world)
            source = "synthetic:train" if flag == "--data" else "synthetic:val"
        try:
            return load_image_text_dataset(source, split=split, image_column=options.image_column,
                                           caption_column=options.caption_column, seed=options.seed,
                                           input_size=image_size, max_image_pixels=options.max_image_pixels, **kwargs)
        except DataError as error:
            raise OptionError(f"{flag}: {first_line(error)}") from error

    synthetic = options.data == "synthetic"
    noise = caption_noise(options)
    train = load("--data", options.data, "train", streaming=options.streaming, **(noise if synthetic else {}))
    # The built-in validation split is clean: it measures alignment, not how well the noise was fitted.
    val_source = options.val_data or ("synthetic" if synthetic else None)
    # A folder saved with several splits (`DatasetDict.save_to_disk`, e.g. --data and --val-data naming the same
    # folder) validates on its validation split; any other source is read whole, as its train split.
    val = load("--val-data", val_source, "validation" if saved_with_splits(val_source) else "train") \
        if val_source else None
    if val is not None and len(val) < 2:
        raise OptionError(f"--val-data: {val_source} has {len(val)} record; the validation loss needs at least 2")
    scenes = "built-in synthetic captioned scenes" + \
        (f" ({options.synthetic_world} world)" if options.synthetic_world != "standard" else "")
    description = {"training data": scenes if synthetic else options.data,
                   "training records": len(train) if not options.streaming else "streamed",
                   **(noise if synthetic else {}),
                   "validation data": "clean synthetic split" if val_source == "synthetic" else val_source or "none",
                   "validation records": len(val) if val is not None else 0}
    return train, val, description


# ----------------------------------------------------------------------------------------------------------------
# The run


def tracker_config(options) -> dict:
    # TensorBoard's hparams take scalars and strings only.
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in vars(options).items()}


@dataclasses.dataclass
class Session:
    """Everything the loop uses, built by `set_up`: prepared model, optimizer and loaders, the step, state."""

    options: TrainingOptions
    accelerator: Accelerator
    model: torch.nn.Module
    processor: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    step: TrainingStep
    checkpoints: CheckpointManager
    state: TrainState
    total_steps: int
    steps_per_epoch: int | None
    flops_per_sample: float
    data_description: dict

    def checkpoint_due(self) -> bool:
        """Every --checkpoint-every steps, and at the end of each epoch when the step needs it (a previous-epoch
        bank: see `TrainingStep.needs_checkpoint_at_epoch_end`)."""
        every, state = self.options.checkpoint_every, self.state
        epoch_ends = self.step.needs_checkpoint_at_epoch_end and \
            state.batches_in_epoch == self.steps_per_epoch * self.options.accum_steps
        return bool(every) and (state.step % every == 0 or epoch_ends)

    def save_checkpoint(self) -> None:
        require_finite_weights(self.accelerator, self.model, self.state.step, "checkpoint")
        self.checkpoints.save(self.accelerator, self.state.step,
                              {"train": self.state.state_dict(), "options": resume_invariants(self.options,
                                                                                              self.accelerator)},
                              tensors={"teacher": self.step.state_dict()})


# What a resumed run must share with its checkpoint: the model, the data and its order, and how batches are cut.
RESUME_INVARIANTS = ("preset", "init_from", "image_size", "data", "streaming", "seed", "batch_size", "accum_steps",
                     "distill_teacher")


def resume_invariants(options, accelerator: Accelerator) -> dict:
    return {**{name: getattr(options, name) for name in RESUME_INVARIANTS}, "processes": accelerator.num_processes}


def require_same_invariants(saved: dict, current: dict, checkpoint: Path) -> None:
    for name, value in current.items():
        if saved.get(name) != value:
            what = "the number of processes" if name == "processes" else flag(name)
            raise OptionError(f"{what}: {checkpoint} was trained with {saved.get(name)!r} and a resumed run must "
                              f"keep it, got {value!r}")


def checkpoints_to_resume(options, checkpoints: CheckpointManager) -> list[Path]:
    """The checkpoints to try, in order: `--resume latest` falls back to older complete ones."""
    if options.resume == "latest":
        return checkpoints.complete_checkpoints()[::-1]
    if options.resume:
        if not is_complete(Path(options.resume)):
            raise OptionError(f"--resume: {options.resume} is not a complete checkpoint")
        return [Path(options.resume)]
    if checkpoints.complete_checkpoints():
        raise OptionError(f"--run-dir {options.run_dir} already holds checkpoints of another run: pass --resume "
                          "latest to continue it, or choose another --run-dir")
    return []


def resume(accelerator: Accelerator, candidates: list[Path], options, state: TrainState, step: TrainingStep
           ) -> Path:
    """Load the first candidate that loads, saying why each one before it did not; return it."""
    for index, checkpoint in enumerate(candidates):
        try:
            saved = read_state(checkpoint)
            require_same_invariants(saved["options"], resume_invariants(options, accelerator), checkpoint)
            tensors = restore(accelerator, checkpoint, ("teacher",))
        except CheckpointError as error:
            if index + 1 == len(candidates):
                raise
            logger.warning(f"{error}; resuming from the previous complete checkpoint, {candidates[index + 1]}",
                           main_process_only=True)
            continue
        state.load_state_dict(saved["train"])
        step.load_state_dict(tensors["teacher"])
        return checkpoint


def set_up(options, accelerator: Accelerator) -> Session:
    """Model, data, optimizer, schedule and teacher, prepared by Accelerate and restored from a checkpoint."""
    run_dir = Path(options.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", options.keep_checkpoints)
    resume_candidates = checkpoints_to_resume(options, checkpoints)

    set_seed(options.seed)
    model, processor = build_model_and_processor(options)
    train_data, val_data, data_description = build_datasets(options, model.config.vision_config.image_size)

    # Each process reads micro-batches; one optimizer step takes `accum_steps` of them from every process.
    micro_batch = options.batch_size // (accelerator.num_processes * options.accum_steps)
    if micro_batch * accelerator.num_processes * options.accum_steps != options.batch_size or micro_batch == 0:
        raise OptionError(f"--batch-size {options.batch_size} must split evenly over {accelerator.num_processes} "
                          f"processes x {options.accum_steps} accumulation steps")
    if options.accum_steps > 1 and feature_caching_unsupported(accelerator):
        raise OptionError("--accum-steps: feature caching backpropagates several times per optimizer step and reads "
                          "the logit scale outside the model's forward, which FSDP and DeepSpeed do not allow; use "
                          "--accum-steps 1 there")
    # The sampler's order depends only on (seed, epoch), and augmentation is seeded per sample: a resumed run
    # skips the batches it has seen and then reads exactly what the uninterrupted run would have.
    train_loader = torch.utils.data.DataLoader(
        train_data, batch_size=micro_batch, drop_last=True, num_workers=options.num_workers,
        worker_init_fn=leave_interrupts_to_the_main_process,
        sampler=None if options.streaming else EpochSampler(len(train_data), seed=options.seed),
        collate_fn=ImageTextCollator(processor, train=True, seed=options.seed, uint8_pixels=True))
    val_loader = val_data and torch.utils.data.DataLoader(
        val_data, batch_size=micro_batch * options.accum_steps, num_workers=options.num_workers,
        worker_init_fn=leave_interrupts_to_the_main_process, collate_fn=ImageTextCollator(processor, train=False))

    if options.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    teacher = active_teacher_class(model.config)
    flops_per_sample = training_flops_per_sample(model, feature_caching=options.accum_steps > 1,
                                                 teacher_forward_passes=teacher.extra_forward_passes if teacher else 0)
    optimizer = adamw(parameter_groups(model, options.weight_decay), accelerator.device, lr=options.lr,
                      betas=(options.adam_beta1, options.adam_beta2), eps=options.adam_eps)
    steps_per_epoch = None if options.streaming else \
        len(train_loader) // (accelerator.num_processes * options.accum_steps)
    if steps_per_epoch == 0:
        raise DataError(f"the training data has fewer records than one global batch of {options.batch_size}")
    total_steps = options.max_steps or options.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(options.warmup_steps, total_steps), total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    try:
        step = TrainingStep.build(model, accelerator, bank_folder=run_dir / "teacher_bank",
                                  num_pairs=None if options.streaming else len(train_data),
                                  resume=bool(resume_candidates))
    except ValueError as error:
        raise OptionError(f"--distill-teacher: {error}") from error
    if step.first_taught_epoch and total_steps <= steps_per_epoch:
        logger.warning(f"the {step.psd.config.distill_teacher} teacher distils from the second epoch on; this run has "
                       "one epoch, so it trains as CLIP (use --distill-teacher ema)", main_process_only=True)

    state = TrainState()
    if resume_candidates:
        resumed_from = resume(accelerator, resume_candidates, options, state, step)
        logger.info(f"resumed from {resumed_from} at step {state.step}", main_process_only=True)
        aside = checkpoints.set_aside_newer_than(state.step) if accelerator.is_main_process else None
        if aside is not None:
            logger.warning(f"the checkpoints after step {state.step} belong to the run's earlier history: moved to "
                           f"{aside}, so --resume latest continues this one", main_process_only=True)
    return Session(options, accelerator, model, processor, optimizer, scheduler, train_loader, val_loader, step,
                   checkpoints, state, total_steps, steps_per_epoch, flops_per_sample, data_description)


def step_batches(session: Session):
    """The micro-batches of each optimizer step, from where the state says training is.

    Owns the epochs: sets the sampler's and the teacher's epoch, skips the batches a resumed run has already
    trained on, and rolls over to the next epoch when fewer than `accum_steps` micro-batches are left. The loader
    sends uint8 crops; they are standardised here, on the accelerator.
    """
    state, options, loader = session.state, session.options, session.train_loader
    while state.step < session.total_steps:
        loader.set_epoch(state.epoch)
        session.step.start_epoch(state.epoch)
        batches = iter(session.accelerator.skip_first_batches(loader, state.batches_in_epoch)
                       if state.batches_in_epoch else loader)
        while state.step < session.total_steps:
            micro_batches = list(itertools.islice(batches, options.accum_steps))
            if len(micro_batches) < options.accum_steps:
                break
            state.batches_in_epoch += options.accum_steps
            yield [with_standardized_pixels(batch, session.processor.image_processor) for batch in micro_batches]
        if state.step < session.total_steps:
            state.epoch += 1
            state.batches_in_epoch = 0


def optimizer_step(session: Session, loss_is_finite: bool):
    """Clip, step, and what follows an optimizer step (`TrainingStep.after_optimizer_step`); or skip a non-finite
    step (stopping after too many in a row).

    Returns the gradient norm before clipping (None when not clipped or skipped).
    """
    state, options = session.state, session.options
    grad_norm = None
    if loss_is_finite:
        if options.max_grad_norm:
            grad_norm = session.accelerator.clip_grad_norm_(session.model.parameters(), options.max_grad_norm)
        session.optimizer.step()
        session.step.after_optimizer_step()
        state.nonfinite_in_row = 0
    else:
        state.nonfinite_in_row += 1
        state.nonfinite_total += 1
        logger.warning(f"step {state.step + 1}: non-finite loss, step skipped", main_process_only=True)
        if state.nonfinite_in_row >= options.max_nonfinite_steps:
            raise TrainingDiverged(f"stopped at step {state.step + 1}: {state.nonfinite_in_row} non-finite "
                                   "losses in a row (try a lower --lr or --mixed-precision no)")
    session.optimizer.zero_grad(set_to_none=True)
    session.scheduler.step()  # a skipped step still moves the schedule: it counts optimizer steps
    return grad_norm


def step_metrics(session: Session, losses, parts: dict, grad_norm, window: Counter) -> dict:
    """What one log line reports: the loss parts and diagnostics, and speed over the steps since the last line."""
    samples_per_s = window["steps"] * session.options.batch_size / (window["data_s"] + window["compute_s"])
    tflops = session.flops_per_sample * samples_per_s / session.accelerator.num_processes / 1e12
    metrics = {
        **{f"train/{name}": value for name, value in parts.items()},
        "train/distill_alpha": losses.distill_alpha.item(),
        "train/logit_multiplier": losses.logit_multiplier.item(),
        "train/lr": session.scheduler.get_last_lr()[0],
        # float(): DeepSpeed returns the norm as a Python float, other backends as a tensor.
        "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "perf/samples_per_s": samples_per_s,
        "perf/data_wait_s": window["data_s"] / window["steps"],
        "perf/compute_s": window["compute_s"] / window["steps"],
        "perf/tflops_per_device": tflops,
    }
    if session.options.peak_tflops:
        metrics["perf/mfu"] = tflops / session.options.peak_tflops
    return metrics


def count_step(session: Session, micro_batches: list[dict]) -> None:
    """Bookkeeping of a step taken: the state a checkpoint saves."""
    state, accelerator = session.state, session.accelerator
    skipped = sum(batch["skipped"].sum(0) for batch in micro_batches).to(accelerator.device)
    state.skipped_records.update(dict(zip(SKIP_REASONS, accelerator.reduce(skipped, "sum").tolist())))
    state.step += 1
    state.samples_seen += session.options.batch_size


def run_metrics(session: Session, final: dict, wall_s: float, steps_this_run: int) -> dict:
    """What metrics.json says of the run: its length, speed, compute, skipped steps and records, final validation."""
    state = session.state
    return {
        "steps": state.step, "samples_seen": state.samples_seen, "wall_time_s": round(wall_s, 1),
        "steps_per_s_this_run": round(steps_this_run / wall_s, 4),
        "training_flops": session.flops_per_sample * state.samples_seen,
        "nonfinite_steps_skipped": state.nonfinite_total,
        "skipped_records": dict(state.skipped_records), "skipped_records_total": sum(state.skipped_records.values()),
        **{key: round(value, 4) for key, value in final.items()},
    }


def train(options, accelerator: Accelerator) -> None:
    session = set_up(options, accelerator)
    state, model = session.state, session.model
    log = JsonlLog(Path(options.run_dir) / "metrics.jsonl", accelerator.is_main_process)
    log.restart_from(state.step)
    accelerator.init_trackers("psdclip", config=tracker_config(options))

    def report(metrics: dict) -> None:
        accelerator.log(metrics, step=state.step)
        log.write({"step": state.step, **metrics})

    progress = tqdm(total=session.total_steps, initial=state.step, desc="training", unit="step",
                    disable=not (options.progress_bar and accelerator.is_local_main_process))
    window = Counter()  # sums since the last log line
    started = time.perf_counter()
    steps_this_run = 0
    estimate = TimeEstimate(session.total_steps - state.step, accelerator.is_local_main_process)
    batches = step_batches(session)
    while True:
        # Data: the next step's micro-batches (the wait is what the loader costs the step).
        data_started = time.perf_counter()
        micro_batches = next(batches, None)
        if micro_batches is None:
            break
        compute_started = time.perf_counter()

        # Forward, backward and the optimizer step, at this step's alpha and row draw.
        losses, parts = session.step.forward_backward(micro_batches, (state.step, session.total_steps))
        grad_norm = optimizer_step(session, math.isfinite(parts["loss"]))
        count_step(session, micro_batches)
        steps_this_run += 1
        progress.update()
        estimate.after_step(steps_this_run)
        window.update(steps=1, data_s=compute_started - data_started, compute_s=time.perf_counter() - compute_started)

        # Logging, validation, checkpoints.
        if state.step % options.log_every == 0 or state.step == session.total_steps:
            metrics = step_metrics(session, losses, parts, grad_norm, window)
            report(metrics)
            progress.set_postfix(loss=f"{parts['loss']:.3f}", alpha=f"{metrics['train/distill_alpha']:.2f}",
                                 samples_s=f"{metrics['perf/samples_per_s']:.0f}")
            window.clear()
        if session.val_loader is not None and options.eval_every and state.step % options.eval_every == 0 \
                and state.step < session.total_steps:
            report(validate(accelerator, model, session.val_loader))
        if session.checkpoint_due():
            session.save_checkpoint()
    progress.close()
    wall_s = time.perf_counter() - started

    final = validate(accelerator, model, session.val_loader) if session.val_loader is not None else {}
    report(final)
    require_finite_weights(accelerator, model, state.step, "model")
    save_final_model(accelerator, model, session.processor, options, session.data_description,
                     run_metrics(session, final, wall_s, steps_this_run))


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row, or weights that are not finite."""


def require_finite_weights(accelerator: Accelerator, model, step: int, what: str) -> None:
    """Raise TrainingDiverged, on every process alike, when any process holds a weight that is not finite.

    A model that skipped every step as non-finite, or stepped with non-finite gradients, would otherwise be saved;
    and a checkpoint of it would push the last good one out.
    """
    finite = torch.stack([torch.isfinite(parameter).all() for parameter in model.parameters()]).all()
    if accelerator.reduce((~finite).float().reshape(1), "sum").item() > 0:
        raise TrainingDiverged(f"stopped at step {step}: the weights are not all finite, so no {what} was saved and "
                               "the earlier checkpoints are kept (try a lower --lr or --mixed-precision no)")


def save_final_model(accelerator, model, processor, options, data_description: dict, metrics: dict) -> None:
    # A full state dict is gathered on every backend (sharded under FSDP/DeepSpeed) and loaded into a plain
    # model, so saving never depends on how the training model was wrapped.
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        config = accelerator.unwrap_model(model).config
        export = PSDCLIPModel(config)
        export.load_state_dict(state_dict)
        save = save_clip_folder if options.export_format == "clip" else save_model_folder
        folder = save(export, processor, options.output_dir, repo_id=options.push_to_hub,
                      **training_card_fields(options, data_description, metrics))
        write_json_atomically(folder / "metrics.json", metrics)
        print(f"saved the model to {folder}; metrics: {json.dumps(metrics)}")
        if options.push_to_hub:
            print(f"pushed to {push_folder_to_hub(folder, options.push_to_hub)}")
    accelerator.wait_for_everyone()


def run_training(options: TrainingOptions, prog: str) -> int:
    """Train with `options` (as `parse_options` returns them) under Accelerate; the exit status: 0, 2 for a bad option
    found while setting up, 1 for a failure (data, divergence, Hub, model folder, checkpoint), each one line."""
    try:
        accelerator = Accelerator(
            # Without an accelerator device, Accelerate would treat a multi-process launch as one process each;
            # `cpu` makes it gloo DDP on CPU.
            cpu=not torch.accelerator.is_available(),
            mixed_precision=options.mixed_precision,
            log_with=tracker_names(options.report_to) or None,
            project_config=ProjectConfiguration(project_dir=options.run_dir,
                                                logging_dir=str(Path(options.run_dir) / "tensorboard")),
            # The schedule counts optimizer steps; Accelerate would otherwise step it once per process.
            step_scheduler_with_optimizer=False,
            dynamo_plugin=TorchDynamoPlugin(backend="inductor") if options.compile else None,
        )
    except (ValueError, ImportError) as error:
        fail(prog, f"cannot set up Accelerate with these options: {first_line(error)}")
    status = 0
    try:
        with hold_run_dir(options.run_dir, accelerator), sigterm_interrupts():
            train(options, accelerator)
    except OptionError as error:
        if accelerator.is_main_process:
            print(f"{prog}: error: {error}", file=sys.stderr)
        status = 2
    except (DataError, TrainingDiverged, HubError, ModelFolderError, CheckpointError) as error:
        if accelerator.is_main_process:
            print(f"{prog}: error: {first_line(error)}", file=sys.stderr)
        status = 1
    except STOPS as error:  # Ctrl-C, SIGTERM, out of memory; anything else is a bug, with its traceback
        stop = describe_stop(error, options)
        if stop is None:
            raise
        status, message = stop
        if accelerator.is_main_process:
            print(f"{prog}: {message}", file=sys.stderr)
    finally:
        accelerator.end_training()
    return status
