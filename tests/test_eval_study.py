"""The study end to end on a micro configuration: trains through train.py, evaluates, reports, resumes."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eval.__main__ import main
from eval.study import load_study, planned_runs
from eval.errors import EvalInputError
from modeling_psdclip import PSDCLIPModel
from modeling_psdclip.processing import build_processor
from tests.test_train import micro_model_config


@pytest.fixture
def micro_study(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    folder = tmp_path / "micro"
    torch.manual_seed(0)
    PSDCLIPModel(micro_model_config()).save_pretrained(folder)
    build_processor(image_size=16, context_length=16).save_pretrained(folder)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "output": str(tmp_path / "out"),
        "seeds": [0],
        "methods": {"clip": {"distill_alpha_max": 0.0}, "psd-ema": {"distill_teacher": "ema"}},
        "noise": {"heavy": {"p_mismatch": 0.3, "p_partial": 0.1, "p_generic": 0.0}},
        "cells": [{"noise": "heavy", "train_samples": 64}],
        "train": {"init_from": str(folder), "batch_size": 16, "max_steps": 6, "eval_every": 3, "val_samples": 32,
                  "warmup_steps": 1, "log_every": 2, "checkpoint_every": 0},
        "eval": {"num_samples": 48, "noisy_pairs": 64, "batch_size": 64},
        "quick": {"seeds": [0], "train": {"max_steps": 4}},
    }))
    return config, tmp_path / "out"


def test_micro_study_trains_evaluates_reports_and_resumes(micro_study, capsys):
    config, out = micro_study
    assert main(["study", "--config", str(config), "--quick"]) == 0
    report = (out / "report.md").read_text()
    assert "heavy noise, 64 pairs" in report and "PSD minus CLIP" in report and "psd-ema" in report
    for figure in ("metrics.png", "val_loss.png", "robustness.png"):
        assert (out / figure).stat().st_size > 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [run["run"]["method"] for run in runs] == ["clip", "psd-ema"]
    for run in runs:
        assert 0 <= run["zeroshot_shape"] <= 1 and 0 <= run["noisy_pair_auroc"] <= 1
        assert [step for step, _ in run["val_loss_curve"]] == [3, 4]
    # EMA costs one more forward: 4 FLOP units a sample instead of 3.
    assert runs[1]["training_flops"] == pytest.approx(runs[0]["training_flops"] * 4 / 3)
    assert runs[1]["diagnostics"]["teacher_share"] == 1.0

    # A deleted run is trained again; the finished one is not touched.
    ema_run = out / "runs" / "heavy-64-psd-ema-seed0"
    shutil.rmtree(ema_run)
    kept = (out / "runs" / "heavy-64-clip-seed0" / "eval.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["study", "--config", str(config), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "training heavy-64-psd-ema-seed0" in printed and "training heavy-64-clip-seed0" not in printed
    assert (out / "runs" / "heavy-64-clip-seed0" / "eval.json").stat().st_mtime_ns == kept
    assert (ema_run / "eval.json").is_file()


def test_study_files_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\nmethods: {psd: {}}\nnoise: {clean: {}}\ncells: [{noise: clean, train_samples: 8}]\n")
    with pytest.raises(EvalInputError, match="clip"):
        load_study(bad)
    bad.write_text("seed: [0]\n")
    with pytest.raises(EvalInputError, match="unknown key 'seed'"):
        load_study(bad)
    shipped = load_study(Path(__file__).resolve().parents[1] / "studies" / "noise.yaml", quick=True)
    methods = {run.method for run in planned_runs(shipped)}
    assert methods == {"clip", "psd-previous-epoch", "psd-ema"} and len(shipped["seeds"]) >= 3
