"""The study end to end on micro configurations (synthetic and OpenMoji cells): trains in-process through the
training package, evaluates, reports, resumes."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoProcessor
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from eval.errors import EvalInputError
from modeling_psdclip.data.openmoji import build_openmoji
from studies.__main__ import build_parser, main
from studies.report import write_study_report
from studies.plan import load_study, planned_runs
from studies.training_runs import check_training_options
from modeling_psdclip import PSDCLIPModel
from modeling_psdclip.data import ImageTextCollator, load_image_text_dataset
from tests.support import EMOJI_TEST, copy_with_refused_pickle, save_micro_folder, write_svgs

REPO = Path(__file__).resolve().parents[1]
METHODS = {"clip": {"distill_alpha_max": 0.0}, "psd-ema": {"distill_teacher": "ema"}}


@pytest.fixture
def micro_folder(tmp_path, monkeypatch):
    """A micro PSD-CLIP folder every run starts from; the synthetic data is cached in the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return save_micro_folder(tmp_path / "micro")


@pytest.fixture
def micro_study(tmp_path, micro_folder):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "output": str(tmp_path / "out"),
        "seeds": [0],
        "methods": METHODS,
        "noise": {"heavy": {"p_mismatch": 0.3, "p_partial": 0.1, "p_generic": 0.0}},
        "cells": [{"noise": "heavy", "train_samples": 64}],
        "train": {"init_from": str(micro_folder), "batch_size": 16, "max_steps": 6, "eval_every": 3, "val_samples": 32,
                  "warmup_steps": 1, "log_every": 2, "checkpoint_every": 0},
        "eval": {"num_samples": 48, "noisy_pairs": 64, "batch_size": 64},
        "quick": {"seeds": [0], "train": {"max_steps": 4}},
    }))
    return config, tmp_path / "out"


