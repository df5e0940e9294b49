"""Writing results: a JSON file and a Markdown table per run."""

from __future__ import annotations

import json
from pathlib import Path


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of flat rows (dicts of scalars), columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def scalar_metrics(results: dict) -> dict:
    """The scalar entries of a task's results (what a table row and a card show); nested detail stays in JSON."""
    return {key: value for key, value in results.items() if isinstance(value, (int, float, str)) or value is None}


def write_report(output_dir: str | Path, task: str, results, rows: list[dict]) -> dict[str, Path]:
    """`<task>.json` with the full results and `<task>.md` with the table of `rows`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / f"{task}.json", output_dir / f"{task}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(f"# {task}\n\n" + markdown_table(rows), encoding="utf-8")
    return {"json": json_path, "markdown": markdown_path}
