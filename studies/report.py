"""The study's report: per cell, each method's mean +/- std over seeds and each PSD method's paired difference from
CLIP with its 95% interval; effective robustness fitted over every model of the study evaluated on shifted data;
teacher diagnostics; training FLOPs; figures (metrics across cells, validation loss against step, shifted against
in-distribution accuracy). Synthetic and data cells measure different metrics: the tables show those any run
has, with "–" where a cell's runs lack one."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from eval.plots import plt, save_figure  # pyplot on the files-only backend that eval.plots selects
from eval.robustness import baseline_prediction, fit_baseline
from eval.statistics import mean_std, paired_difference, paired_permutation_p
from modeling_psdclip.utils import markdown_table

from .plan import Run
from .training_runs import DIAGNOSTICS as LOGGED_DIAGNOSTICS

SYNTHETIC_TEST, DATA_TEST = "the clean synthetic test split", "the data folder's test split"
# Each retrieval direction's key prefix, column title, name in definitions, and what its R@1 definition adds.
DIRECTIONS = (("i2t", "image→text", "image->text", " on the same split as retrieval R@1"),
              ("t2i", "text→image", "text->image", " (one query per distinct text) on the same split"))
# (key in a run's results, column title, definition); every one of them is better higher except the validation loss.
METRICS = (
    *((f"zeroshot_{name}", f"zero-shot {name}", f"zero-shot {name} accuracy on {SYNTHETIC_TEST}")
      for name in ("shape", "colour", "count")),
    *((f"zeroshot_{name}", f"zero-shot {name}", f"zero-shot accuracy over the emoji {groups} on {DATA_TEST}")
      for name, groups in (("group", "groups"), ("subgroup", "sub-groups"))),
    ("retrieval_r1", "retrieval R@1", "image-text retrieval Recall@1, mean of both directions, on the clean "
     f"synthetic validation split (synthetic cells) or {DATA_TEST} (data cells)"),
    *((f"{prefix}_r{k}", f"{title} R@{k}", f"{name} Recall@{k}{where if k == 1 else ''}")
      for k in (1, 5) for prefix, title, name, where in DIRECTIONS),
    ("linear_probe_shape", "linear probe shape",
     "shape accuracy of logistic regression on image features, fitted on clean validation, on clean test"),
    ("shifted_accuracy", "shifted zero-shot",
     "mean shape accuracy over the sketch, unseen_texture and unseen_shade splits"),
    ("effective_robustness", "effective robustness", "shifted zero-shot above the line fitted through all the "
     "study's models that have it (needs three)"),
    *((f"old_{key}", f"old {title}", f"{title} in the starting model's world (what fine-tuning forgets)")
      for key, title in (("retrieval_r1", "retrieval R@1"), ("i2t_r1", "image→text R@1"), ("t2i_r1", "text→image R@1"),
                         ("zeroshot_shape", "zero-shot shape"))),
    ("wise_ft_coefficient", "WiSE-FT coefficient", "the weight of the fine-tuned model that WiSE-FT chose (0: the "
     "start)"),
    ("noisy_pair_auroc", "noisy-pair AUROC", "AUROC of 1 - paired probability at finding the corrupted pairs among "
     "the run's own noisy training pairs"),
    ("val_loss", "val loss", "CLIP loss on the clean validation split at the end (lower is better)"),
)
FIGURE_METRICS = ("zeroshot_shape", "zeroshot_group", "retrieval_r1", "linear_probe_shape", "noisy_pair_auroc")
# The teacher diagnostics the runner records of each run, but the soft loss (a loss, not a teacher's).
DIAGNOSTICS = tuple(name.removeprefix("train/") for name in LOGGED_DIAGNOSTICS if name != "train/loss_soft")
# Methods every other method is compared with, when the study has them: CLIP, and label smoothing (the uniform
# teacher), the simplest thing that could explain a gain of PSD's.
CONTROLS = ("clip", "smoothing")
# Accuracies that are bimodal over seeds (a seed learns the attribute or does not): the report counts the seeds at
# or above this level beside the mean.
LEARNED_AT = {"zeroshot_shape": 0.5, "zeroshot_colour": 0.5, "zeroshot_count": 0.5}


def add_effective_robustness(results: list[dict]) -> tuple[float, float] | None:
    """Effective robustness of every run evaluated on shifted data against one baseline fitted over all those
    models (zero-shot shape accuracy on clean test against the average over the shifted splits)."""
    measured = [record for record in results if "shifted_accuracy" in record]
    baseline = fit_baseline([r["zeroshot_shape"] for r in measured], [r["shifted_accuracy"] for r in measured])
    for record in measured:
        record["effective_robustness"] = None if baseline is None else float(
            record["shifted_accuracy"] - baseline_prediction(baseline, record["zeroshot_shape"]))
    return baseline


def cells_and_methods(results: list[dict]) -> tuple[list[str], list[str]]:
    runs = [Run(**record["run"]) for record in results]
    return list(dict.fromkeys(run.cell for run in runs)), list(dict.fromkeys(run.method for run in runs))


def by_cell_and_method(results: list[dict]) -> dict:
    """{(cell, method): {seed: record}}"""
    grouped = defaultdict(dict)
    for record in results:
        run = Run(**record["run"])
        grouped[run.cell, run.method][run.seed] = record
    return grouped


def summary_cell(values: list, learned_at: float | None = None) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    mean, std = mean_std(values)
    learned = f" ({sum(v >= learned_at for v in values)}/{len(values)} ≥ {learned_at})" if learned_at else ""
    return f"{mean:.3f} ± {std:.3f}{learned}"


def difference_cell(treatment: dict, control: dict, key: str) -> str:
    seeds = [seed for seed in treatment if seed in control
             and treatment[seed].get(key) is not None and control[seed].get(key) is not None]
    if not seeds:
        return "–"
    treated, controlled = [treatment[s][key] for s in seeds], [control[s][key] for s in seeds]
    mean, low, high = paired_difference(treated, controlled)
    if math.isnan(low):
        return f"{mean:+.3f}"
    marker = " *" if low > 0 or high < 0 else ""  # the interval excludes 0
    higher = sum(t > c for t, c in zip(treated, controlled))
    return (f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{marker} p={paired_permutation_p(treated, controlled):.2f} "
            f"{higher}/{len(seeds)}↑")


RETRIEVAL_KEYS = (("i2t_r1", "image→text R@1"), ("t2i_r1", "text→image R@1"))


def recommended_sections(study: dict, results: list[dict], grouped: dict, methods: list[str]) -> list[str]:
    """For a study that names its `recommended` method: that method minus every other one, per cell, on the new
    world's R@1 each way and the old world's (paired by seed); and for every method, the share of clean CLIP's gain
    over the starting model that it keeps, per direction: (R@1 - R@1(start)) / (R@1(clip, clean) - R@1(start)),
    with the clean cell the one of the same data whose noise level corrupts nothing."""
    recommended = study.get("recommended")
    if recommended not in methods:
        return []
    keys = [*RETRIEVAL_KEYS, ("old_retrieval_r1", "old retrieval R@1")]
    lines = [f"## {recommended} against every other method\n",
             f"{recommended} minus each method, paired by seed (95% interval, permutation p, seeds higher).\n"]
    runs = [Run(**record["run"]) for record in results]
    for cell in dict.fromkeys(run.cell for run in runs):
        rows = [[method] + [difference_cell(grouped[cell, recommended], grouped[cell, method], key) for key, _ in keys]
                for method in methods if method != recommended and grouped[cell, method]]
        lines += [f"\n{cell}:\n", table(["method"] + [title for _, title in keys], rows)]
    clean = [name for name, options in study["noise"].items() if not any(options.get(key) for key in
                                                                           ("p_mismatch", "p_partial", "p_generic"))]
    if "start" not in methods or not clean:
        return lines
    lines.append("\n## Share of clean CLIP's gain kept\n")
    lines.append("(R@1 - R@1(start)) / (R@1(clip at 0% noise) - R@1(start)), per direction, per seed; mean ± std.\n")
    for run in dict.fromkeys(dataclasses.replace(run, method="", seed=0) for run in runs):
        reference = dataclasses.replace(run, noise=clean[0])
        start, clip = grouped[run.cell, "start"], grouped[reference.cell, "clip"]
        rows = []
        for method in methods:
            mine = grouped[run.cell, method]
            rows.append([method] + [summary_cell([
                (mine[s][key] - start[s][key]) / (clip[s][key] - start[s][key]) for s in mine
                if s in start and s in clip and clip[s][key] != start[s][key]]) for key, _ in RETRIEVAL_KEYS])
        lines += [f"\n{run.cell}:\n", table(["method"] + [title for _, title in RETRIEVAL_KEYS], rows)]
    return lines


def table(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table([dict(zip(header, row)) for row in rows], header)


def write_study_report(study: dict, results: list[dict], output: str | Path, title: str = "PSD-CLIP versus CLIP"
                       ) -> Path:
    """`report.md`, `results.json` and figures in `output`; returns the report's path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    baseline = add_effective_robustness(results)
    robust = [record for record in results if "effective_robustness" in record]
    metrics = [metric for metric in METRICS if any(metric[0] in record for record in results)]
    cells, methods = cells_and_methods(results)
    grouped = by_cell_and_method(results)
    controls = [method for method in CONTROLS if method in methods]
    seeds = sorted({record["run"]["seed"] for record in results})

    lines = [f"# {title}\n",
             f"{len(results)} runs: methods {', '.join(methods)}; seeds {', '.join(map(str, seeds))}; every run "
             f"trains the same optimizer steps ({study['train'].get('max_steps', 'see the study file')}), batch "
             f"{study['train'].get('batch_size', 128)}, preset {study['train'].get('preset', 'tiny')}. Metrics are "
             "mean ± sample std over seeds (with, for bimodal accuracies, how many seeds reach the level given); "
             f"differences are each method minus {' and minus '.join(controls)}, paired by seed (same data, same "
             "initialisation), with a 95% Student-t interval (* marks one that excludes 0), the two-sided p-value "
             "of the paired sign-flip permutation test (exact; with 5 seeds it cannot go below 0.0625) and how "
             "many seeds the method is higher in; – marks a metric the cell's runs do not measure. Teacher "
             "diagnostics are means over the steps that distilled (alpha > 0 and some row with a teacher).\n",
             "".join(f"- {title}: {definition}\n" for _, title, definition in metrics)]
    starting = study.get("starting_model_results")
    if starting:
        origin = f"`{study['starting_model']}`" if study.get("starting_model") else "the study's `pretrain` options"
        lines.append(f"Every run fine-tunes one starting model ({origin}); before fine-tuning it "
                     "scores " + ", ".join(f"{title} {starting[key]:.3f}" for key, title, _ in metrics
                                           if isinstance(starting.get(key), float)) + ".\n")
    if baseline is not None:
        lines.append(f"Effective robustness: shifted accuracy above the line logit(shifted) = {baseline[0]:.3f} "
                     f"logit(in-distribution) + {baseline[1]:.3f}, fitted over all {len(robust)} models evaluated "
                     "on shifted data.\n")

    flops = {method: [r["training_flops"] for (c, m), runs in grouped.items() if m == method
                      for r in runs.values() if r.get("training_flops")] for method in methods}
    flops = {method: values for method, values in flops.items() if values}  # methods that train nothing have none
    if flops.get("clip"):
        clip_flops = np.mean(flops["clip"])
        lines.append("## Training compute\n")
        lines.append(table(["method", "training FLOPs per run (cell mean)", "relative to CLIP"],
                           [[m, f"{np.mean(values):.3g}", f"{np.mean(values) / clip_flops:.2f}x"]
                            for m, values in flops.items()]))

    for cell in cells:
        lines.append(f"## {cell}\n")
        header = ["method"] + [title for _, title, _ in metrics]
        rows = [[method] + [summary_cell([r.get(key) for r in grouped[cell, method].values()], LEARNED_AT.get(key))
                            for key, _, _ in metrics] for method in methods]
        lines.append(table(header, rows))
        for control in controls:
            lines.append(f"\nMinus {control}:\n")
            rows = [[method] + [difference_cell(grouped[cell, method], grouped[cell, control], key)
                                for key, _, _ in metrics] for method in methods if method != control]
            lines.append(table(header, rows))
        lines.append("\nTeacher diagnostics, mean over the distilling steps (mean ± std over seeds):\n")
        rows = [[method] + [summary_cell([r.get("diagnostics", {}).get(name) for r in grouped[cell, method].values()])
                            for name in DIAGNOSTICS] for method in methods]
        lines.append(table(["method"] + list(DIAGNOSTICS), rows) + "\n")

    lines += recommended_sections(study, results, grouped, methods)
    figures = [metric_figure(grouped, cells, methods, metrics, output / "metrics.png"),
               val_loss_figure(grouped, cells, methods, output / "val_loss.png")]
    if any(record.get("diagnostic_curves") for record in results):
        figures.append(diagnostics_figure(grouped, cells, methods, output / "diagnostics.png"))
    if robust:
        figures.append(robustness_figure(robust, baseline, output / "robustness.png"))
    if any("old_retrieval_r1" in record for record in results):
        figures.append(forgetting_figure(grouped, cells, methods, output / "learning_and_forgetting.png"))
    lines.append("## Figures\n")
    lines += [f"![{path.stem}]({path.name})\n" for path in figures]
    report = output / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (output / "results.json").write_text(json.dumps({"study": study, "runs": results}, indent=1), encoding="utf-8")
    return report


