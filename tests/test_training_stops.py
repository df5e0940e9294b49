"""train.py refusing what cannot work before it trains, and stopping in one line: a run folder in use, read-only
or a file; a batch of one pair; an invalid Hub name; Ctrl-C and SIGTERM; out of memory."""

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from modeling_psdclip import PSDCLIPModel
from modeling_psdclip.data.records import MAX_IMAGE_PIXELS
from modeling_psdclip.training.checkpoints import CheckpointManager
from modeling_psdclip.training.options import OptionError, parse_options
from modeling_psdclip.training.stops import TrainingDiverged, describe_stop, exit_status
from tests.support import micro_config, random_batch
from tests.test_training_checkpoints import FakeAccelerator
from tests.test_training_runs import (  # noqa: F401 (fixtures)
    TRAIN, env, log_lines, micro_args, micro_folder, run, write_pairs_with_bad_records,
)


def refusal(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_options(argv)
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(error.splitlines()) == 1, error
    return error


def unwritable_folder(tmp_path: Path) -> Path:
    """An existing folder nothing can be created in, for root too (a permission bit does not stop root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no folder here is read-only for root")
    return Path("/sys/kernel")


def test_what_cannot_train_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert refusal(capsys, ["--batch-size", "1"]) == (
        "train.py: error: --batch-size must be at least 2, got 1: the contrastive loss compares each pair with the "
        "other pairs of its global batch")
    for name in ("bad name", "someone/a/b", "ends-with-a-dot.", "x" * 97):
        assert refusal(capsys, ["--push-to-hub", name]).startswith("train.py: error: --push-to-hub: Repo id must")
    parse_options(["--push-to-hub", "someone/psdclip-tiny", "--batch-size", "2"])

    (tmp_path / "a-file").write_text("mine")
    assert refusal(capsys, ["--run-dir", "a-file"]) == "train.py: error: --run-dir a-file is a file, not a folder"
    (tmp_path / "a-link").symlink_to(tmp_path / "nowhere")
    assert refusal(capsys, ["--run-dir", "a-link"]) == "train.py: error: --run-dir a-link is a link, not a folder"
    read_only = unwritable_folder(tmp_path)
    for run_dir in (read_only, read_only / "run"):
        assert refusal(capsys, ["--run-dir", str(run_dir)]).startswith(
            f"train.py: error: --run-dir: cannot write the run's checkpoints and logs to {run_dir}: ")
    assert (tmp_path / "a-file").read_text() == "mine"

    assert MAX_IMAGE_PIXELS == 50_000_000
    assert parse_options([]).max_image_pixels == MAX_IMAGE_PIXELS
    assert "--max-image-pixels must be positive" in refusal(capsys, ["--max-image-pixels", "0"])


def test_batch_of_one_pair_is_refused_before_anything_is_written(tmp_path, env, micro_folder):
    done = run(micro_args(micro_folder, tmp_path, "--batch-size", "1"), env, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: --batch-size must be at least 2")
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()


def test_the_image_bound_and_input_size_reach_the_data_and_one_validation_record_is_refused(tmp_path):
    from modeling_psdclip.training.building import build_datasets  # noqa: PLC0415

    for index, side in enumerate((10, 20, 10)):
        Image.new("RGB", (side, side), (80 * index, 0, 0)).save(tmp_path / f"{index}.png")
    (tmp_path / "pairs.csv").write_text("image,caption\n0.png,a\n1.png,b\n2.png,c\n")
    (tmp_path / "one.csv").write_text("image,caption\n0.png,a\n")
    options = parse_options(["--data", str(tmp_path / "pairs.csv"), "--val-data", str(tmp_path / "pairs.csv"),
                             "--max-image-pixels", "300", "--output-dir", str(tmp_path / "model")])
    train, val, _ = build_datasets(options, image_size=16)
    for dataset in (train, val):
        assert (dataset.columns.max_image_pixels, dataset.columns.input_size) == (300, 16)
        assert dataset[1]["skipped"] == {"image_too_large": 1}  # 400 pixels
    options.val_data = str(tmp_path / "one.csv")
    with pytest.raises(OptionError, match=r"--val-data: .*one.csv has 1 record; the validation loss needs at least 2"):
        build_datasets(options, image_size=16)


def test_validation_loss_leaves_out_a_last_batch_of_one_pair():
    from modeling_psdclip.training.step import validate  # noqa: PLC0415

    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config(vocab_size=None))
    batch = random_batch(model.config, 3)
    pairs = {key: value[:2] for key, value in batch.items()}
    alone = {key: value[2:] for key, value in batch.items()}
    accelerator = Accelerator(cpu=True)
    metrics = validate(accelerator, model, [pairs, alone])
    assert metrics["val/loss"] == pytest.approx(validate(accelerator, model, [pairs])["val/loss"])
    assert metrics["val/loss"] > 0.1


def holder_left(root: Path) -> bool:
    """Whether a run left its holder file (`run.lock` itself stays: an empty file that locks nothing)."""
    return (root / "run" / "run.pid").exists()


def test_a_run_that_fails_on_its_data_leaves_its_run_folder_free(tmp_path, env, micro_folder):
    write_pairs_with_bad_records(tmp_path / "pairs", usable=5)  # fewer usable pairs than one batch of 16
    done = run(micro_args(micro_folder, tmp_path, "--data", str(tmp_path / "pairs" / "pairs.csv"), "--max-steps", "1"),
               env, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "train.py: error: the training data has fewer records than one global batch of 16")
    assert not holder_left(tmp_path)
    run(micro_args(micro_folder, tmp_path, "--max-steps", "1"), env)  # not refused as in use
    assert not holder_left(tmp_path)


def start(args, env) -> subprocess.Popen:
    # A session of its own, as a terminal's Ctrl-C reaches every process of the foreground group; and SIGINT's
    # default disposition, which a suite started in the background of a shell script does not pass on (such a
    # shell ignores SIGINT in its background jobs, and an ignored SIGINT stays ignored across exec).
    return subprocess.Popen([sys.executable, TRAIN, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_log_lines(root: Path, process: subprocess.Popen, lines: int) -> None:
    log = root / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= lines):
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)
    assert log.exists() and len(log.read_text().splitlines()) >= lines


def test_a_second_run_on_a_run_folder_in_use_is_refused_and_a_crashed_runs_lock_is_not(tmp_path, env, micro_folder):
    first = start(micro_args(micro_folder, tmp_path, "--max-steps", "100000", "--checkpoint-every", "0"), env)
    try:
        wait_for_log_lines(tmp_path, first, 2)
        done = run(micro_args(micro_folder, tmp_path, "--max-steps", "2"), env, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            f"train.py: error: --run-dir {tmp_path / 'run'} is in use by another run (pid {first.pid} on "
            f"{socket.gethostname()}): wait for it to end, or choose another --run-dir")
        assert first.poll() is None  # the first run goes on
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a crash: the lock's holder is gone without releasing anything
        first.wait()
    run(micro_args(micro_folder, tmp_path, "--max-steps", "2"), env)
    assert [line["step"] for line in log_lines(tmp_path) if "train/loss" in line] == [1, 2]
    assert not holder_left(tmp_path)  # a run that ended leaves no holder behind


@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGINT, 0), (signal.SIGTERM, 0), (signal.SIGINT, 2)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-with-workers"])
def test_an_interrupted_run_says_where_it_resumes_from(tmp_path, env, micro_folder, signum, workers):
    args = micro_args(micro_folder, tmp_path, "--max-steps", "100000", "--checkpoint-every", "3",
                      "--num-workers", str(workers))
    process = start(args, env)
    try:
        wait_for_log_lines(tmp_path, process, 7)
        if workers:  # a SIGINT that reaches the workers alone leaves them and the run going
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
            assert len(children) == workers
            for child in children:
                os.kill(int(child), signal.SIGINT)
            wait_for_log_lines(tmp_path, process, 27)
        os.killpg(process.pid, signum)
        stderr = process.communicate(timeout=180)[1]  # a loaded machine may take a while to save and stop
    finally:
        if process.poll() is None:  # never leave an endless run behind a failed test
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signum and "Traceback" not in stderr, stderr[-3000:]
    assert not holder_left(tmp_path)
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"train\.py: stopped by {signum.name}; the checkpoints are kept: rerun with --resume latest "
                         rf"to go on from step (\d+) \((.+)\)", last)
    assert match, last
    step = int(match.group(1))
    newest = CheckpointManager(tmp_path / "run" / "checkpoints", 2).complete_checkpoints()[-1]
    assert step >= 6 and match.group(2) == str(newest) and newest.name == f"step-{step:08d}"
    args[args.index("--max-steps") + 1] = str(step + 2)
    run([*args, "--resume", "latest"], env)
    assert [line["step"] for line in log_lines(tmp_path) if "train/loss" in line] == list(range(1, step + 3))


class InterruptedAccelerator(FakeAccelerator):
    def save_state(self, folder):
        super().save_state(folder)
        raise KeyboardInterrupt


def test_an_interrupted_checkpoint_write_leaves_the_earlier_ones_to_resume_from(tmp_path):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints", keep_last=2)
    manager.save(FakeAccelerator(), 10, {"step": 10})
    with pytest.raises(KeyboardInterrupt):
        manager.save(InterruptedAccelerator(), 20, {"step": 20})
    assert [path.name for path in manager.complete_checkpoints()] == ["step-00000010"]
    options = parse_options(["--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path / "model")])
    assert describe_stop(KeyboardInterrupt(), options) == (130, (
        "stopped by SIGINT; the checkpoints are kept: rerun with --resume latest to go on from step 10 "
        f"({tmp_path / 'run' / 'checkpoints' / 'step-00000010'})"))
    manager.save(FakeAccelerator(), 20, {"step": 20})  # the rerun's save clears what the interruption left
    assert sorted(path.name for path in manager.root.iterdir()) == ["step-00000010", "step-00000020"]


def test_out_of_memory_errors_are_recognised_and_others_are_not(tmp_path):
    options = parse_options(["--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path / "model"),
                             "--batch-size", "256", "--accum-steps", "2", "--gradient-checkpointing"])
    expected = ("error: out of memory at --batch-size 256 with --accum-steps 2 and 48 px images; to need less "
                "memory, use a larger --accum-steps (the same loss over smaller micro-batches) or a smaller "
                "--batch-size or --image-size; no checkpoint was written yet, so a rerun starts over")
    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError(),
                  RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
                  RuntimeError("MPS backend out of memory")):
        assert describe_stop(error, options) == (1, expected)
    assert describe_stop(RuntimeError("shapes cannot be multiplied"), options) is None
    assert describe_stop(ValueError("out of memory"), options) is None


def test_every_way_a_run_ends_maps_to_its_status_in_one_place(tmp_path):
    from modeling_psdclip.data import DataError  # noqa: PLC0415
    from modeling_psdclip.training.options import OptionError  # noqa: PLC0415

    options = parse_options(["--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path / "model")])
    assert exit_status(OptionError("--lr must be positive"), options) == (2, "error: --lr must be positive")
    assert exit_status(DataError("no images\nin the folder"), options) == (1, "error: no images")
    assert exit_status(TrainingDiverged("stopped at step 3"), options) == (1, "error: stopped at step 3")
    assert exit_status(KeyboardInterrupt(), options)[0] == 130
    assert exit_status(RuntimeError("shapes cannot be multiplied"), options) is None  # a bug: its traceback


@pytest.mark.skipif(torch.accelerator.is_available(), reason="exhausts the CPU allocator; an accelerator would not")
def test_out_of_memory_in_a_step_is_one_line(tmp_path, env):
    for index in range(8):
        Image.new("RGB", (16, 16), (30 * index, 0, 0)).save(tmp_path / f"{index}.png")
    rows = "".join(f"{index % 8}.png,picture {index}\n" for index in range(1024))
    (tmp_path / "pairs.csv").write_text("image,caption\n" + rows)

    def limit_memory():
        # 6 GiB of address space: enough to set up, far from what a step of 1024 pairs of 128 px images needs.
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    args = ["--data", str(tmp_path / "pairs.csv"), "--image-size", "128", "--batch-size", "1024", "--max-steps", "2",
            "--distill-alpha-max", "0", "--report-to", "none", "--no-progress-bar",
            "--output-dir", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, TRAIN, *args], env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_memory)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "train.py: error: out of memory at --batch-size 1024 with --accum-steps 1 and 128 px images; to need less "
        "memory, use a larger --accum-steps (the same loss over smaller micro-batches), --gradient-checkpointing or a "
        "smaller --batch-size or --image-size; no checkpoint was written yet, so a rerun starts over")
    assert (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "model").exists()  # set up, then a step
