"""Command line: `python -m eval TASK --model FOLDER [--model FOLDER ...] --data SOURCE [options]`.

Each task (`TASKS`) writes `<output>/<task>.json`, `<task>.md`, figures, and (unless --no-card) the results into each
model folder's README.md. Mistakes in the command exit with status 2 and a one-line error.

The options are parsed before the tasks (torch, transformers, datasets, scikit-learn) are imported, so `--help`
and a mistyped option answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_psdclip.utils import OneLineErrorParser, first_line

from .errors import EvalInputError

PROG = "python -m eval"
# The tasks: name -> (help, the function of eval.commands that runs it, looked up once the options are parsed so that
# `--help` imports no task).
TASKS = {
    "zeroshot": ("zero-shot classification", "run_zeroshot"),
    "linear-probe": ("logistic regression on image features", "run_linear_probe"),
    "retrieval": ("image-text retrieval Recall@1/5/10", "run_retrieval"),
    "robustness": ("accuracy under distribution shift", "run_robustness"),
    "noisy-pairs": ("rank suspected mismatched pairs", "run_noisy_pairs"),
}


def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= `minimum`, refused in one line naming `what` it must be."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


positive_int = int_at_least(1, "a positive integer")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True, parser_class=OneLineErrorParser)

    common = OneLineErrorParser(add_help=False)
    common.add_argument("--model", action="append", required=True, metavar="FOLDER",
                        help="saved PSD-CLIP or transformers CLIPModel folder; repeat to compare models")
    common.add_argument("--data", required=True, metavar="SOURCE",
                        help="synthetic:SPLIT, a folder (imagefolder, save_to_disk, CLIP_benchmark or other "
                             "webdataset, parquet), a table or a datasets name; SOURCE:SPLIT names a split "
                             "(default: test, or the only one)")
    common.add_argument("--label-column", help="column holding the class (synthetic default: label_shape)")
    common.add_argument("--classnames", metavar="FILE", help="class names, one a line, replacing the data's")
    common.add_argument("--num-samples", type=positive_int, default=1000, help="synthetic data: examples per split")
    common.add_argument("--image-size", type=positive_int,
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
    task = {name: tasks.add_parser(name, parents=[common], help=summary) for name, (summary, _) in TASKS.items()}
    for name in ("zeroshot", "robustness"):
        task[name].add_argument("--templates", default=None, metavar="SET_OR_FILE",
                                help="imagenet80 (default unless the data ships templates), simple, or a file")
    task["linear-probe"].add_argument("--test-data", required=True, metavar="SOURCE")
    task["linear-probe"].add_argument("--val-data", metavar="SOURCE", help="default: a stratified 20%% of --data")
    # Checked by the task (eval.retrieval.PROTOCOLS), so that parsing the options imports no task.
    task["retrieval"].add_argument("--protocol", default="distinct_texts",
                                   help="distinct_texts: identical caption texts are one item (default); "
                                        "clip_benchmark: every caption its own item, as CLIP_benchmark counts")
    task["robustness"].add_argument("--shifted", action="append", required=True, metavar="SOURCE",
                                    help="shifted data set; repeat for several")
    # A negative size was once taken as one pool of all pairs and reported as pool size -1.
    task["noisy-pairs"].add_argument("--pool-size", type=int_at_least(0, "0 (all pairs) or a positive integer"),
                                     default=None,
                                     help="pairs each paired probability is computed among; 0 = all (default: "
                                          "eval.noisy_pairs.DEFAULT_POOL_SIZE, 256)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from modeling_psdclip.card import update_model_card

    from . import commands
    from .model import input_size, require_model_folder
    from .report import write_report

    try:
        for folder in args.model:  # before any slow data loading
            require_model_folder(folder)
        if args.image_size is None:  # synthetic scenes drawn at the size the model reads
            args.image_size = input_size(args.model[0])
        require_output_folder(args.output)
        results, rows, cards = getattr(commands, TASKS[args.task][1])(args)
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
