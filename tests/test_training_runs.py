"""train.py end to end, in subprocesses (one process and two, killed and resumed), on a micro model and tiny
synthetic data or small tables with bad records."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.data import SKIP_REASONS
from modeling_psdclip.training.options import parse_options
from tests.support import copy_with_refused_pickle, save_micro_folder
from tests.test_training_checkpoints import FakeAccelerator

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")
TWO_PROCESSES = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # The synthetic splits are cached per module run, not in the user's cache.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache")),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def micro_folder(tmp_path_factory):
    return save_micro_folder(tmp_path_factory.mktemp("micro"))


def micro_args(micro_folder, root: Path, *extra) -> list[str]:
    return ["--init-from", str(micro_folder), "--train-samples", "256", "--val-samples", "32", "--batch-size", "16",
            "--report-to", "none", "--no-progress-bar", "--log-every", "1", "--eval-every", "0",
            "--warmup-steps", "2", "--output-dir", str(root / "model"), "--run-dir", str(root / "run"), *extra]


def run(args, env, launcher=(sys.executable,), check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([*launcher, TRAIN, *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def log_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]


def weights(root: Path) -> dict:
    return load_file(root / "model" / "model.safetensors")


def test_shortened_default_run_saves_a_loadable_model_and_learns(tmp_path, env):
    done = run(["--max-steps", "30", "--batch-size", "32", "--train-samples", "960", "--val-samples", "64",
                "--warmup-steps", "5", "--log-every", "5", "--eval-every", "15", "--no-progress-bar",
                "--output-dir", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run"),
                "--push-to-hub", "someone/psdclip-test"], env, check=False)
    # Offline, the push fails with one line, after the model was saved.
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: could not push")
    assert "Traceback" not in done.stderr
    # The total is estimated once, after the warm-up steps and a few timed ones.
    assert len(re.findall(r"estimated training time: [0-9.]+ min for 30 steps", done.stderr)) == 1

    # A folder meant for the Hub is saved as transformers' CLIPModel (--export-format's default with --push-to-hub).
    assert json.loads((tmp_path / "model" / "config.json").read_text())["architectures"] == ["CLIPModel"]
    model = PSDCLIPModel.from_pretrained(tmp_path / "model")
    assert model.config.vision_config.image_size == 48
    card = (tmp_path / "model" / "README.md").read_text()
    assert "p_mismatch" in card and "val/text_to_image_R@1" in card
    assert "PSD compared with CLIP on this data" in card  # the built-in data's card states the study's comparison
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["skipped_records_total"] == 0
    losses = [line["train/loss"] for line in log_lines(tmp_path) if "train/loss" in line]
    assert losses[-1] < losses[0]
    assert any("val/loss" in line and line["step"] == 15 for line in log_lines(tmp_path))


@pytest.mark.parametrize("teacher", ["previous_epoch", "ema"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, env, micro_folder, teacher):
    one, two = tmp_path / "one", tmp_path / "two"
    # 30 validation records: the last global batch is uneven, so two processes pad it and must drop the padding.
    args = ("--max-steps", "2", "--val-samples", "30", "--distill-teacher", teacher, "--distill-ema-decay", "0.5")
    run(micro_args(micro_folder, one, *args), env)
    run(micro_args(micro_folder, two, *args), env, launcher=TWO_PROCESSES)
    for line_one, line_two in zip(log_lines(one), log_lines(two)):
        for metric, value in line_one.items():
            if not metric.startswith("perf/") and math.isfinite(value):
                assert line_two[metric] == pytest.approx(value, abs=1e-5), metric
    reference = weights(one)
    for name, tensor in weights(two).items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=1e-4, msg=name)
    if teacher == "previous_epoch":
        # Both processes wrote the global batch: the bank holds the same rows as the one-process run's.
        for name in ("epoch", "image", "text"):
            banks = [np.load(root / "run" / "teacher_bank" / f"{name}.npy") for root in (one, two)]
            np.testing.assert_allclose(banks[1].astype(np.float32), banks[0].astype(np.float32), atol=2e-3)
        assert (np.load(two / "run" / "teacher_bank" / "epoch.npy")[0] == 0).sum() == 32


def assert_killed_and_resumed_run_ends_like_the_whole_run(root: Path, args_for, env, launcher, steps: int,
                                                          kill_after_lines: int = 10):
    run(args_for(root / "whole"), env, launcher=launcher)
    killed = root / "killed"
    # A session of its own, so the kill reaches a launcher's workers too.
    process = subprocess.Popen([*launcher, TRAIN, *args_for(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    log = killed / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= kill_after_lines):
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists()

    run([*args_for(killed), "--resume", "latest"], env, launcher=launcher)
    whole = weights(root / "whole")
    for name, tensor in weights(killed).items():
        assert torch.equal(tensor, whole[name]), name
    assert [line["step"] for line in log_lines(killed) if "train/loss" in line] == list(range(1, steps + 1))
    metrics = [json.loads((folder / "model" / "metrics.json").read_text()) for folder in (root / "whole", killed)]
    assert metrics[0]["skipped_records"] == metrics[1]["skipped_records"]


def test_killed_run_resumed_from_latest_ends_with_the_same_weights(tmp_path, env, micro_folder):
    steps = ["--max-steps", "40", "--checkpoint-every", "3", "--keep-checkpoints", "2"]
    assert_killed_and_resumed_run_ends_like_the_whole_run(
        tmp_path, lambda root: micro_args(micro_folder, root, *steps), env, (sys.executable,), steps=40)


@pytest.mark.parametrize("teacher", ["previous_epoch", "ema"])
def test_killed_run_with_a_teacher_resumes_exactly_across_an_epoch_boundary(tmp_path, env, micro_folder, teacher):
    # 256 pairs / 16 = 16 steps an epoch. Checkpoints at 7 and 14, the epoch's end (16) for the bank, then 21...;
    # the kill comes in the second epoch, after the first epoch's bank was written and the second's begun.
    steps = ["--epochs", "3", "--checkpoint-every", "7", "--keep-checkpoints", "2", "--distill-teacher", teacher,
             "--distill-alpha-max", "0.8", "--distill-ema-decay", "0.9"]
    assert_killed_and_resumed_run_ends_like_the_whole_run(
        tmp_path, lambda root: micro_args(micro_folder, root, *steps), env, (sys.executable,), steps=48,
        kill_after_lines=19)
    soft = [line["train/loss_soft"] for line in log_lines(tmp_path / "killed") if "train/loss_soft" in line]
    assert soft[-1] > 0


class RunsCodeWhenUnpickled:
    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return open, (str(self.proof), "w")


def test_resume_unpickles_no_state_of_its_own(tmp_path, env, micro_folder):
    run(micro_args(micro_folder, tmp_path, "--max-steps", "2", "--checkpoint-every", "1"), env)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    # What Accelerate loads with full pickle for an object registered for checkpointing.
    proof = tmp_path / "code-ran"
    torch.save(RunsCodeWhenUnpickled(proof), checkpoint / "custom_checkpoint_0.pkl")
    done = run(micro_args(micro_folder, tmp_path, "--max-steps", "2", "--resume", str(checkpoint)), env, check=False)
    assert not proof.exists()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"train.py: error: {checkpoint} holds custom_checkpoint_0.pkl, a "
                                                    "pickle this package never writes and does not load; resume from "
                                                    "a checkpoint written by this version")
    assert json.loads((checkpoint / "train_state.json").read_text())["train"]["step"] == 2


def test_resume_from_an_earlier_checkpoint_moves_the_later_ones_aside_and_deletes_none(tmp_path, env, micro_folder):
    steps = ["--max-steps", "3", "--checkpoint-every", "1", "--keep-checkpoints", "3"]
    run(micro_args(micro_folder, tmp_path, *steps), env)
    checkpoints = tmp_path / "run" / "checkpoints"
    before = {name: (checkpoints / name / "model.safetensors").read_bytes() for name in ("step-00000002",
                                                                                          "step-00000003")}
    done = run(micro_args(micro_folder, tmp_path, *steps, "--resume", str(checkpoints / "step-00000001")), env)
    aside = [path for path in checkpoints.iterdir() if path.name.startswith("superseded-after-step-00000001-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in done.stderr
    assert {name: (aside[0] / name / "model.safetensors").read_bytes() for name in before} == before
    assert sorted(path.name for path in checkpoints.iterdir() if path.name.startswith("step-")) == [
        "step-00000001", "step-00000002", "step-00000003"]


def test_resume_refuses_changed_options_and_survives_a_torn_log_and_a_corrupt_newest_checkpoint(
        tmp_path, env, micro_folder):
    # The run is resumed with more --max-steps than it started with; alpha's schedule follows the total steps, so
    # only plain CLIP (alpha 0) trains the first steps alike in both runs.
    steps = ["--checkpoint-every", "2", "--keep-checkpoints", "2", "--distill-alpha-max", "0"]
    run(micro_args(micro_folder, tmp_path / "whole", "--max-steps", "6", *steps), env)
    root = tmp_path / "resumed"
    run(micro_args(micro_folder, root, "--max-steps", "4", *steps), env)
    checkpoints = root / "run" / "checkpoints"
    for option, value in [("--batch-size", "32"), ("--preset", "small")]:
        done = run(micro_args(micro_folder, root, "--max-steps", "6", *steps, "--resume", "latest", option, value),
                   env, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(
            f"train.py: error: {option}: {checkpoints / 'step-00000004'} was trained with")

    # What a kill leaves: half a log line; and the newest checkpoint damaged after it was completed.
    with (root / "run" / "metrics.jsonl").open("a") as log:
        log.write('{"step": 5, "train/lo')
    newest = checkpoints / "step-00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    done = run(micro_args(micro_folder, root, "--max-steps", "6", *steps, "--resume", "latest"), env)
    assert f"resuming from the previous complete checkpoint, {checkpoints / 'step-00000002'}" in done.stderr
    assert [line["step"] for line in log_lines(root) if "train/loss" in line] == [1, 2, 3, 4, 5, 6]
    whole = weights(tmp_path / "whole")
    assert all(torch.equal(tensor, whole[name]) for name, tensor in weights(root).items())


def test_ema_teacher_moves_once_per_optimizer_step_and_stays_out_of_the_export(tmp_path, env, micro_folder):
    run(micro_args(micro_folder, tmp_path, "--max-steps", "1", "--accum-steps", "2", "--checkpoint-every", "1",
                   "--distill-teacher", "ema", "--distill-ema-decay", "0.5"), env)
    start, end = load_file(micro_folder / "model.safetensors"), weights(tmp_path)
    teacher = load_file(tmp_path / "run" / "checkpoints" / "step-00000001" / "teacher.safetensors")
    for name, tensor in teacher.items():  # one update, not one per micro-batch
        torch.testing.assert_close(tensor, 0.5 * start[name] + 0.5 * end[name], msg=name)
    # The exported folder holds CLIP's weights only, and loads into transformers' CLIPModel as they are.
    config = PSDCLIPConfig.from_pretrained(tmp_path / "model")
    assert set(end) == set(CLIPModel(config).state_dict())
    _, info = CLIPModel.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_previous_epoch_teacher_refuses_streamed_data_in_one_line(tmp_path, env, micro_folder):
    write_pairs_with_bad_records(tmp_path / "pairs")
    done = run(micro_args(micro_folder, tmp_path, "--data", str(tmp_path / "pairs" / "pairs.csv"), "--streaming",
                          "--max-steps", "2", "--distill-teacher", "previous_epoch"), env, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: --distill-teacher:")
    assert "ema" in done.stderr.strip().splitlines()[-1]


def test_killed_streaming_run_over_two_processes_resumes_exactly(tmp_path, env, micro_folder):
    write_pairs_with_bad_records(tmp_path / "pairs", usable=40)
    # Streamed pairs have no stable index for a previous-epoch bank: the EMA teacher, resumed over two processes.
    steps = ["--data", str(tmp_path / "pairs" / "pairs.csv"), "--streaming", "--batch-size", "8",
             "--max-steps", "24", "--checkpoint-every", "4", "--distill-teacher", "ema"]
    assert_killed_and_resumed_run_ends_like_the_whole_run(
        tmp_path, lambda root: micro_args(micro_folder, root, *steps), env, TWO_PROCESSES, steps=24)


def write_pairs_with_bad_records(folder: Path, usable: int = 13) -> dict:
    """`usable` good rows, then one corrupt image, one missing image, one empty caption."""
    folder.mkdir()
    rows = []
    for index in range(usable):
        Image.new("RGB", (16, 16), (index * 19, 80, 160)).save(folder / f"{index}.png")
        rows.append((f"{index}.png", f"a picture number {index}"))
    (folder / "corrupt.png").write_bytes(b"not a png at all")
    rows += [("corrupt.png", "a broken picture"), ("missing.png", "a lost picture"), ("0.png", "")]
    table = folder / "pairs.csv"
    table.write_text("image,caption\n" + "".join(f"{image},{caption}\n" for image, caption in rows))
    return {**dict.fromkeys(SKIP_REASONS, 0), "missing_image": 1, "corrupt_image": 1, "empty_caption": 1}


def test_bad_records_are_skipped_and_counted_exactly(tmp_path, env, micro_folder):
    expected = write_pairs_with_bad_records(tmp_path / "pairs")
    run(micro_args(micro_folder, tmp_path, "--data", str(tmp_path / "pairs" / "pairs.csv"), "--epochs", "1"), env)
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["skipped_records"] == expected
    assert metrics["skipped_records_total"] == 3


def test_streamed_bad_records_are_counted_exactly_over_two_processes(tmp_path, env, micro_folder):
    # 12 usable records are exactly 3 steps of 4: every record is read, so every bad row's count arrives.
    expected = write_pairs_with_bad_records(tmp_path / "pairs", usable=12)
    run(micro_args(micro_folder, tmp_path, "--data", str(tmp_path / "pairs" / "pairs.csv"), "--streaming",
                   "--batch-size", "4", "--max-steps", "3", "--distill-teacher", "ema"), env, launcher=TWO_PROCESSES)
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["skipped_records"] == expected


def test_diverging_run_skips_non_finite_steps_then_stops_with_one_line(tmp_path, env, micro_folder):
    done = run(micro_args(micro_folder, tmp_path, "--lr", "1e30", "--warmup-steps", "0", "--max-steps", "20",
                          "--max-nonfinite-steps", "3"), env, launcher=TWO_PROCESSES, check=False)
    # The launcher prints its own report of a failed worker; train.py itself exits with one line.
    assert done.returncode == 1 and f'File "{TRAIN}"' not in done.stderr
    assert "train.py: error: stopped at step 4: 3 non-finite losses in a row" in done.stderr
    # The first step is finite; the next three are not and are skipped.
    losses = [line["train/loss"] for line in log_lines(tmp_path)]
    assert math.isfinite(losses[0]) and len(losses) == 3 and not any(map(math.isfinite, losses[1:]))
    assert not (tmp_path / "model").exists()


def test_weights_that_are_not_finite_are_never_saved(tmp_path, env, micro_folder):
    # Every step of a model with a NaN weight is skipped as non-finite: what `--lr inf` used to do.
    poisoned = tmp_path / "poisoned"
    shutil.copytree(micro_folder, poisoned)
    state = load_file(poisoned / "model.safetensors")
    state["text_projection.weight"][0, 0] = float("nan")
    save_file(state, poisoned / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(micro_folder, tmp_path / "model")  # an earlier model in --output-dir must survive
    args = micro_args(micro_folder, tmp_path, "--max-steps", "3", "--max-nonfinite-steps", "10")
    args[args.index("--init-from") + 1] = str(poisoned)
    for extra, what in [(["--checkpoint-every", "0"], "model"), (["--checkpoint-every", "2"], "checkpoint")]:
        done = run(args + extra, env, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        step = 3 if what == "model" else 2
        assert done.stderr.strip().splitlines()[-1] == (
            f"train.py: error: stopped at step {step}: the weights are not all finite, so no {what} was saved and "
            "the earlier checkpoints are kept (try a lower --lr or --mixed-precision no)")
        assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
        assert all(torch.isfinite(tensor).all() for tensor in weights(tmp_path).values())
        shutil.rmtree(tmp_path / "run")


def test_init_from_a_damaged_foreign_or_pickled_folder(tmp_path, env, micro_folder):
    truncated, foreign, pickled = (tmp_path / name for name in ("truncated", "foreign", "pickled"))
    for folder in (truncated, foreign, pickled):
        shutil.copytree(micro_folder, folder)
    weights_file = truncated / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    for folder, message in [(truncated, f"cannot load a model from {truncated}: "),
                            (foreign, f"{foreign} holds a 'bert' model, not a PSD-CLIP or CLIP one")]:
        args = micro_args(micro_folder, tmp_path, "--max-steps", "1")
        args[args.index("--init-from") + 1] = str(folder)
        done = run(args, env, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"train.py: error: --init-from: {message}")
    args = micro_args(micro_folder, tmp_path, "--max-steps", "1")
    args[args.index("--init-from") + 1] = str(pickled)
    done = run(args, env)
    assert (f"{pickled} holds its weights only as pytorch_model.bin, a pickle: loading them with torch's restricted "
            "unpickler (weights_only=True)") in done.stderr
    # One step moves a weight by at most the learning rate: these are the pickled weights, not a new model's.
    start, trained = load_file(micro_folder / "model.safetensors"), weights(tmp_path)
    for name in ("text_model.embeddings.position_embedding.weight", "visual_projection.weight"):
        torch.testing.assert_close(trained[name], start[name], atol=2e-3, rtol=0)


def test_missing_data_and_bad_options_are_one_line_errors_with_status_2(tmp_path, env, micro_folder):
    done = run(micro_args(micro_folder, tmp_path, "--data", str(tmp_path / "nowhere.csv")), env, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: --data: no such file")

    done = run(micro_args(micro_folder, tmp_path, "--accum-steps", "3"), env, check=False)
    assert done.returncode == 2 and "--batch-size 16 must split evenly" in done.stderr


def test_output_dir_that_would_destroy_something_is_refused_before_training(tmp_path, env, micro_folder, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.csv").write_text("image,caption\n")
    (tmp_path / "a-file").write_text("mine")
    for output, run_dir, message in [
        ("data", "run", "holds 'pairs.csv'"), ("a-file", "run", "is a file"), (".", "run", "current folder"),
        (str(tmp_path.parent), "run", "current folder"), ("runs/x", "runs/x", "separate folders"),
        ("runs/x/model", "runs/x", "separate folders"), ("runs/x", "runs/x/run", "separate folders"),
        ("/proc/psdclip-nowhere/model", "run", "cannot create /proc/psdclip-nowhere/model"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parse_options(["--output-dir", output, "--run-dir", run_dir])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and len(error.splitlines()) == 1, error
        assert error.startswith("train.py: error: --output-dir") and message in error, error

    # End to end: one line, nothing trained, the user's folder as it was.
    done = run(micro_args(micro_folder, tmp_path, "--max-steps", "1", "--output-dir", str(tmp_path / "data")), env,
               check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: error: --output-dir")
    assert not (tmp_path / "run").exists()
    assert [path.name for path in (tmp_path / "data").iterdir()] == ["pairs.csv"]


def test_bf16_gradient_checkpointing_and_feature_caching_train(tmp_path, env, micro_folder):
    run(micro_args(micro_folder, tmp_path, "--max-steps", "3", "--mixed-precision", "bf16",
                   "--gradient-checkpointing", "--accum-steps", "2"), env)
    losses = [line["train/loss"] for line in log_lines(tmp_path) if "train/loss" in line]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    PSDCLIPModel.from_pretrained(tmp_path / "model")


def test_init_from_folders_that_cannot_train_are_refused_before_training_and_a_weightless_teacher_is_named(
        tmp_path, micro_folder, caplog):
    from accelerate import PartialState

    from modeling_psdclip.training.options import OptionError
    from modeling_psdclip.training.building import build_model_and_processor

    PartialState()  # what the run's logger needs
    pickled = copy_with_refused_pickle(micro_folder, tmp_path / "pickled")
    projection, cropping = (shutil.copytree(micro_folder, tmp_path / name) for name in ("projection", "cropping"))
    config = json.loads((projection / "config.json").read_text())
    (projection / "config.json").write_text(json.dumps({**config, "projection_dim": 8}))
    processor = json.loads((cropping / "processor_config.json").read_text())
    processor["image_processor"]["crop_size"] = {"height": 12, "width": 12}
    (cropping / "processor_config.json").write_text(json.dumps(processor))
    no_config, listed, bad_tokenizer = (shutil.copytree(micro_folder, tmp_path / name)
                                        for name in ("no-config", "listed", "bad-tokenizer"))
    (no_config / "config.json").unlink()
    (listed / "config.json").write_text("[1, 2, 3]")
    (bad_tokenizer / "tokenizer.json").write_text("garbage")  # used to train with the shipped tokenizer instead
    for folder, message in [
        (no_config, f"--init-from: {no_config} is not a model folder: it has no config.json"),
        (listed, f"--init-from: {listed} is not a model folder: its config.json holds a JSON list, not an object"),
        (bad_tokenizer, f"--init-from: the processor in {bad_tokenizer} does not load from its "),
        (pickled, "of more than tensors, which torch's restricted unpickler refuses to load; if you trust where it "
                  "came from, convert it to model.safetensors"),
        (projection, "checkpoint weight text_projection.weight has shape (16, 32), where the config makes it (8, 32)"),
        (cropping, "crops images to 12x12 px, its model takes 16x16 px"),
    ]:
        options = parse_options(micro_args(micro_folder, tmp_path, "--init-from", str(folder)))
        with pytest.raises(OptionError, match=re.escape(message)) as refused:
            build_model_and_processor(options)
        assert len(str(refused.value).splitlines()) == 1

    baseline = shutil.copytree(micro_folder, tmp_path / "baseline")
    config = json.loads((baseline / "config.json").read_text())
    (baseline / "config.json").write_text(json.dumps({**config, "distill_alpha_max": 0.0}))
    for extra, warned in [(["--distill-teacher", "ema"], True), (["--distill-teacher", "ema", "--distill-alpha-max",
                                                                    "0.5"], False), ([], False)]:
        caplog.clear()
        build_model_and_processor(parse_options(micro_args(micro_folder, tmp_path, "--init-from", str(baseline),
                                                           *extra)))
        named = [record.message for record in caplog.records if "pass --distill-alpha-max" in record.message]
        assert len(named) == warned, caplog.text


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 autocast needs no refusal with a GPU")
def test_fp16_without_a_gpu_is_refused_before_training(tmp_path, env):
    # Accelerate trained such a run in fp32 without a word, and its card said fp16.
    done = run(["--mixed-precision", "fp16", "--output-dir", str(tmp_path / "model"), "--run-dir",
                str(tmp_path / "run")], env, check=False)
    assert done.returncode == 2 and done.stderr.strip() == (
        "train.py: error: --mixed-precision fp16 needs a GPU and this machine has none; on a CPU use bf16 or no")
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()


def test_a_model_folder_that_cannot_be_written_at_the_end_says_the_checkpoints_are_kept(tmp_path):
    from modeling_psdclip.model_folder import ModelFolderError
    from modeling_psdclip.training.checkpoints import CheckpointManager
    from modeling_psdclip.training.stops import exit_status

    options = parse_options(["--output-dir", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run")])
    CheckpointManager(tmp_path / "run" / "checkpoints", 2).save(FakeAccelerator(), 40, {})
    error = ModelFolderError(f"cannot write the model folder {tmp_path / 'model'}: No space left on device")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000040"
    assert exit_status(error, options) == (1, (
        f"error: cannot write the model folder {tmp_path / 'model'}: No space left on device; the checkpoints are "
        f"kept: rerun with --resume latest to go on from step 40 ({checkpoint})"))
