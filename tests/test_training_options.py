"""train.py's options: YAML and flags, one-line refusals, the shipped configs, `--help` before any heavy import."""

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
