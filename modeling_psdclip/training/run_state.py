"""What a training run keeps of itself besides the model: where training is (saved in every checkpoint), the JSONL
log, the early time estimate, and the options as the trackers take them."""

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm


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


def tracker_config(options) -> dict:
    # TensorBoard's hparams take scalars and strings only.
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in vars(options).items()}

