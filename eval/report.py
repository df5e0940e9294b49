"""Writing results: a JSON file and a Markdown table per run."""

from __future__ import annotations

import json
from pathlib import Path

from modeling_psdclip.utils import format_value, markdown_table  # noqa: F401 (format_value: eval's name for it)


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
