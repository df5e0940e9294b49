"""`python -m studies --config FILE [--quick] [--output DIR]` (also `psdclip-study`): train and evaluate
every run of a study not finished yet, then write its report. A mistake exits with status 2 and one line.

The options are parsed before training and evaluation are imported, so `--help` answers at once.
"""

import sys
from pathlib import Path

from modeling_psdclip.utils import OneLineErrorParser, status_of

PROG = "python -m studies"


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=PROG, description="Train and evaluate a matrix of runs (methods x noise x data "
                                "x seeds) and write its report.")
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the study's YAML file, e.g. studies/noise.yaml (or a shipped study's name: noise)")
    parser.add_argument("--quick", action="store_true", help="the study file's smaller `quick` size")
    parser.add_argument("--output", type=Path, help="folder of runs and report (default: the study file's)")
    parser.add_argument("--launcher", metavar="COMMAND",
                        help='run each training in a subprocess as COMMAND -m modeling_psdclip.training, e.g. '
                             '"accelerate launch --multi_gpu" (default: in this process)')
    parser.add_argument("--finished-only", action="store_true",
                        help="train and evaluate nothing: report the runs finished so far (of a study still running)")
    return parser


def study_file(config: str) -> str:
    """`config` as given, or, when it is a bare name (`noise`, `noise.yaml`) and no such file is here, the study of
    that name shipped beside this package: an installed package runs its studies without a checkout. A path is
    never replaced by a shipped study of the same file name."""
    shipped = Path(__file__).parent / f"{Path(config).stem}.yaml"
    bare = Path(config).name == config
    return str(shipped) if bare and not Path(config).exists() and shipped.is_file() else config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = study_file(args.config)
    from eval.errors import EvalInputError

    from .report import write_study_report
    from .runner import run_study
    from .training_runs import StudyRunFailed, StudyStopped

    def run() -> None:
        study, results = run_study(args.config, quick=args.quick, output=args.output, finished_only=args.finished_only,
                                   launcher=args.launcher)
        print(f"report: {write_study_report(study, results, args.output or study['output'])}")

    try:
        return status_of(PROG, run, EvalInputError)
    except StudyRunFailed as error:  # a failure, not the user's input: status 1, naming the run's log
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except (StudyStopped, KeyboardInterrupt) as stop:  # Ctrl-C in a training or between them: neither failed
        print(f"{PROG}: stopped; rerun to continue where it stopped", file=sys.stderr)
        return getattr(stop, "status", 130)


if __name__ == "__main__":
    sys.exit(main())