def test_micro_study_trains_evaluates_reports_and_resumes(micro_study, capsys):
    config, out = micro_study
    assert main(["--config", str(config), "--quick"]) == 0
    report = (out / "report.md").read_text()
    assert "heavy noise, 64 pairs" in report and "Minus clip" in report and "psd-ema" in report
    for figure in ("metrics.png", "val_loss.png", "diagnostics.png", "robustness.png"):
        assert (out / figure).stat().st_size > 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [run["run"]["method"] for run in runs] == ["clip", "psd-ema"]
    for run in runs:
        assert 0 <= run["zeroshot_shape"] <= 1 and 0 <= run["noisy_pair_auroc"] <= 1
        assert [step for step, _ in run["val_loss_curve"]] == [3, 4]
    # EMA costs one more forward: 4 FLOP units a sample instead of 3.
    assert runs[1]["training_flops"] == pytest.approx(runs[0]["training_flops"] * 4 / 3)
    assert runs[1]["diagnostics"]["teacher_share"] == 1.0  # the mean over the steps that distilled
    assert [step for step, _ in runs[1]["diagnostic_curves"]["paired_probability"]] == [2, 4]

    # A deleted run is reported as missing by --finished-only, which trains nothing; then it is trained again and
    # the finished one is not touched.
    ema_run = out / "runs" / "heavy-64-psd-ema-seed0"
    shutil.rmtree(ema_run)
    kept = (out / "runs" / "heavy-64-clip-seed0" / "eval.json").stat().st_mtime_ns
    assert main(["--config", str(config), "--quick", "--finished-only"]) == 0
    assert not ema_run.exists()
    assert [run["run"]["method"] for run in json.loads((out / "results.json").read_text())["runs"]] == ["clip"]
    capsys.readouterr()
    assert main(["--config", str(config), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "training heavy-64-psd-ema-seed0" in printed and "training heavy-64-clip-seed0" not in printed
    assert (out / "runs" / "heavy-64-clip-seed0" / "eval.json").stat().st_mtime_ns == kept
    assert (ema_run / "eval.json").is_file()


def test_micro_noisy_correspondence_study_fine_tunes_one_starting_model(tmp_path, micro_folder):
    """The shipped noisy-correspondence study at micro size: a starting model trained once, every run fine-tuned
    from it, label smoothing and PSD compared with CLIP, recalls each way and AUROC on the fine-tuning pairs."""
    study = yaml.safe_load((REPO / "studies" / "noisy_correspondence.yaml").read_text())
    micro = {"batch_size": 16, "max_steps": 4, "eval_every": 2, "val_samples": 32, "warmup_steps": 1, "log_every": 2}
    study.update({
        "output": str(tmp_path / "out"), "seeds": [0], "cells": [{"noise": "60%", "train_samples": 48}],
        "methods": {name: study["methods"][name] for name in ("clip", "smoothing", "psd-previous-epoch")},
        "pretrain": {**study["pretrain"], **micro, "init_from": str(micro_folder), "train_samples": 64,
                     "checkpoint_every": 0},
        "train": {**study["train"], **micro},
        "eval": {**study["eval"], "num_samples": 32, "noisy_pairs": 24, "batch_size": 64},
    })
    study.pop("quick")
    config = tmp_path / "nc.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main(["--config", str(config)]) == 0
    out = tmp_path / "out"
    starting = out / "pretrained" / "model"
    assert (starting / "metrics.json").is_file() and (out / "pretrained" / "eval.json").is_file()
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [run["run"]["method"] for run in runs] == ["clip", "smoothing", "psd-previous-epoch"]
    for run in runs:
        trained = yaml.safe_load((out / "runs" / f"60%-48-{run['run']['method']}-seed0" / "train.yaml").read_text())
        assert trained["init_from"] == str(starting) and trained["p_mismatch"] == 0.6
        assert all(0 <= run[key] <= 1 for key in ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5", "noisy_pair_auroc"))
        assert "linear_probe_shape" not in run and "shifted_accuracy" not in run
    # The uniform teacher's target over a batch of 16 has entropy ln 16 and gives each pair 1/16.
    smoothing = runs[1]["diagnostics"]
    assert smoothing["teacher_entropy"] == pytest.approx(math.log(16), abs=1e-4)
    assert smoothing["paired_probability"] == pytest.approx(1 / 16, abs=1e-5)
    report = (out / "report.md").read_text()
    assert "Minus clip" in report and "Minus smoothing" in report and "before fine-tuning it scores" in report

    # A follow-up study names only what it changes and fine-tunes the first one's starting model, training none.
    follow_up = tmp_path / "follow-up.yaml"
    follow_up.write_text(yaml.safe_dump({"base": config.name, "output": str(tmp_path / "out2"),
                                         "starting_model": str(starting), "methods": {"clip": METHODS["clip"]}}))
    assert main(["--config", str(follow_up)]) == 0
    trained = yaml.safe_load((tmp_path / "out2" / "runs" / "60%-48-clip-seed0" / "train.yaml").read_text())
    assert trained["init_from"] == str(starting) and trained["max_steps"] == micro["max_steps"]
    assert not (tmp_path / "out2" / "pretrained" / "model").exists()
    assert f"starting model (`{starting}`)" in (tmp_path / "out2" / "report.md").read_text()
    again = json.loads((tmp_path / "out2" / "results.json").read_text())["runs"][0]
    assert again["i2t_r1"] == runs[0]["i2t_r1"]  # the same run, seed and starting model: the same model


def test_micro_shift_study_learns_in_a_new_world_and_measures_what_it_forgets(tmp_path, micro_folder):
    """The shipped fine-tuning-shift study at micro size: the start trained in the standard world, runs fine-tuned on
    sketches; the methods that train nothing (the start, WiSE-FT with either choice of its coefficient) beside
    trained ones; every run measured in the new world and the old."""
    study = yaml.safe_load((REPO / "studies" / "fine_tuning_shift.yaml").read_text())
    micro = {"batch_size": 16, "max_steps": 4, "eval_every": 2, "val_samples": 32, "warmup_steps": 1, "log_every": 2}
    names = ("clip", "start", "wise-ft", "wise-ft-oracle", "clip-early-stop", "frozen-start", "reweight-ema", "psd-ema-doubt")
    study.update({
        "output": str(tmp_path / "out"), "seeds": [0], "cells": [{"noise": noise, "train_samples": 48, "world": "sketch"}
                                                                 for noise in ("0%", "60%")],
        "methods": {name: study["methods"][name] for name in names},
        "pretrain": {**study["pretrain"], **micro, "init_from": str(micro_folder), "train_samples": 64,
                     "checkpoint_every": 0},
        "train": {**study["train"], **micro, "lr": 5e-3},  # enough for four steps to move the micro model's recall
        "eval": {**study["eval"], "num_samples": 32, "noisy_pairs": 24, "batch_size": 64},
    })
    study["methods"]["clip"]["checkpoint_every"] = 2
    study.pop("quick")
    config = tmp_path / "shift.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main(["--config", str(config)]) == 0
    out = tmp_path / "out"
    records = json.loads((out / "results.json").read_text())["runs"]
    assert [run["run"]["method"] for run in records] == [*names, *names]
    runs = {run["run"]["method"]: run for run in records if run["run"]["noise"] == "60%"}
    trained = yaml.safe_load((out / "runs" / "60%-sketch-48-clip-seed0" / "train.yaml").read_text())
    assert trained["synthetic_world"] == "sketch" and trained["p_mismatch"] == 0.6
    assert not (out / "runs" / "60%-sketch-48-start-seed0" / "model").exists()  # evaluated, never trained
    for run in runs.values():
        assert all(0 <= run[key] <= 1 for key in ("i2t_r1", "t2i_r1", "old_i2t_r1", "old_t2i_r1", "old_zeroshot_shape"))
    starting = json.loads((out / "pretrained" / "eval.json").read_text())
    assert runs["start"]["i2t_r1"] == starting["i2t_r1"] and runs["start"]["old_i2t_r1"] == starting["old_i2t_r1"]
    for name, choice in (("wise-ft", "noisy"), ("wise-ft-oracle", "clean")):
        scores = dict(runs[name]["choice_scores"])
        assert sorted(scores) == [step / 10 for step in range(11)]
        assert scores[runs[name]["wise_ft_coefficient"]] == max(scores.values())
    # The oracle chooses on the split it is reported on: nothing on the grid scores above it there.
    assert runs["wise-ft-oracle"]["retrieval_r1"] == max(dict(runs["wise-ft-oracle"]["choice_scores"]).values())
    at_one = runs["wise-ft-oracle"]["choice_scores"][-1][1]  # coefficient 1 is CLIP's fine-tuned model
    assert at_one == pytest.approx(runs["clip"]["retrieval_r1"], abs=1e-6)
    # Early stopping chose among CLIP's kept checkpoints (micro size: every 2 steps) and its final model.
    assert [step for step, _ in runs["clip-early-stop"]["choice_scores"]] == [2, 4]
    stopped = dict(runs["clip-early-stop"]["choice_scores"])
    assert stopped[runs["clip-early-stop"]["stopped_at_step"]] == max(stopped.values())
    assert runs["frozen-start"]["diagnostics"]["teacher_share"] == 1.0
    assert runs["reweight-ema"]["diagnostics"]["loss_soft"] == 0.0 < runs["psd-ema-doubt"]["diagnostics"]["loss_soft"]
    report = (out / "report.md").read_text()
    assert "old retrieval R@1" in report and "WiSE-FT coefficient" in report
    assert "psd-ema-doubt against every other method" in report
    assert (out / "learning_and_forgetting.png").stat().st_size > 0

    broken = {**study, "methods": {"clip": study["methods"]["clip"], "wise": {"evaluate": "wise_ft", "of": "start",
                                                                             "choose_on": "noisy"}}}
    config.write_text(yaml.safe_dump(broken))
    with pytest.raises(EvalInputError, match="must be a trained method"):
        load_study(config)


def test_a_study_extends_its_base_key_by_key(tmp_path):
    """The shipped ablation names only its methods, cells and output; the rest comes from its base, with `train`,
    `eval` and the quick size merged key by key. A base chain that loops is a one-line error."""
    base = load_study(REPO / "studies" / "noisy_correspondence.yaml", quick=True)
    ablation = load_study(REPO / "studies" / "noisy_correspondence_ablation.yaml", quick=True)
    assert ablation["train"] == base["train"] and ablation["eval"] == base["eval"]
    assert ablation["seeds"] == base["seeds"] and ablation["noise"] == base["noise"]
    assert ablation["starting_model"] == f"{base['output']}/pretrained/model"
    assert ablation["output"] != base["output"]  # its report must not replace the base study's
    assert [cell["train_samples"] for cell in ablation["cells"]] == [512, 512, 512]
    assert ablation["methods"]["psd-ema-strong"]["distill_alpha_max"] == 0.9 and len(ablation["methods"]) == 5
    # A file's own keys beat its base's quick ones; null removes a key.
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "base": str(REPO / "studies" / "noisy_correspondence.yaml"), "output": "out/child", "train": {"lr": 0.5},
        "pretrain": None, "starting_model": "somewhere", "cells": [{"noise": "0%", "train_samples": 32}]}))
    child = load_study(tmp_path / "child.yaml", quick=True)
    assert child["output"] == "out/child" and child["cells"] == [{"noise": "0%", "train_samples": 32}]
    assert child["train"] == {**base["train"], "lr": 0.5} and "pretrain" not in child
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(EvalInputError, match="extends it in turn"):
        load_study(tmp_path / "a.yaml")


