"""The evaluation tasks of `python -m eval` (eval/__main__.py): data and models from the parsed options, each task
run per model, the rows of its table and the card updates to make."""

from __future__ import annotations

from pathlib import Path

from modeling_psdclip.data import caption_noise

from .data import CLEAN, EvalData, load_eval_data
from .errors import EvalInputError
from .linear_probe import linear_probe
from .model import EmbeddingModel
from .noisy_pairs import DEFAULT_POOL_SIZE, noisy_pair_detection, write_suspects_csv
from .plots import noisy_pair_precision_curve, robustness_scatter
from .report import scalar_metrics
from .retrieval import retrieval
from .robustness import robustness
from .templates import read_lines, resolve_templates
from .zeroshot import zero_shot_classification


def load_data(args, source: str) -> EvalData:
    data = load_eval_data(source, label_column=args.label_column, num_samples=args.num_samples, seed=args.seed,
                          image_size=args.image_size, **caption_noise(args))
    if args.classnames:
        names = read_lines(args.classnames, "class name")
        if data.class_names is not None and len(names) != len(data.class_names):
            raise EvalInputError(f"{args.classnames} has {len(names)} class names; data {data.name!r} has "
                                 f"{len(data.class_names)} classes")
        if data.labels is not None and data.labels.max() >= len(names):
            raise EvalInputError(f"data {data.name!r} has labels beyond the {len(names)} class names of "
                                 f"{args.classnames}")
        data.class_names = names
    return data


def load_models(args) -> list[tuple[Path, EmbeddingModel]]:
    """The --model folders, named by folder name; a repeated name gets its position appended, since results
    and file names are keyed by it."""
    names = [Path(folder).resolve().name for folder in args.model]
    names = [name if names.count(name) == 1 else f"{name}-{i + 1}" for i, name in enumerate(names)]
    return [(Path(folder), EmbeddingModel.from_pretrained(folder, name=name, batch_size=args.batch_size,
                                                          device=args.device,
                                                          trust_remote_code=args.trust_remote_code))
            for folder, name in zip(args.model, names)]


def run_per_model(args, task_type: str, task_name: str, evaluate_one) -> tuple[dict, list[dict], list[tuple]]:
    """Evaluate every model on --data with `evaluate_one(model, data) -> results`; return results, table rows and
    the card updates (`update_model_card` arguments) to make once the results are written."""
    data = load_data(args, args.data)
    results, rows, cards = {}, [], []
    for folder, model in load_models(args):
        results[model.name] = evaluate_one(model, data)
        metrics = scalar_metrics(results[model.name])
        rows.append({"model": model.name, "data": data.name, **metrics})
        if not args.no_card:
            # Scores are floats; counts, sizes and file paths are not results to list on a card.
            cards.append((folder, task_type, task_name, data.name,
                          {key: value for key, value in metrics.items() if isinstance(value, float)}))
    return results, rows, cards


def run_zeroshot(args):
    templates = resolve_templates(args.templates) if args.templates else None
    return run_per_model(args, "zero-shot-image-classification", "Zero-shot classification",
                         lambda model, data: zero_shot_classification(model, data, templates))


def run_linear_probe(args):
    test = load_data(args, args.test_data)
    val = load_data(args, args.val_data) if args.val_data else None
    return run_per_model(args, "image-classification", "Linear probe",
                         lambda model, train: linear_probe(model, train, test, val, seed=args.seed))


def run_retrieval(args):
    return run_per_model(args, "image-text-retrieval", "Retrieval",
                         lambda model, data: retrieval(model, data, protocol=args.protocol))


def run_noisy_pairs(args):
    def detect(model, data):
        pool_size = DEFAULT_POOL_SIZE if args.pool_size is None else args.pool_size or None
        results, probabilities = noisy_pair_detection(model, data, pool_size, args.seed)
        results["suspects_csv"] = str(write_suspects_csv(args.output / f"noisy-pairs-{model.name}.csv", data,
                                                         probabilities))
        if data.noise is not None:
            results["precision_curve"] = str(noisy_pair_precision_curve(
                probabilities, [label != CLEAN for label in data.noise],
                args.output / f"noisy-pairs-{model.name}.png"))
        return results

    return run_per_model(args, "noisy-pair-detection", "Noisy-pair detection", detect)


def run_robustness(args):
    templates = resolve_templates(args.templates) if args.templates else None
    in_distribution = load_data(args, args.data)
    shifted = [load_data(args, source) for source in args.shifted]
    models = load_models(args)
    results = robustness([model for _, model in models], in_distribution, shifted, templates)
    results["scatter"] = str(robustness_scatter(results, args.output / "robustness.png"))
    rows = [{"model": entry["model"], "data": name, "in_distribution_accuracy": entry["in_distribution_accuracy"],
             **shift} for entry in results["models"] for name, shift in entry["shifted"].items()]
    cards = [] if args.no_card else [
        (folder, "zero-shot-image-classification", "Robustness", name, shift)
        for (folder, _), entry in zip(models, results["models"]) for name, shift in entry["shifted"].items()]
    return results, rows, cards
