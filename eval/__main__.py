"""Command line: `python -m eval TASK --model FOLDER [--model FOLDER ...] --data SOURCE [options]`.

Tasks: zeroshot, linear-probe, retrieval, robustness, noisy-pairs; `build-openmoji OUT` to build the
OpenMoji benchmark; `study --config FILE` to train and compare a matrix of models (see eval/study.py). Writes `<output>/<task>.json`, `<task>.md`, figures, and (unless --no-card) the results
into each model folder's README.md. Mistakes in the command exit with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_psdclip.utils import OneLineErrorParser, first_line

from modeling_psdclip.card import update_model_card
from .data import CLEAN, EvalData, load_eval_data
from .errors import EvalInputError
from .linear_probe import linear_probe
from .model import EmbeddingModel, input_size, require_model_folder
from .noisy_pairs import DEFAULT_POOL_SIZE, noisy_pair_detection, write_suspects_csv
from .plots import noisy_pair_precision_curve, robustness_scatter
from .report import scalar_metrics, write_report
from .retrieval import PROTOCOLS, retrieval
from .robustness import robustness
from .templates import read_lines, resolve_templates
from .zeroshot import zero_shot_classification


PROG = "python -m eval"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True, parser_class=OneLineErrorParser,
                                  metavar="{zeroshot,linear-probe,retrieval,robustness,noisy-pairs,build-openmoji,study}")

    common = OneLineErrorParser(add_help=False)
    common.add_argument("--model", action="append", required=True, metavar="FOLDER",
                        help="saved PSD-CLIP or transformers CLIPModel folder; repeat to compare models")
    common.add_argument("--data", required=True, metavar="SOURCE",
                        help="synthetic:SPLIT, or a folder (imagefolder, save_to_disk, CLIP_benchmark webdataset), "
                             "optionally FOLDER:SPLIT")
    common.add_argument("--label-column", help="column holding the class (synthetic default: label_shape)")
    common.add_argument("--classnames", metavar="FILE", help="class names, one a line, replacing the data's")
    common.add_argument("--num-samples", type=int, default=1000, help="synthetic data: examples per split")
    common.add_argument("--image-size", type=int,
                        help="synthetic data: image side in pixels (default: the first model's input size)")
    common.add_argument("--p-mismatch", type=float, default=0.0,
                        help="synthetic train split: share of captions describing another scene")
    common.add_argument("--p-partial", type=float, default=0.0,
                        help="synthetic train split: share of captions with one wrong attribute")
    common.add_argument("--p-generic", type=float, default=0.0,
                        help="synthetic train split: share of uninformative captions")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--batch-size", type=positive_int, default=256)
    common.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    common.add_argument("--output", type=Path, default=Path("outputs/eval"), help="folder for results")
    common.add_argument("--no-card", action="store_true", help="leave the model folders' README.md alone")
    common.add_argument("--trust-remote-code", action="store_true",
                        help="run the Python files a --model folder carries (auto_map); only for folders you trust. "
                             "PSD-CLIP and stock CLIP folders never need it")
    templates = OneLineErrorParser(add_help=False)
    templates.add_argument("--templates", default=None, metavar="SET_OR_FILE",
                           help="imagenet80 (default unless the data ships templates), simple, or a file")

    tasks.add_parser("zeroshot", parents=[common, templates], help="zero-shot classification")
    probe = tasks.add_parser("linear-probe", parents=[common], help="logistic regression on image features")
    probe.add_argument("--test-data", required=True, metavar="SOURCE")
    probe.add_argument("--val-data", metavar="SOURCE", help="default: a stratified 20%% of --data")
    retrieve = tasks.add_parser("retrieval", parents=[common], help="image-text retrieval Recall@1/5/10")
    retrieve.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                          help="distinct_texts: identical caption texts are one item (default); clip_benchmark: "
                               "every caption its own item, as CLIP_benchmark counts")
    robust = tasks.add_parser("robustness", parents=[common, templates], help="accuracy under distribution shift")
    robust.add_argument("--shifted", action="append", required=True, metavar="SOURCE",
                        help="shifted data set; repeat for several")
    noisy = tasks.add_parser("noisy-pairs", parents=[common], help="rank suspected mismatched pairs")
    noisy.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                       help="pairs each paired probability is computed among; 0 = all")
    build = tasks.add_parser("build-openmoji", help="build the OpenMoji image-text benchmark into a folder")
    build.add_argument("out", type=Path)
    build.add_argument("--image-size", type=int, default=64)
    build.add_argument("--p-mismatch", type=float, default=0.0,
                       help="share of train rows given another train row's captions (noise label 'mismatch')")
    study = tasks.add_parser("study", help="train and evaluate a matrix of runs (methods x noise x data x seeds)")
    study.add_argument("--config", required=True, metavar="FILE", help="the study's YAML file, e.g. studies/noise.yaml")
    study.add_argument("--quick", action="store_true", help="the study file's smaller `quick` size")
    study.add_argument("--output", type=Path, help="folder of runs and report (default: the study file's)")
    return parser


def load_data(args, source: str) -> EvalData:
    noise = {"p_mismatch": args.p_mismatch, "p_partial": args.p_partial, "p_generic": args.p_generic}
    data = load_eval_data(source, label_column=args.label_column, num_samples=args.num_samples, seed=args.seed,
                          image_size=args.image_size, **{key: value for key, value in noise.items() if value})
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
        results, probabilities = noisy_pair_detection(model, data, args.pool_size or None, args.seed)
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


TASKS = {"zeroshot": run_zeroshot, "linear-probe": run_linear_probe, "retrieval": run_retrieval,
         "robustness": run_robustness, "noisy-pairs": run_noisy_pairs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.task == "build-openmoji":
            from modeling_psdclip.data.openmoji import build_openmoji

            print(build_openmoji(args.out, image_size=args.image_size, p_mismatch=args.p_mismatch))
            return 0
        if args.task == "study":
            from studies.runner import run_study
            from studies.report import write_study_report

            study, results = run_study(args.config, quick=args.quick, output=args.output)
            print(f"report: {write_study_report(study, results, args.output or study['output'])}")
            return 0
        for folder in args.model:  # before any slow data loading
            require_model_folder(folder)
        if args.image_size is None:  # synthetic scenes drawn at the size the model reads
            args.image_size = input_size(args.model[0])
        require_output_folder(args.output)
        results, rows, cards = TASKS[args.task](args)
        paths = write_report(args.output, args.task, results, rows)
    except EvalInputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"results: {paths['json']}")
    status = 0
    for folder, *card in cards:
        try:
            update_model_card(folder, *card)
        except OSError as error:  # A read-only or shared model folder: the results are written all the same.
            print(f"{PROG}: error: the results are in {paths['json']}, but the card in {folder} could not be "
                  f"updated: {error.strerror or first_line(error)} (pass --no-card to leave cards alone)",
                  file=sys.stderr)
            status = 1
    return status


def require_output_folder(output: Path) -> None:
    """Create --output now, so that a path that cannot hold the results fails before the evaluation runs."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvalInputError(f"--output {output}: cannot create the results folder: "
                             f"{error.strerror or first_line(error)}") from None


if __name__ == "__main__":
    sys.exit(main())