def final_loss(model_folder: Path, data: Path, split: str) -> float:
    """The saved model's CLIP loss over a whole split as one batch, prepared as train.py validates."""
    model = PSDCLIPModel.from_pretrained(model_folder).eval()
    batch = ImageTextCollator(AutoProcessor.from_pretrained(model_folder), train=False)(
        list(load_image_text_dataset(str(data), split=split)))
    with torch.no_grad():
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"])
    return image_text_contrastive_loss(output.logits_per_image).item()


def test_micro_openmoji_study_trains_on_the_folder_and_reports_its_metrics(tmp_path, micro_folder, capsys):
    pytest.importorskip("resvg_py")
    pytest.importorskip("emoji")
    (tmp_path / "svgs").mkdir()
    data = build_openmoji(tmp_path / "openmoji-noisy", image_size=16, svg_dir=write_svgs(tmp_path / "svgs"),
                          emoji_test=EMOJI_TEST, p_mismatch=0.5)
    out = tmp_path / "out"
    study = {"output": str(out), "seeds": [0], "methods": METHODS, "noise": {"heavy": {}},
             "cells": [{"noise": "heavy", "data": str(tmp_path / "not-built")}],
             "train": {"init_from": str(micro_folder), "batch_size": 3, "max_steps": 4, "eval_every": 2,
                       "warmup_steps": 1, "log_every": 2, "checkpoint_every": 0}}
    config = tmp_path / "openmoji.yaml"
    config.write_text(yaml.safe_dump(study))
    assert main(["--config", str(config)]) == 2
    assert f"python -m modeling_psdclip.data.openmoji {tmp_path / 'not-built'} --p-mismatch P" in capsys.readouterr().err

    config.write_text(yaml.safe_dump({**study, "cells": [{"noise": "heavy", "data": str(data)}]}))
    assert main(["--config", str(config)]) == 0
    report = (out / "report.md").read_text()
    assert "## heavy noise, openmoji-noisy" in report and "Minus clip" in report
    header = next(line for line in report.splitlines() if line.startswith("| method | zero-shot"))
    assert header == ("| method | zero-shot group | zero-shot subgroup | retrieval R@1 | image→text R@1 | text→image R@1 | "
                      "image→text R@5 | text→image R@5 | noisy-pair AUROC | val loss |")
    assert not (out / "robustness.png").exists() and (out / "metrics.png").stat().st_size > 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [run["run"]["method"] for run in runs] == ["clip", "psd-ema"]
    for run in runs:
        for key in ("zeroshot_group", "zeroshot_subgroup", "retrieval_r1", "noisy_pair_auroc"):
            assert 0 <= run[key] <= 1
        assert [step for step, _ in run["val_loss_curve"]] == [2, 4]
        folder = out / "runs" / f"heavy-openmoji-noisy-{run['run']['method']}-seed0" / "model"
        # The validation split's two pairs, not the training split's three.
        assert run["val_loss"] == pytest.approx(final_loss(folder, data, "validation"), abs=1e-4)
        assert run["val_loss"] != pytest.approx(final_loss(folder, data, "train"), abs=1e-4)
        assert run["training_flops"] > 0 and "zeroshot_shape" not in run
    trained = yaml.safe_load((out / "runs" / "heavy-openmoji-noisy-psd-ema-seed0" / "train.yaml").read_text())
    assert trained["data"] == trained["val_data"] == str(data)
    assert "train_samples" not in trained


