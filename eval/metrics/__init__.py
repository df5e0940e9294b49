"""The `evaluate` metric modules kept in this repository, loaded by local path so no hub is needed."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load `eval/metrics/<name>/<name>.py` (e.g. "recall_at_k") as an `evaluate` metric."""
    return evaluate.load(str(METRICS_DIR / name))
