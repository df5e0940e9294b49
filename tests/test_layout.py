"""The layout's rules, read from the source: nothing imports train.py, no import runs from a lower layer to a higher
one, evaluation does not train, only the training step calls a teacher; and every command answers `--help` and
refuses a bad option before it imports anything heavy."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(path for folder in ("modeling_psdclip", "eval", "studies", "benchmarks", "scripts", "tests")
                 for path in (REPO / folder).rglob("*.py"))
TEACHER_METHODS = {"start_epoch", "embeddings", "record", "after_optimizer_step", "state_dict", "load_state_dict"}
HEAVY = ("torch", "transformers", "accelerate", "datasets", "sklearn", "evaluate", "matplotlib")
# The layers, each with the packages below it that it may import: the model library, then evaluation, then the
# studies and the benchmarks side by side (benchmarks is not packaged, so nothing installed may import it).
LOWER_LAYERS = {"modeling_psdclip": set(), "eval": {"modeling_psdclip"}, "studies": {"modeling_psdclip", "eval"},
                "benchmarks": {"modeling_psdclip", "eval"}}


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return names


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_nothing_imports_train_py():
    importers = [relative(path) for path in SOURCES if "train" in imported_modules(path)]
    assert importers == []


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = [f"{relative(path)} imports {name}" for layer, lower in LOWER_LAYERS.items()
              for path in (REPO / layer).rglob("*.py") for name in imported_modules(path)
              if name.split(".")[0] in LOWER_LAYERS.keys() - lower - {layer}]
    assert upward == []


def test_evaluation_does_not_train():
    trainers = [relative(path) for path in (REPO / "eval").rglob("*.py")
                if any(name == "modeling_psdclip.training" or name.startswith("modeling_psdclip.training.")
                       for name in imported_modules(path))]
    assert trainers == []


def test_the_options_default_image_pixel_bound_is_the_loaders():
    from modeling_psdclip.data.records import MAX_IMAGE_PIXELS
    from modeling_psdclip.training.options import TrainingOptions

    assert TrainingOptions().max_image_pixels == MAX_IMAGE_PIXELS


def test_only_the_training_step_calls_a_teacher():
    callers = []
    for path in SOURCES:
        if path.parts[-2:] in (("training", "step.py"), ("training", "teachers.py")) or "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in TEACHER_METHODS and "teacher" in ast.unparse(node.func.value).lower():
                callers.append(f"{relative(path)}:{node.lineno}")
            if isinstance(node, ast.Name) and node.id in ("PreviousEpochTeacher", "EMATeacher"):
                callers.append(f"{relative(path)}:{node.lineno} names {node.id}")
    assert callers == []


@pytest.mark.parametrize("command", [
    ["train.py", "--help"], ["train.py", "--batch-size", "0"], ["-m", "modeling_psdclip.training", "--help"],
    ["-m", "eval", "--help"], ["-m", "eval", "zeroshot", "--model", "m", "--data", "d", "--batch-size", "0"],
    ["-m", "studies", "--help"],
], ids=" ".join)
def test_commands_parse_their_options_before_any_heavy_import(command):
    """`--help` answers, and a bad option fails with status 2, without importing torch and the like."""
    runner = ("import runpy, sys\n"
              f"sys.argv = {command[1:] if command[0] == '-m' else command!r}\n"
              "try:\n"
              + (f"    runpy.run_module({command[1]!r}, run_name='__main__', alter_sys=True)\n" if command[0] == "-m"
                 else f"    runpy.run_path({command[0]!r}, run_name='__main__')\n") +
              "except SystemExit as exit:\n"
              f"    print('status', exit.code, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", runner], cwd=REPO, capture_output=True, text=True, timeout=60)
    last = done.stderr.strip().splitlines()[-1]
    expected_status = 0 if "--help" in command else 2
    assert last == f"status {expected_status} []", done.stderr[-2000:]