def test_report_of_synthetic_and_data_cells_marks_what_a_cell_does_not_measure(tmp_path):
    def record(method, seed, cell, accuracy):
        measured = ({"zeroshot_shape": accuracy, "shifted_accuracy": accuracy / 2} if "train_samples" in cell else
                    {"zeroshot_group": accuracy, "zeroshot_subgroup": accuracy / 3})
        return {"run": {"method": method, "noise": "heavy", "seed": seed, "train_samples": None, **cell},
                "retrieval_r1": accuracy, "noisy_pair_auroc": 0.6, "val_loss": 2.0, "val_loss_curve": [[4, 2.0]],
                "diagnostics": {}, "training_flops": 1e9, **measured}

    cells = [{"train_samples": 64}, {"data": "outputs/openmoji-noisy"}]
    results = [record(method, seed, cell, 0.3 + 0.1 * seed + (method == "psd-ema") * 0.05)
               for cell in cells for seed in (0, 1) for method in METHODS]
    report = write_study_report({"train": {}}, results, tmp_path).read_text()
    sections = report.split("## heavy noise, ")
    header = "| method | zero-shot shape | zero-shot group | zero-shot subgroup | retrieval R@1 | shifted zero-shot "
    assert sections[1].startswith("64 pairs") and header in sections[1]
    # Zero-shot shape is bimodal over seeds: the report counts the seeds that reach 0.5.
    assert "| clip | 0.350 ± 0.071 (0/2 ≥ 0.5) | – | – | 0.350 ± 0.071 | 0.175 ± 0.035 |" in sections[1]
    assert sections[2].startswith("openmoji-noisy") and "| clip | – | 0.350 ± 0.071 | 0.117 ± 0.024 |" in sections[2]
    assert "| psd-ema | – | +0.050 [" in sections[2]  # a difference only where both methods measure it
    assert "p=0.50 2/2↑" in sections[2]  # the exact sign-flip test over 2 seeds, and the seeds PSD is higher in
    assert "fitted over all 4 models evaluated on shifted data" in report
    assert [record.get("effective_robustness") is not None for record in results] == [True] * 4 + [False] * 4
    assert (tmp_path / "robustness.png").stat().st_size > 0


