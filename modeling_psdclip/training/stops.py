"""How a run that stops before its end says so in one line: Ctrl-C, SIGTERM, or out of memory.

Whatever the step or checkpoint write was doing, the run can go on from its newest complete checkpoint: a write cut
short leaves only a staging folder, never offered for resuming and cleared by the next save.
"""

import contextlib
import os
import signal
from pathlib import Path

import torch

from ..configuration_psdclip import PSDCLIPConfig
from .checkpoints import CheckpointManager, step_of

# Besides torch.OutOfMemoryError (CUDA and other accelerators) and MemoryError (Python): how torch's CPU allocator
# and some backends word the RuntimeError they raise.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")
# What `describe_stop` may recognise; a caller catches these and re-raises the rest.
STOPS = (KeyboardInterrupt, MemoryError, RuntimeError)


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
