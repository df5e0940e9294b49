"""Checkpoints that a crash never leaves half-written, and a full disk that keeps the earlier ones."""

import errno
import json
import os
import re
from pathlib import Path

import pytest

from modeling_psdclip.training.checkpoints import MARKER, CheckpointError, CheckpointManager, read_state


class FakeAccelerator:
    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


def test_checkpoints_are_complete_or_ignored_and_only_the_last_are_kept(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        manager.save(FakeAccelerator(), step, {"step": step})
    assert [p.name for p in manager.complete_checkpoints()] == ["step-00000020", "step-00000030"]
    # What a kill leaves behind: a staging folder mid-write, or a renamed one whose marker is gone mid-delete.
    (tmp_path / ".staging-step-00000040").mkdir()
    (tmp_path / "step-00000050").mkdir()
    assert manager.complete_checkpoints()[-1] == tmp_path / "step-00000030"
    assert (tmp_path / "step-00000030" / MARKER).is_file()
    # Resumed from step 20: the old step 30 is another history and must not be offered again, nor deleted.
    aside = manager.set_aside_newer_than(20)
    assert manager.complete_checkpoints()[-1] == tmp_path / "step-00000020"
    assert aside.parent == tmp_path and aside.name.startswith("superseded-after-step-00000020-")
    assert (aside / "step-00000030" / "model.safetensors").read_bytes() == b"weights"
    assert manager.set_aside_newer_than(20) is None  # nothing left to move
    # The next saves clear what the kill left, and rotation counts only the checkpoints in the run's history.
    for step in (60, 70):
        manager.save(FakeAccelerator(), step, {"step": step})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-00000060", "step-00000070", aside.name]
    assert (aside / "step-00000030" / MARKER).is_file()


class DiskFullAccelerator(FakeAccelerator):
    def save_state(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half the weig")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_earlier_ones(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20):
        manager.save(FakeAccelerator(), step, {"step": step})
    with pytest.raises(CheckpointError) as error:
        manager.save(DiskFullAccelerator(), 30, {"step": 30})
    assert re.fullmatch(f"cannot write the checkpoint of step 30 to {re.escape(str(tmp_path))} \\(\\d+ MiB free "
                        "there\\): No space left on device; the earlier checkpoints are kept", str(error.value))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-00000010", "step-00000020"]
    assert all((path / "model.safetensors").read_bytes() == b"weights" for path in tmp_path.iterdir())


class ResumingAccelerator(FakeAccelerator):
    num_processes = 1

    def __init__(self):
        self.loaded = []

    def load_state(self, folder):
        self.loaded.append(Path(folder).name)


@pytest.mark.parametrize(("edit", "problem"), [
    ({"step": -7}, "has train.step = -7, not a count"),
    ({"step": "four"}, 'has train.step = "four", not a count'),
    ({"step": 4.5}, "has train.step = 4.5, not a count"),
    ({"epoch": True}, "has train.epoch = true, not a count"),
    ({"skipped_records": {"corrupt_image": -1}}, 'has train.skipped_records = {"corrupt_image": -1}, not counts by '
                                                 'reason'),
    ({"skipped_records": 3}, "has train.skipped_records = 3, not counts by reason"),
    ({"extra": 1}, "names 'extra': its train state is not this version's"),
])
def test_a_damaged_train_state_falls_back_to_the_previous_checkpoint_and_moves_nothing(tmp_path, edit, problem):
    from accelerate import PartialState

    from modeling_psdclip.training.checkpoints import resume, resume_invariants
    from modeling_psdclip.training.options import TrainingOptions
    from modeling_psdclip.training.run_state import TrainState

    PartialState()  # what the run's logger needs
    options, accelerator, manager = TrainingOptions(), ResumingAccelerator(), CheckpointManager(tmp_path, keep_last=3)
    for step in (2, 4):
        state = TrainState()
        state.step = step
        manager.save(accelerator, step, {"train": state.state_dict(),
                                         "options": resume_invariants(options, accelerator)})
    newest = tmp_path / "step-00000004" / "train_state.json"
    saved = json.loads(newest.read_text())
    saved["train"].update(edit)
    newest.write_text(json.dumps(saved))

    with pytest.raises(CheckpointError) as error:
        read_state(tmp_path / "step-00000004")
    assert str(error.value) == \
        f"cannot load the checkpoint {tmp_path / 'step-00000004'}: its train_state.json {problem}"

    class Teacher:
        def load_state_dict(self, tensors):
            pass

    state = TrainState()
    assert resume(accelerator, manager.complete_checkpoints()[::-1], options, state, Teacher()) == \
        tmp_path / "step-00000002"
    assert state.step == 2 and accelerator.loaded == ["step-00000002"]
    assert [path.name for path in manager.complete_checkpoints()] == ["step-00000002", "step-00000004"]


def test_a_train_state_that_is_not_a_mapping_is_a_damaged_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(FakeAccelerator(), 2, {"step": 2})  # no 'train' and 'options'
    for content in ('{"step": 2}', "[1, 2, 3]", '{"train": [], "options": {}}'):
        (tmp_path / "step-00000002" / "train_state.json").write_text(content)
        with pytest.raises(CheckpointError, match="is not a mapping of 'train' and 'options' mappings"):
            read_state(tmp_path / "step-00000002")