def test_report_sets_the_recommended_method_against_every_other_and_computes_the_gain_kept(tmp_path):
    """Gain kept = (R@1 - R@1(start)) / (R@1(clip, clean) - R@1(start)) per seed, and the recommended method minus
    each other one, paired by seed; here with R@1s chosen by hand."""
    r1 = {("0%", "start"): 0.1, ("0%", "clip"): 0.5, ("0%", "psd"): 0.45,
          ("60%", "start"): 0.1, ("60%", "clip"): 0.2, ("60%", "psd"): 0.3}

    def record(noise, method, seed):
        value = r1[noise, method] + 0.1 * seed * (method != "start")
        return {"run": {"method": method, "noise": noise, "seed": seed, "train_samples": 64, "world": "sketch"},
                "i2t_r1": value, "t2i_r1": value / 2 + 0.05, "old_retrieval_r1": 0.4, "retrieval_r1": value}

    results = [record(noise, method, seed) for noise in ("0%", "60%") for seed in (0, 1)
               for method in ("clip", "start", "psd")]
    study = {"train": {}, "recommended": "psd", "noise": {"0%": {"p_mismatch": 0.0}, "60%": {"p_mismatch": 0.6}}}
    report = write_study_report(study, results, tmp_path).read_text()
    against, kept = report.split("## psd against every other method")[1].split("## Share of clean CLIP's gain kept")
    noisy_against = against.split("60% noise, 64 pairs of sketch:")[1]
    assert "| clip | +0.100 [+0.100, +0.100] * p=0.50 2/2↑ |" in noisy_against
    # Seed 0: (0.3 - 0.1) / (0.5 - 0.1) = 0.5; seed 1: (0.4 - 0.1) / (0.6 - 0.1) = 0.6 (image->text).
    noisy_kept = kept.split("60% noise, 64 pairs of sketch:")[1]
    assert "| psd | 0.550 ± 0.071 |" in noisy_kept and "| start | 0.000 ± 0.000 |" in noisy_kept
    assert "| clip | 1.000 ± 0.000 |" in kept.split("60% noise")[0]  # clean CLIP keeps all of its own gain


def test_a_run_that_fails_is_a_failure_naming_its_log_not_an_input_error(micro_study, capsys):
    config, out = micro_study
    study = yaml.safe_load(config.read_text())
    (out.parent / "no-model").mkdir()  # a folder, so train.py's options pass, but no model in it
    study["train"]["init_from"] = str(out.parent / "no-model")
    config.write_text(yaml.safe_dump(study))
    assert main(["--config", str(config)]) == 1
    log = out / "runs" / "heavy-64-clip-seed0" / "train.log"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m studies: error: run heavy-64-clip-seed0 failed (exit 2; log {log}): "
        f"python -m modeling_psdclip.training: error: --init-from: {out.parent / 'no-model'} is not a model folder: it "
        "has no config.json")


