"""Resumable training checkpoints that a crash can never leave half-written, and resuming from them.

`accelerator.save_state` writes model, optimizer, scheduler, RNG and registered objects (sharded under FSDP or
DeepSpeed); it does not make the write atomic. So every checkpoint is written to a staging folder, its files
are flushed to disk, a completion marker is added, and only then is the folder renamed to `step-NNNNNNNN`
(a rename is atomic on POSIX file systems). A folder without the marker is never offered for resuming, and an
old checkpoint loses its marker before it is deleted.

State that Accelerate does not hold is saved beside it in formats that load without unpickling anything: the
training loop's own state as JSON (`train_state.json`; it is not registered with Accelerate, which would pickle it
and load it back with full pickle, so a crafted checkpoint could run code) and tensors such as the EMA teacher's
weights as safetensors files.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors.torch import load_file, save_file

from ..utils import first_line
from .options import OptionError, flag
from .run_state import TrainState


logger = get_logger("train")

MARKER = "checkpoint_complete.json"
STATE_FILE = "train_state.json"
STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or loaded; the message is one line for the user."""


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` and the folders themselves to disk."""
    for directory, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(Path(directory))


def fsync_directory(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def step_of(checkpoint: Path) -> int:
    return int(STEP_FOLDER.fullmatch(checkpoint.name).group(1))


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def remove_checkpoint(folder: Path) -> None:
    # Marker first: if the deletion is interrupted, what is left no longer passes for a checkpoint.
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


class CheckpointManager:
    """Checkpoints `root/step-NNNNNNNN`, keeping the newest `keep_last` complete ones."""

    def __init__(self, root, keep_last: int):
        self.root = Path(root)
        self.keep_last = keep_last

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [path for path in self.root.iterdir() if STEP_FOLDER.fullmatch(path.name) and is_complete(path)]
        return sorted(found, key=step_of)

    def set_aside_newer_than(self, step: int) -> Path | None:
        """Move the complete checkpoints past `step` into a new `superseded-after-step-NNNNNNNN-*` folder (main
        process, after resuming from an earlier one); returns that folder, or None when there were none.

        The resumed run writes a new history, so `latest` must never lead back into the old one; but those
        checkpoints were not written by this run, so they are moved, never deleted, and rotation never counts them.
        """
        later = [checkpoint for checkpoint in self.complete_checkpoints() if step_of(checkpoint) > step]
        if not later:
            return None
        aside = Path(tempfile.mkdtemp(prefix=f"superseded-after-step-{step:08d}-", dir=self.root))
        aside.chmod(0o755)
        for checkpoint in later:
            os.rename(checkpoint, aside / checkpoint.name)
        fsync_directory(self.root)
        return aside

    def save(self, accelerator: Accelerator, step: int, state: dict,
             tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Collective: every process must call it (sharded states are written by every rank).

        `state` is the training loop's JSON-serialisable state, saved as `train_state.json`; `tensors` maps a name
        to a state dict that is the same on every process, saved as `<name>.safetensors`.
        """
        final = self.root / f"step-{step:08d}"
        staging = self.root / f".staging-{final.name}"
        try:
            self._write(accelerator, step, state, tensors, staging, final)
        # A full disk, a quota, a lost mount (torch.save reports them as RuntimeError): the earlier checkpoints are
        # untouched, and the partial one must not fill the disk further.
        except Exception as error:
            shutil.rmtree(staging, ignore_errors=True)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
            free = shutil.disk_usage(self.root).free if self.root.is_dir() else 0
            raise CheckpointError(f"cannot write the checkpoint of step {step} to {self.root} ({free / 2**20:.0f} "
                                  f"MiB free there): {reason}; the earlier checkpoints are kept") from error
        accelerator.wait_for_everyone()
        return final

    def _write(self, accelerator: Accelerator, step: int, state: dict, tensors: dict | None, staging: Path,
               final: Path) -> None:
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # Left by a run killed while writing this step.
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / STATE_FILE).write_text(json.dumps(state))
            for name, tensor_state in (tensors or {}).items():
                if tensor_state:
                    save_file({key: value.cpu() for key, value in tensor_state.items()},
                              staging / f"{name}.safetensors")
            fsync_tree(staging)
            marker = staging / MARKER
            marker.write_text(json.dumps({"step": step}))
            with open(marker, "rb") as handle:
                os.fsync(handle.fileno())
            if final.exists():  # The same step saved again after a resume.
                remove_checkpoint(final)
            os.rename(staging, final)
            fsync_directory(self.root)
            self.prune()

    def prune(self) -> None:
        """Drop all but the newest `keep_last` complete checkpoints, and what a crash left: staging folders, and
        checkpoint folders whose marker was removed before a deletion that did not finish."""
        for old in self.complete_checkpoints()[: -self.keep_last]:
            remove_checkpoint(old)
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob("step-*"):
            if STEP_FOLDER.fullmatch(leftover.name) and not is_complete(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Resuming: which checkpoint, whether it fits the run, and loading it


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


def resume(accelerator: Accelerator, candidates: list[Path], options, state, step) -> Path:
    """Load the first candidate that loads into the loop's `state` (a `TrainState`) and `step` (its
    `TrainingStep`: the teacher's state), saying why each one before it did not; return it."""
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



def load_tensors(checkpoint: Path, name: str) -> dict[str, torch.Tensor] | None:
    """The state dict saved as `name` by `CheckpointManager.save`, or None when the checkpoint has none."""
    path = Path(checkpoint) / f"{name}.safetensors"
    return load_file(path) if path.is_file() else None


def read_state(checkpoint: Path) -> dict:
    """The training loop's state saved by `CheckpointManager.save`; CheckpointError when it cannot be read.

    Accelerate would unpickle a `custom_checkpoint_*.pkl` without restrictions for a registered object; this package
    registers none and refuses a checkpoint that holds one.
    """
    checkpoint = Path(checkpoint)
    pickled = sorted(path.name for path in checkpoint.glob("custom_checkpoint_*"))
    if pickled:
        raise CheckpointError(f"{checkpoint} holds {pickled[0]}, a pickle this package never writes and does not "
                              "load; resume from a checkpoint written by this version")
    try:
        saved = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load the checkpoint {checkpoint}: {first_line(error)}") from error
    problem = invalid_state(saved)
    if problem:
        raise CheckpointError(f"cannot load the checkpoint {checkpoint}: its {STATE_FILE} {problem}")
    return saved


def invalid_state(saved) -> str | None:
    """What is wrong with a `train_state.json`'s content, in a few words; None when it is what `save` writes.

    Checked before anything acts on it: a damaged step would otherwise move the later checkpoints aside (a step of
    -7 moved every one), then fail deep in training. The loop's state is a fresh `TrainState`'s keys, each a count
    (`skipped_records`: counts by reason); the options, a mapping.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict) \
            or not isinstance(saved.get("options"), dict):
        return "is not a mapping of 'train' and 'options' mappings"
    fresh, train = TrainState().state_dict(), saved["train"]
    if set(train) != set(fresh):
        return f"names {sorted(set(train) ^ set(fresh))[0]!r}: its train state is not this version's"

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    for name, value in train.items():
        counts = value.values() if isinstance(fresh[name], dict) and isinstance(value, dict) else [value]
        if isinstance(fresh[name], dict) != isinstance(value, dict) or not all(map(is_count, counts)):
            expected = "counts by reason" if isinstance(fresh[name], dict) else "a count"
            return f"has train.{name} = {json.dumps(value)}, not {expected}"
    return None


def restore(accelerator: Accelerator, checkpoint: Path, tensor_names: tuple[str, ...] = ()
            ) -> dict[str, dict[str, torch.Tensor] | None]:
    """Load a checkpoint into the prepared objects and return the `tensor_names` state dicts (None when absent).

    Raises CheckpointError for a checkpoint that cannot be loaded.
    """
    try:
        accelerator.load_state(str(checkpoint))
        return {name: load_tensors(checkpoint, name) for name in tensor_names}
    except Exception as error:  # Any damage (truncation, a missing file) means the same: unusable.
        raise CheckpointError(f"cannot load the checkpoint {checkpoint}: {first_line(error)}") from error