def metric_figure(grouped: dict, cells: list[str], methods: list[str], metrics: list[tuple], path: Path) -> Path:
    """Each headline metric of `metrics` across the cells (noise levels, data sizes and folders), one line per
    method, std as bars; a cell without the metric is left out of its line."""
    shown = [(key, name) for key, name, _ in metrics if key in FIGURE_METRICS]
    figure, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4), squeeze=False)
    positions = np.arange(len(cells))
    for axis, (key, name) in zip(axes[0], shown):
        for offset, method in enumerate(methods):
            stats = [mean_std([r[key] for r in grouped[cell, method].values() if r.get(key) is not None] or [np.nan])
                     for cell in cells]
            axis.errorbar(positions + 0.06 * (offset - 1), [m for m, _ in stats], yerr=[s for _, s in stats],
                          marker="o", capsize=3, label=method)
        axis.set_xticks(positions, [cell.replace(", ", "\n") for cell in cells], fontsize=7)
        axis.set_xlim(-0.5, len(cells) - 0.5)  # a single cell would otherwise stretch its methods' offsets apart
        axis.set_title(name)
    axes[0][0].legend(fontsize=8)
    return save_figure(figure, path, dpi=110)


def forgetting_figure(grouped: dict, cells: list[str], methods: list[str], path: Path) -> Path:
    """Per cell, each method's retrieval R@1 in the new world (what it learned) against the old world's (what it
    kept), mean over seeds with the seeds' std as error bars."""
    figure, axes = plt.subplots(1, len(cells), figsize=(4.4 * len(cells), 4), squeeze=False)
    for axis, cell in zip(axes[0], cells):
        for index, method in enumerate(methods):
            runs = [r for r in grouped[cell, method].values() if "old_retrieval_r1" in r]
            if runs:
                (new, new_std), (old, old_std) = (mean_std([r[key] for r in runs])
                                                  for key in ("retrieval_r1", "old_retrieval_r1"))
                # More methods than the default colour cycle: a colour and a marker of their own.
                axis.errorbar(old, new, xerr=old_std, yerr=new_std, marker="osD^v<>PX*"[index % 10], capsize=3,
                              color=plt.cm.tab20(index % 20), label=method)
        axis.set_xlabel("old world retrieval R@1 (kept)")
        axis.set_title(cell, fontsize=9)
    axes[0][0].set_ylabel("new world retrieval R@1 (learned)")
    return save_with_legend(figure, axes, path)


