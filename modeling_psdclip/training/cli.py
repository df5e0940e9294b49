"""The training command: `python train.py`, `accelerate launch train.py`, `python -m modeling_psdclip.training`,
`accelerate launch -m modeling_psdclip.training` and the installed `psdclip-train` all run `main`.

The options are read and checked before anything heavy is imported, so `--help` and a mistyped option answer at
once; torch, transformers and Accelerate load only for a run that will start.
"""

import contextlib
import sys
from pathlib import Path

from .options import parse_options


def program_name() -> str:
    """What the error lines call the command: the script as the user ran it (`train.py`, `psdclip-train`)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m modeling_psdclip.training" if name in ("", "-c", "__main__.py") else name


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` (default: the command line), train, and return the exit status (0, 1 or 2); a bad option exits
    at once with status 2 and one line, as argparse does."""
    prog = prog or program_name()
    options = parse_options(argv, prog=prog)
    from .run import run_training  # the heavy imports, once the options are known to be good

    return run_training(options, prog)


def main_in_process(argv: list[str], log: str | Path, prog: str = "python -m modeling_psdclip.training") -> int:
    """`main(argv)` for a caller that trains many runs in one process (a study), which saves each run the imports:
    the run's output goes to the file `log`, a bad option is a status rather than an exit, and Accelerate's
    process-wide state is reset afterwards, so that the next run may choose other settings (mixed precision)."""
    with open(log, "w") as output, contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            return main(argv, prog=prog)
        except SystemExit as exit:  # argparse's way out, for a bad option
            return exit.code if isinstance(exit.code, int) else 1
        finally:
            if "accelerate" in sys.modules:
                from accelerate.state import AcceleratorState, GradientState

                AcceleratorState._reset_state(reset_partial_state=True)
                GradientState._reset_state()


__all__ = ["main", "main_in_process"]
