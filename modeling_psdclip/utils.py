"""General helpers of every command of the project (train.py, python -m eval, python -m studies): a user mistake is
one line and exit 2; a JSON file is replaced atomically; results are shown as Markdown tables."""

import argparse
import json
import os
import sys
from pathlib import Path


def first_line(error: BaseException) -> str:
    """An exception as one line: the first line of its message, or its type's name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def fail(prog: str, message: str, status: int = 2):
    """Print `prog: error: message` (argparse's form) to stderr and exit with `status`."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; one line naming the option is easier to read in logs."""

    def error(self, message):
        fail(self.prog, message)


def write_json_atomically(path: Path, data: dict) -> None:
    """Write `data` as JSON so that a reader never sees half a file: staged beside it, then renamed over it."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(staging, path)


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of flat rows (dicts of scalars: floats to 4 decimals, None as "–"); the columns are
    `columns`, or the rows' keys in first-seen order."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = ["OneLineErrorParser", "fail", "first_line", "format_value", "markdown_table", "write_json_atomically"]