def val_loss_figure(grouped: dict, cells: list[str], methods: list[str], path: Path) -> Path:
    """Validation loss against step per cell, mean over seeds, one line per method."""
    figure, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3.6), squeeze=False)
    for axis, cell in zip(axes[0], cells):
        plot_mean_curves(axis, grouped, cell, methods, lambda record: record.get("val_loss_curve"))
        axis.set_title(cell, fontsize=9)
    axes[0][0].set_ylabel("clean validation loss")
    return save_with_legend(figure, axes, path)


def diagnostics_figure(grouped: dict, cells: list[str], methods: list[str], path: Path) -> Path:
    """The teacher's paired probability and entropy against step (mean over seeds), a row per cell."""
    names = ("paired_probability", "teacher_entropy")
    figure, axes = plt.subplots(len(cells), len(names), figsize=(4.4 * len(names), 3.4 * len(cells)), squeeze=False)
    for row, cell in enumerate(cells):
        for axis, name in zip(axes[row], names):
            plot_mean_curves(axis, grouped, cell, [m for m in methods if m not in CONTROLS],
                             lambda record: record.get("diagnostic_curves", {}).get(name))
            axis.set_title(f"{cell}: teacher {name.replace('_', ' ')}", fontsize=9)
    return save_with_legend(figure, axes, path)


