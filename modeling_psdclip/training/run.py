"""A training run: its set-up, loop and save (`python train.py`; options in options.py).

The run writes resumable checkpoints, `metrics.jsonl` and TensorBoard files to `--run-dir`, and at the end a
Hub-ready model folder (weights, remote code, processor, model card, metrics.json) to `--output-dir`
(`--export-format clip`, the default with `--push-to-hub`, writes it as transformers' CLIPModel, which loads
without remote code). What it is built from is in building.py, its state and log in run_state.py, resuming in
checkpoints.py, how it ends in stops.py; the step itself (forward, backward, the teacher) is `TrainingStep`
(step.py).
"""

import dataclasses
import itertools
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .. import PSDCLIPModel
from ..data import SKIP_REASONS, DataError, with_standardized_pixels
from ..export import save_clip_folder
from ..model_folder import push_folder_to_hub, save_model_folder
from ..utils import fail, first_line, write_json_atomically
from .building import build_datasets, build_loaders, build_model_and_processor
from .card_fields import training_card_fields
from .checkpoints import CheckpointManager, checkpoints_to_resume, resume, resume_invariants
from .optim import adamw, parameter_groups, training_flops_per_sample
from .options import OptionError, TrainingOptions, tracker_names
from .run_lock import hold_run_dir
from .run_state import JsonlLog, TimeEstimate, TrainState, tracker_config
from .step import TrainingStep, validate
from .stops import ENDINGS, TrainingDiverged, exit_status, sigterm_interrupts
from .teachers import active_teacher_class

logger = get_logger("train")


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


def set_up(options, accelerator: Accelerator) -> Session:
    """Model, data, optimizer, schedule and teacher, prepared by Accelerate and restored from a checkpoint."""
    run_dir = Path(options.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", options.keep_checkpoints)
    resume_candidates = checkpoints_to_resume(options, checkpoints)

    set_seed(options.seed)
    model, processor = build_model_and_processor(options)
    train_data, val_data, data_description = build_datasets(options, model.config.vision_config.image_size)
    train_loader, val_loader = build_loaders(options, accelerator, processor, train_data, val_data)
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

    step = build_step(options, accelerator, model, None if options.streaming else len(train_data),
                      bool(resume_candidates), total_steps <= (steps_per_epoch or 0))
    state = TrainState()
    if resume_candidates:
        resume_from(options, accelerator, resume_candidates, checkpoints, state, step)
    return Session(options, accelerator, model, processor, optimizer, scheduler, train_loader, val_loader, step,
                   checkpoints, state, total_steps, steps_per_epoch, flops_per_sample, data_description)


def build_step(options, accelerator: Accelerator, model, num_pairs: int | None, resume: bool,
               one_epoch: bool) -> TrainingStep:
    """The run's `TrainingStep`, with the teacher the model's config names (its bank in the run folder)."""
    try:
        step = TrainingStep.build(model, accelerator, bank_folder=Path(options.run_dir) / "teacher_bank",
                                  num_pairs=num_pairs, resume=resume)
    except ValueError as error:
        raise OptionError(f"--distill-teacher: {error}") from error
    if step.first_taught_epoch and one_epoch:
        logger.warning(f"the {step.psd.config.distill_teacher} teacher distils from the second epoch on; this run has "
                       "one epoch, so it trains as CLIP (use --distill-teacher ema)", main_process_only=True)
    return step


def resume_from(options, accelerator: Accelerator, candidates: list[Path], checkpoints: CheckpointManager,
                state: TrainState, step: TrainingStep) -> None:
    """Load the first candidate checkpoint that loads, and move the old history past it aside."""
    resumed_from = resume(accelerator, candidates, options, state, step)
    logger.info(f"resumed from {resumed_from} at step {state.step}", main_process_only=True)
    aside = checkpoints.set_aside_newer_than(state.step) if accelerator.is_main_process else None
    if aside is not None:
        logger.warning(f"the checkpoints after step {state.step} belong to the run's earlier history: moved to "
                       f"{aside}, so --resume latest continues this one", main_process_only=True)


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
        log_validate_and_save(session, report, progress, losses, parts, grad_norm, window)
    progress.close()
    wall_s = time.perf_counter() - started

    final = validate(accelerator, model, session.val_loader) if session.val_loader is not None else {}
    report(final)
    require_finite_weights(accelerator, model, state.step, "model")
    save_final_model(accelerator, model, session.processor, options, session.data_description,
                     run_metrics(session, final, wall_s, steps_this_run))


def log_validate_and_save(session: Session, report, progress, losses, parts: dict, grad_norm,
                          window: Counter) -> None:
    """What follows a step: a log line every --log-every steps (and the last), validation every --eval-every
    (the last one comes after the loop), a checkpoint when one is due."""
    state, options = session.state, session.options
    if state.step % options.log_every == 0 or state.step == session.total_steps:
        metrics = step_metrics(session, losses, parts, grad_norm, window)
        report(metrics)
        progress.set_postfix(loss=f"{parts['loss']:.3f}", alpha=f"{metrics['train/distill_alpha']:.2f}",
                             samples_s=f"{metrics['perf/samples_per_s']:.0f}")
        window.clear()
    if session.val_loader is not None and options.eval_every and state.step % options.eval_every == 0 \
            and state.step < session.total_steps:
        report(validate(session.accelerator, session.model, session.val_loader))
    if session.checkpoint_due():
        session.save_checkpoint()


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
    on_cpu = not torch.accelerator.is_available()
    if on_cpu and options.mixed_precision == "fp16":
        # Accelerate would train in fp32 on a CPU without a word, while the card recorded fp16.
        fail(prog, "--mixed-precision fp16 needs a GPU and this machine has none; on a CPU use bf16 or no")
    try:
        accelerator = Accelerator(
            # Without an accelerator device, Accelerate would treat a multi-process launch as one process each;
            # `cpu` makes it gloo DDP on CPU.
            cpu=on_cpu,
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
    except ENDINGS as error:
        ending = exit_status(error, options)
        if ending is None:
            raise  # a bug, with its traceback
        status, message = ending
        if accelerator.is_main_process:
            print(f"{prog}: {message}", file=sys.stderr)
    finally:
        accelerator.end_training()
    return status
