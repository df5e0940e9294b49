"""Figures that read better than a table: the robustness scatter and the noisy-pair precision curve; and how every
figure of the project is saved (`save_figure`, which the study report uses too)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .robustness import AVERAGE, baseline_prediction  # noqa: E402


def robustness_scatter(results: dict, path: str | Path) -> Path:
    """Shifted (average) vs in-distribution accuracy per model, with the baseline fit and y = x."""
    figure, axes = plt.subplots(figsize=(5, 5))
    in_accuracy = [model["in_distribution_accuracy"] for model in results["models"]]
    shifted = [model["shifted"][AVERAGE]["accuracy"] for model in results["models"]]
    axes.scatter(in_accuracy, shifted, zorder=3)
    for model, x, y in zip(results["models"], in_accuracy, shifted):
        axes.annotate(model["model"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    grid = np.linspace(0.01, 0.99, 99)
    axes.plot(grid, grid, "k:", label="y = x (no drop)")
    baseline = results["baselines"][AVERAGE]
    if baseline is not None:
        axes.plot(grid, baseline_prediction((baseline["slope"], baseline["intercept"]), grid), "C1--",
                  label="baseline fit (logit scale)")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"accuracy on {results['in_distribution']}",
             ylabel="mean accuracy on shifted sets", title="Effective robustness")
    axes.legend(loc="upper left", fontsize=8)
    return save_figure(figure, path)


def noisy_pair_precision_curve(probabilities: np.ndarray, is_noisy, path: str | Path) -> Path:
    """Share of truly noisy pairs among the n most suspect, against n as a fraction of the data."""
    order = np.argsort(probabilities, kind="stable")
    hits = np.cumsum(np.asarray(is_noisy)[order])
    flagged = np.arange(1, len(order) + 1)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(flagged / len(order), hits / flagged, label="precision of the n most suspect pairs")
    noise_rate = float(np.mean(is_noisy))
    axes.axvline(noise_rate, color="k", linestyle=":", label=f"true noise rate ({noise_rate:.1%})")
    axes.axhline(noise_rate, color="C1", linestyle="--", label="random ranking")
    axes.set(xlabel="fraction of pairs flagged", ylabel="precision", ylim=(0, 1.02), title="Noisy-pair detection")
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write and close `figure` (its folder made if need be); the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