def plot_mean_curves(axis, grouped: dict, cell: str, methods: list[str], curve_of) -> None:
    """One line per method: the mean over seeds of each run's [[step, value], ...] curve (None values skipped)."""
    for method in methods:
        curves = [curve_of(record) for record in grouped[cell, method].values() if curve_of(record)]
        if curves:
            length = min(map(len, curves))
            values = np.array([[np.nan if v is None else v for _, v in curve[:length]] for curve in curves], float)
            measured = np.isfinite(values).any(axis=0)  # a step no run measured (no teacher yet) is left out
            steps = np.array([step for step, _ in curves[0][:length]])
            if measured.any():
                axis.plot(steps[measured], np.nanmean(values[:, measured], axis=0), marker=".", label=method)
    axis.set_xlabel("step")


def save_with_legend(figure, axes, path: Path) -> Path:
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    return save_figure(figure, path, dpi=110)


def robustness_figure(results: list[dict], baseline, path: Path) -> Path:
    """Shifted against in-distribution zero-shot accuracy of every run in `results`, with the fitted baseline."""
    figure, axis = plt.subplots(figsize=(5, 5))
    methods = list(dict.fromkeys(r["run"]["method"] for r in results))
    for method in methods:
        mine = [r for r in results if r["run"]["method"] == method]
        axis.scatter([r["zeroshot_shape"] for r in mine], [r["shifted_accuracy"] for r in mine], label=method, s=18)
    grid = np.linspace(0.01, 0.99, 99)
    axis.plot(grid, grid, "k:", label="y = x")
    if baseline is not None:
        axis.plot(grid, baseline_prediction(baseline, grid), "C7--", label="baseline fit")
    axis.set_xlabel("zero-shot shape accuracy, clean test")
    axis.set_ylabel("mean over shifted splits")
    axis.legend(fontsize=8)
    return save_figure(figure, path, dpi=110)


__all__ = ["METRICS", "add_effective_robustness", "write_study_report"]
