"""What every command of the project (train.py, python -m eval) shares: a user mistake is one line and exit 2."""

import argparse
import json
import os
import sys
import tempfile
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


def cannot_create_in(folder) -> str | None:
    """Why nothing can be created in `folder` (or, while it does not exist, in the nearest folder above it that
    does), as "REASON in FOLDER"; None when something can.

    Creating something is the one check that holds for root and on read-only mounts alike.
    """
    folder = Path(folder).absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        Path(tempfile.mkdtemp(prefix=".psdclip-write-check-", dir=existing)).rmdir()
    except OSError as error:
        return f"{error.strerror or error} in {existing}"
    return None


def write_json_atomically(path: Path, data: dict) -> None:
    """Write `data` as JSON so that a reader never sees half a file: staged beside it, then renamed over it."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(staging, path)


__all__ = ["OneLineErrorParser", "cannot_create_in", "fail", "first_line", "write_json_atomically"]
