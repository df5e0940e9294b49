"""The model card, a model folder's README.md, owned here: written whole when a model is saved (`render_model_card`,
from the model_card.md template) and given evaluation results later (`update_model_card`): model-index metadata in
the YAML front matter (huggingface_hub's ModelCard / EvalResult, which work offline) and a results table in the
text."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_psdclip import PRESETS
from .utils import markdown_table

# The repository's model_card.md, linked into the package so that an installed (non-editable) package has it.
CARD_TEMPLATE = Path(__file__).parent / "model_card.md"
LICENSE = "apache-2.0"  # the project's licence (pyproject.toml)
VALIDATION_PREFIX = "val/"
PACKAGE_TAG = "psdclip"  # the card's tag, and the name of its metadata block of training details
OBJECTIVE = ("progressive self-distillation: CLIP's contrastive loss, with the one-hot targets of a random share of "
             "rows (distill_fraction) mixed with an earlier self's alignment distribution (distill_teacher) by a "
             "weight alpha that reaches distill_alpha_max (distill_schedule)")
RESULTS_START = "<!-- psdclip-eval-results:start -->"
RESULTS_END = "<!-- psdclip-eval-results:end -->"


def model_title(config, base_model: str | None = None) -> str:
    """What the card calls the model: what it was fine-tuned from, its preset, or its vision tower."""
    if base_model:
        return f"PSD-CLIP fine-tuned from {base_model}"
    for name, preset in PRESETS.items():
        if config.projection_dim == preset["projection_dim"] and all(
                getattr(getattr(config, tower), key) == value
                for tower in ("text_config", "vision_config") for key, value in preset[tower].items()):
            return f"PSD-CLIP {name}"
    vision = config.vision_config
    return (f"PSD-CLIP ViT/{vision.patch_size} at {vision.image_size} px, width {vision.hidden_size}, "
            f"depth {vision.num_hidden_layers}")


def validation_results(metrics: dict, dataset: str) -> list[EvalResult]:
    """The model-index entries of the final validation metrics (`val/...` keys) on `dataset`."""
    return [
        EvalResult(task_type="image-text-retrieval", task_name="Validation", dataset_type=dataset.partition(":")[0],
                   dataset_name=dataset, dataset_split="validation", metric_type=key.removeprefix(VALIDATION_PREFIX),
                   metric_name=key.removeprefix(VALIDATION_PREFIX), metric_value=float(value))
        for key, value in metrics.items() if key.startswith(VALIDATION_PREFIX)
    ]


def training_metadata(config, data: dict | None = None) -> dict:
    """The card metadata's `psdclip` block: the objective, its settings and the training data, which a clip
    export's config.json does not hold."""
    # The teacher's class says which settings of its own it reads; imported here, since only a card that is being
    # written needs it, and the training package loads Accelerate.
    from .training.teachers import teacher_class

    settings = ("distill_teacher", "distill_alpha_max", "distill_schedule", "distill_fraction", "distill_temperature",
                "distill_target", *teacher_class(config.distill_teacher).card_settings, "logit_scale_max")
    return {"objective": OBJECTIVE, **{name: getattr(config, name) for name in settings},
            **({"data": data} if data else {})}


def render_model_card(config, model_path: str, *, data: dict | None = None, training: dict | None = None,
                      metrics: dict | None = None, model_name: str | None = None, license: str = LICENSE,
                      datasets: list[str] | None = None, base_model: str | None = None,
                      validation_data: str | None = None, model_format: str = "psdclip") -> ModelCard:
    """The card of a model with `config`: metadata for the Hub (model-index from the `val/...` metrics measured on
    `validation_data`, the training details in a `psdclip` block), the template's tables, and usage naming
    `model_path` for a folder in `model_format` ("psdclip": remote code; "clip": transformers' CLIPModel)."""
    model_name = model_name or model_title(config, base_model)
    results = validation_results(metrics or {}, validation_data) if validation_data else []
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=[PACKAGE_TAG, "clip", "self-distillation", "zero-shot-image-classification"],
        datasets=datasets or None,
        base_model=base_model,
        eval_results=results or None,
        **{PACKAGE_TAG: training_metadata(config, data)},
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        model_path=model_path,
        model_format=model_format,
        config=config,
        data=data,
        training=training,
        metrics=metrics,
    )


def _key(result: EvalResult) -> tuple:
    return result.task_type, result.dataset_name, result.dataset_split, result.metric_type, result.metric_name


def update_model_card(folder: str | Path, task_type: str, task_name: str, dataset_name: str,
                      metrics: dict[str, float], dataset_split: str | None = None) -> Path:
    """Add or replace this task's results on this data in `folder/README.md` (created if missing): one
    model-index entry per metric, and the card's results table rebuilt from all model-index entries."""
    path = Path(folder) / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\n---\n")
    card.data.model_name = card.data.model_name or Path(folder).resolve().name
    new = [
        EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset_name.partition(":")[0],
                   dataset_name=dataset_name, dataset_split=dataset_split, metric_type=metric,
                   metric_name=metric, metric_value=float(value))
        for metric, value in metrics.items() if value is not None
    ]
    replaced = {_key(result) for result in new}
    card.data.eval_results = [result for result in card.data.eval_results or [] if _key(result) not in replaced] + new
    card.text = _with_results_section(card.text, card.data.eval_results)
    card.save(path)
    return path


def _with_results_section(text: str, results: list[EvalResult]) -> str:
    rows = [{"task": result.task_name or result.task_type, "data": result.dataset_name,
             "metric": result.metric_name or result.metric_type, "value": result.metric_value} for result in results]
    section = f"{RESULTS_START}\n## Evaluation results\n\n{markdown_table(rows)}{RESULTS_END}"
    if RESULTS_START in text and RESULTS_END in text:
        before, _, rest = text.partition(RESULTS_START)
        return before + section + rest.partition(RESULTS_END)[2]
    return text.rstrip("\n") + "\n\n" + section + "\n"


__all__ = ["render_model_card", "update_model_card"]