def test_a_study_file_with_a_key_twice_or_that_is_no_regular_file_is_one_line(tmp_path, capsys):
    twice = tmp_path / "twice.yaml"
    twice.write_text("output: a\nseeds: [0]\nseeds: [1]\n")
    assert main(["--config", str(twice)]) == 2
    assert "seeds" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["--config", "/dev/zero"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m studies: error: cannot read study /dev/zero: /dev/zero is not a regular file")


def test_study_files_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\nmethods: {psd: {}}\nnoise: {clean: {}}\ncells: [{noise: clean, train_samples: 8}]\n")
    with pytest.raises(EvalInputError, match="clip"):
        load_study(bad)
    bad.write_text("seed: [0]\n")
    with pytest.raises(EvalInputError, match="unknown key seed "):
        load_study(bad)
    bad.write_text("seeds: [0]\nmethods: {clip: {}}\nnoise: {clean: {}}\n"
                   "cells: [{noise: clean, train_samples: 8, data: openmoji}]\n")
    with pytest.raises(EvalInputError, match="either an integer train_samples .* or a data folder"):
        load_study(bad)
    bad.write_text("seeds: [0]\nmethods: {clip: {}}\nnoise: {clean: {}}\n"
                   "cells: [{noise: clean, data: a/openmoji}, {noise: clean, data: b/openmoji}]\n")
    with pytest.raises(EvalInputError, match="run clean-openmoji-clip-seed0 is planned twice"):
        load_study(bad)
    shipped = load_study(REPO / "studies" / "noise.yaml", quick=True)
    methods = {run.method for run in planned_runs(shipped)}
    assert methods == {"clip", "psd-previous-epoch", "psd-ema"} and len(shipped["seeds"]) >= 3
    openmoji = planned_runs(load_study(REPO / "studies" / "openmoji.yaml"))
    assert {run.method for run in openmoji} == methods and {run.seed for run in openmoji} == {0, 1, 2}
    assert {run.data for run in openmoji} == {"outputs/openmoji-noisy"}


def test_a_starting_model_of_refused_pickled_weights_is_one_line(tmp_path, micro_study, capsys):
    config, out = micro_study
    pickled = copy_with_refused_pickle(tmp_path / "micro", tmp_path / "pickled")
    study = yaml.safe_load(config.read_text())
    study["train"].pop("init_from")  # the study sets it to its starting model
    config.write_text(yaml.safe_dump({**study, "starting_model": str(pickled)}))
    assert main(["--config", str(config), "--quick"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m studies: error: cannot load model folder ") and \
        "which torch's restricted unpickler refuses to load; if you trust where it came from, convert it" in error
    assert not (out / "runs").exists()


@pytest.mark.parametrize(("text", "problem"), [
    ("eval: {bogus_eval: 1}", "unknown key eval.bogus_eval"), ("seeds: 3", "seeds must be a list, got 3"),
    ("methods: [clip]", "methods must be a mapping"), ("cells: [1]", "cells[0] must be a mapping, got 1"),
    ("noise: {clean: 5}", "noise.clean must be a mapping, got 5"),
    ("eval: {num_samples: many}", "eval.num_samples must be int, got 'many'"), ("output: 5", "output must be str"),
    ("train: [1, 2]", "train must be a mapping"), ("launcher: touch owned", "unknown key launcher"),
    ("quick: {eval: {num_samples: [1]}}", "quick.eval.num_samples must be int"),
    ("seeds: [-1]", "seeds must be in [0, 2**32 - 1], got -1"),  # once numpy's ValueError when the run started
    # Options the study sets itself, once accepted and ignored (the model went to the study's folder).
    ("train: {output_dir: mine}", "train sets output_dir, which the study sets itself (run clean-8-clip-seed0): "
                                  "leave it out"),
    ("train: {report-to: wandb}", "train sets report-to, which the study sets itself"),
    ("train: {p_mismatch: 0.5}", "train sets p_mismatch, which the study sets itself"),
    ("noise: {clean: {train_samples: 5}}", "noise 'clean' sets train_samples, which the study sets itself"),
    ("methods: {clip: {seed: 3}}", "method 'clip' sets seed, which the study sets itself"),
    ("methods: {clip: {resume: latest}}", "method 'clip' sets resume, which the study sets itself"),
    ("{starting_model: start, train: {init_from: mine}}", "train sets init_from, which the study sets itself"),
    ("pretrain: {run_dir: mine}", "pretrain sets run_dir, which the study sets itself (pretrain)"),
    # What train.py refuses, once found only when that run started, after the earlier runs had trained.
    ("train: {bogus_option: 1}", "run clean-8-clip-seed0: unknown option 'bogus_option'"),
    ("methods: {clip: {}, psd: {distill_alpha_max: lots}}",
     "run clean-8-psd-seed0: --distill-alpha-max: expected float, got 'lots'"),
    ("methods: {clip: {}, psd: {distill_alpha_max: 5.0}}",
     "run clean-8-psd-seed0: --distill-alpha-max must be in [0, 1], got 5.0"),
    ("cells: [{noise: clean, train_samples: -5}]", "run clean--5-clip-seed0: --train-samples must be positive, got -5"),
    ("pretrain: {lr: -1.0}", "pretrain: --lr must be positive, got -1.0"),
])
def test_a_study_file_that_does_not_fit_the_schema_is_one_line_before_anything_runs(tmp_path, capsys, text, problem):
    study = tmp_path / "study.yaml"
    study.write_text("seeds: [0]\nmethods: {clip: {}}\nnoise: {clean: {}}\ncells: [{noise: clean, train_samples: 8}]\n"
                     f"output: {tmp_path / 'out'}\n")
    study.write_text(yaml.safe_dump({**yaml.safe_load(study.read_text()), **yaml.safe_load(text)}))
    assert main(["--config", str(study)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"python -m studies: error: study {study}: {problem}"), error
    assert not (tmp_path / "out").exists() and not (tmp_path / "owned").exists()


def test_study_paths_outputs_and_a_report_of_nothing_finished_are_one_line(micro_study, tmp_path, capsys,
                                                                           monkeypatch):
    config, out = micro_study
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    for argv, problem in [
        (["--config", "studies/../../nowhere/noise.yaml"], "cannot read study studies/../../nowhere/noise.yaml"),
        (["--config", str(config), "--output", "a-file"], "study output a-file cannot hold the runs: is a file"),
        (["--config", str(config), "--finished-only"], f"no run of the study in {out} has finished yet"),
        # Once a FileNotFoundError traceback at the first training.
        (["--config", str(config), "--launcher", "nosuchcmd --x"], "--launcher 'nosuchcmd --x': command 'nosuchcmd' "
                                                                   "not found"),
        (["--config", str(config), "--launcher", "'unclosed"], "--launcher \"'unclosed\": No closing quotation"),
    ]:
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith(f"python -m studies: error: {problem}"), error
    assert (tmp_path / "a-file").read_text() == "mine" and not (out / "runs").exists()
    assert "--launcher COMMAND" in build_parser().format_help()


def test_quick_on_a_study_with_no_quick_section_is_one_line(micro_study, capsys):
    config, out = micro_study  # once silently the full size
    study = yaml.safe_load(config.read_text())
    study.pop("quick")
    config.write_text(yaml.safe_dump(study))
    assert main(["--config", str(config), "--quick"]) == 2
    assert capsys.readouterr().err == (
        f"python -m studies: error: study {config} has no quick section (in it or its base chain), so --quick would "
        "run the full size: leave out --quick, or add a quick section\n")
    assert not out.exists()


@pytest.mark.parametrize(("stop", "status"), [(130, 130), (143, 143), (KeyboardInterrupt, 130)])
def test_ctrl_c_stops_a_study_with_130_and_one_line_not_a_failed_run(micro_study, capsys, monkeypatch, stop,
                                                                     status):
    config, out = micro_study

    def stopped_training(arguments, log):  # a training that Ctrl-C (or SIGTERM) stopped, or Ctrl-C between them
        if stop is KeyboardInterrupt:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr("studies.training_runs.main_in_process", stopped_training)
    assert main(["--config", str(config), "--quick"]) == status  # once "run ... failed", status 1
    assert capsys.readouterr().err == "python -m studies: stopped; rerun to continue where it stopped\n"


def test_the_shipped_studies_set_only_options_train_py_takes_and_the_study_does_not(tmp_path):
    for path in sorted((REPO / "studies").glob("*.yaml")):
        for quick in (False, True):
            try:
                study = load_study(path, quick)
            except EvalInputError as error:  # openmoji.yaml has a single size
                assert quick and "has no quick section" in str(error)
                continue
            check_training_options(path, study, planned_runs(study), tmp_path)
