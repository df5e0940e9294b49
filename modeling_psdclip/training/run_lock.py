"""One training run at a time in a run folder.

Two runs on one `--run-dir` would interleave `metrics.jsonl` and overwrite each other's checkpoints. The main
process holds an exclusive OS lock (`flock`, through `filelock`) on `run.lock` while it trains, and writes its pid
and host to `run.pid` beside it, so that a second run can say whose the folder is. A run that ends, however it ends
(its end, an error, Ctrl-C), removes `run.pid` and unlocks; `run.lock` stays, an empty file that locks nothing (a
lock file removed while another process may be opening it would let two runs each lock a different file). The OS
releases the lock of a crashed or killed run, whose `run.pid` stays behind but never blocks the next one.
"""

import contextlib
import os
import socket
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from .options import OptionError

LOCK_FILE = "run.lock"
PID_FILE = "run.pid"


@contextlib.contextmanager
def hold_run_dir(run_dir, accelerator: Accelerator):
    """Hold the run folder's lock for the duration of the block (collective: every process enters it).

    Raises OptionError, on every process alike, naming the holder when another run holds the folder.
    """
    folder = Path(run_dir)
    lock, refusal = None, None
    if accelerator.is_main_process:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(folder / LOCK_FILE)
            lock.acquire(timeout=0)
            (folder / PID_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        except Timeout:
            lock, refusal = None, f"--run-dir {run_dir} is in use by another run ({_holder(folder)}): wait for " \
                                  "it to end, or choose another --run-dir"
        except OSError as error:  # e.g. the folder became read-only since the options were checked
            if lock is not None and lock.is_locked:
                let_go(folder, lock)
            lock, refusal = None, f"--run-dir: cannot lock {folder / LOCK_FILE}: {error.strerror or error}"
    # The other processes learn the main process's verdict, so that all of them stop or none does.
    refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise OptionError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            let_go(folder, lock)


def let_go(folder: Path, lock: FileLock) -> None:
    """Remove the holder's `run.pid` while still holding the lock, then unlock, whatever the removal does."""
    try:
        with contextlib.suppress(OSError):
            (folder / PID_FILE).unlink()
    finally:
        lock.release()


def _holder(folder: Path) -> str:
    """"pid N on HOST" as the holder wrote it; the holder may be writing or removing the file right now."""
    try:
        pid, host = (folder / PID_FILE).read_text().split()
        return f"pid {int(pid)} on {host}"
    except (OSError, ValueError):
        return "pid unknown"
