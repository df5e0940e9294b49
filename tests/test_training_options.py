"""train.py's options: YAML and flags, one-line refusals, the shipped configs, `--help` before any heavy import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_psdclip.training.options import parse_options

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")


def test_options_come_from_yaml_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("batch-size: 64\nmixed_precision: bf16\ndistill_alpha_max: 0\n")
    options = parse_options(["--config", str(config), "--batch-size", "32"])
    assert (options.batch_size, options.mixed_precision, options.distill_alpha_max) == (32, "bf16", 0.0)
    assert options.run_dir == str(Path("runs") / "psdclip-tiny")

    for argv, option in [(["--batch-size", "0"], "--batch-size"), (["--lr", "x"], "--lr"),
                         (["--distill-alpha-max", "1.5"], "--distill-alpha-max"),
                         (["--mixed-precision", "fp8"], "--mixed-precision"),
                         (["--distill-temperature", "0"], "--distill-temperature"),
                         (["--weight-decay", "nan"], "--weight-decay"), (["--lr", "nan"], "--lr"),
                         (["--lr", "inf"], "--lr"), (["--max-grad-norm", "inf"], "--max-grad-norm"),
                         (["--peak-tflops", "inf"], "--peak-tflops"),
                         (["--p-mismatch", "0.6", "--p-partial", "0.6"], "--p-partial")]:
        with pytest.raises(SystemExit) as exited:
            parse_options(argv)
        assert exited.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and option in error

    for text, option in [("batch_sise: 64\n", "batch_sise"), ("batch_size:\n", "--batch-size"),
                         ("report_to:\n", "--report-to"), ("lr: .inf\n", "--lr")]:
        config.write_text(text)
        with pytest.raises(SystemExit) as exited:
            parse_options(["--config", str(config)])
        error = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and len(error.splitlines()) == 1 and option in error


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_example_configs_are_valid(config):
    parse_options(["--config", str(config)])


def test_help_lists_every_option_with_its_default():
    done = subprocess.run([sys.executable, TRAIN, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for text in ("--accum-steps", "--resume", "--push-to-hub", "--mixed-precision", "(default: 128)",
                 "{small,tiny,vit-b-16,vit-b-32}", "{previous_epoch,ema,start,uniform}", "{mix,mix_by_doubt,reweight}"):
        assert text in done.stdout


def test_choices_read_from_the_configuration_source_are_the_configurations_own():
    from modeling_psdclip.configuration_psdclip import DISTILL_SCHEDULES, DISTILL_TARGETS, DISTILL_TEACHERS, PRESETS
    from modeling_psdclip.training.options import CHOICES

    assert CHOICES == {"PRESETS": tuple(PRESETS), "DISTILL_SCHEDULES": DISTILL_SCHEDULES,
                       "DISTILL_TARGETS": DISTILL_TARGETS, "DISTILL_TEACHERS": DISTILL_TEACHERS}


def refusal(argv, capsys) -> str:
    """The one line parse_options exits with (status 2)."""
    with pytest.raises(SystemExit) as exited:
        parse_options(argv)
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(error.splitlines()) == 1, error
    return error


def test_a_config_that_is_no_options_file_is_refused_in_one_line_without_reading_it(tmp_path, capsys):
    # A FIFO with no writer: the old reader blocked in open() for ever. A child process, so that a hang is a failure.
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, TRAIN, "--config", str(fifo)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"train.py: error: --config: {fifo} is not a regular file"

    big = tmp_path / "big.yaml"  # valid YAML, but no options file is a mebibyte long
    big.write_text("# " + "x" * 2**20 + "\nbatch_size: 64\n")
    assert "is larger than 1048576 bytes" in refusal(["--config", str(big)], capsys)

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89\xe6\x00\x01 batch_size: 64")
    assert refusal(["--config", str(binary)], capsys) == \
        f"train.py: error: --config: {binary} is not UTF-8 text (byte 0 is 0x89)"


def test_a_config_that_gives_an_option_twice_is_refused_naming_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 1\nlr: 0.01\nmax_steps: 3\n")
    assert refusal(["--config", str(config)], capsys) == (
        f"train.py: error: --config: {config} is not valid YAML: found duplicate key 'max_steps' (line 3, column 1)")
    config.write_text("max-steps: 1\nmax_steps: 3\n")
    assert refusal(["--config", str(config)], capsys) == f"train.py: error: --config: {config} gives --max-steps twice"
    # A merge key is no duplicate: the keys beside it override the merged ones.
    from modeling_psdclip.utils import load_yaml_strict

    assert load_yaml_strict("a: &d {x: 1, y: 2}\nb: {<<: *d, x: 3}\n")["b"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(("argv", "message"), [
    (["--adam-beta1", "1"], "--adam-beta1 must be in [0, 1), got 1.0"),
    (["--adam-beta2", "1"], "--adam-beta2 must be in [0, 1), got 1.0"),
    (["--distill-ema-decay", "1"], "--distill-ema-decay must be in [0, 1), got 1.0"),
    (["--run-dir", ""], "--run-dir must not be empty"),
    (["--init-from", " "], "--init-from must not be empty"),
    (["--config", ""], "--config must not be empty"),
    (["--val-data", ""], "--val-data must not be empty"),
])
def test_out_of_range_decays_and_empty_paths_are_refused_in_one_line(tmp_path, capsys, argv, message):
    error = refusal(["--output-dir", str(tmp_path / "model"), *argv], capsys)
    assert error == f"train.py: error: {message}"
