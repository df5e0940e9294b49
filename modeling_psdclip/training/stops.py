"""How a run that stops before its end says so in one line, and with which exit status: a bad option, a failure
(data, divergence, the Hub, the model folder, a checkpoint), Ctrl-C, SIGTERM, or out of memory.

Whatever the step or checkpoint write was doing, the run can go on from its newest complete checkpoint: a write cut
short leaves only a staging folder, never offered for resuming and cleared by the next save.
"""

import contextlib
import os
import signal
from pathlib import Path

import torch

from ..configuration_psdclip import PSDCLIPConfig
from ..data import DataError
from ..model_folder import HubError, ModelFolderError
from ..utils import first_line
from .checkpoints import CheckpointError, CheckpointManager, step_of
from .options import OptionError

# Besides torch.OutOfMemoryError (CUDA and other accelerators) and MemoryError (Python): how torch's CPU allocator
# and some backends word the RuntimeError they raise.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row, or weights that are not finite."""


# Failures that are not a bug: the run ends with status 1 and their first line.
FAILURES = (DataError, TrainingDiverged, HubError, ModelFolderError, CheckpointError)
# What `exit_status` may recognise; a caller catches these and re-raises what it says is a bug.
ENDINGS = (OptionError, *FAILURES, KeyboardInterrupt, MemoryError, RuntimeError)


def exit_status(error: BaseException, options) -> tuple[int, str] | None:
    """The exit status and the line (after "PROG: ") for a run ended by `error`; None for a bug (re-raise it)."""
    if isinstance(error, OptionError):
        return 2, f"error: {error}"
    if isinstance(error, ModelFolderError):  # the model could not be saved at the end (a full disk), say
        return 1, f"error: {first_line(error)}; {resume_hint(options)}"
    if isinstance(error, FAILURES):
        return 1, f"error: {first_line(error)}"
    return describe_stop(error, options)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as SIGINT raises KeyboardInterrupt, so that both end the same way."""


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM raises `Terminated` in this process. A second SIGTERM ends the process at once,
    and a DataLoader worker forked inside the block dies of it as it would without the block."""
    owner = os.getpid()

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != owner:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def leave_interrupts_to_the_main_process(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: Ctrl-C reaches every process of the group, and the main process
    stops the workers and says so in one line, where each worker would print its own KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in OUT_OF_MEMORY_MESSAGES)


def describe_stop(error: BaseException, options) -> tuple[int, str] | None:
    """The exit status and the line (after "PROG: ") for a run stopped by `error`; None when it is no such stop.

    A signal gives 128 + its number, as a shell reports a process the signal ended.
    """
    if isinstance(error, KeyboardInterrupt):
        signum = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
        return 128 + signum, f"stopped by {signum.name}; {resume_hint(options)}"
    if is_out_of_memory(error):
        size = input_size(options)
        ways = ["a larger --accum-steps (the same loss over smaller micro-batches)"]
        if not options.gradient_checkpointing:
            ways.append("--gradient-checkpointing")
        ways.append("a smaller --batch-size or --image-size")
        return 1, (f"error: out of memory at --batch-size {options.batch_size} with --accum-steps "
                   f"{options.accum_steps} and {f'{size} px images' if size else 'the model input size'}; to need "
                   f"less memory, use {', '.join(ways[:-1])} or {ways[-1]}; {resume_hint(options)}")
    return None


def resume_hint(options) -> str:
    """Where the run can go on from: its newest complete checkpoint, or nowhere yet."""
    complete = CheckpointManager(Path(options.run_dir) / "checkpoints", options.keep_checkpoints) \
        .complete_checkpoints()
    if not complete:
        return "no checkpoint was written yet, so a rerun starts over"
    return f"the checkpoints are kept: rerun with --resume latest to go on from step {step_of(complete[-1])} " \
           f"({complete[-1]})"


def input_size(options) -> int | None:
    """The image side the run trains at (None when the model's configuration cannot be read)."""
    if options.image_size:
        return options.image_size
    try:
        config = PSDCLIPConfig.from_pretrained(options.init_from) if options.init_from else \
            PSDCLIPConfig.from_preset(options.preset)
    except (OSError, ValueError):
        return None
    return config.vision_config.image_size
