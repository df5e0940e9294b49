"""Recording evaluation results in a model folder's README.md card: model-index metadata in the YAML front
matter (huggingface_hub's ModelCard / EvalResult, which work offline) and a results table in the text."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard

from eval.report import markdown_table

RESULTS_START = "<!-- psdclip-eval-results:start -->"
RESULTS_END = "<!-- psdclip-eval-results:end -->"


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
