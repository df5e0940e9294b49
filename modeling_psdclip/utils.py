"""General helpers of every command of the project (train.py, python -m eval, python -m studies): a user mistake is
one line and exit 2; a JSON file is replaced atomically; results are shown as Markdown tables."""

import argparse
import importlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml


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


def read_small_text_file(path, max_bytes: int) -> str:
    """The UTF-8 text of the regular file `path`, for a file of settings a user names.

    ValueError, in one line, when `path` is not a regular file (a FIFO, /dev/zero or a terminal would block or be
    read until memory runs out), holds more than `max_bytes`, or is not UTF-8 text; OSError when it cannot be
    opened. Opened without blocking, so that a FIFO with no writer is refused rather than waited on.
    """
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes} bytes, too large for a file of settings")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start} is {data[error.start]:#04x})") from None


class _StrictSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last one without a word;
    in an options or study file a repeated key is a mistake, and which value counts should not be a guess)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: keys given beside it override it
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the safe loader refuses it with its own error
                    break
                if repeated:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_strict(text: str):
    """`yaml.safe_load(text)`, except that a key given twice in one mapping raises yaml.YAMLError naming it
    (`yaml_error_line` words it in one line)."""
    return yaml.load(text, Loader=_StrictSafeLoader)


# A file of settings (train.py's --config, a study) is a page of text; a larger "file" is a mistake, or /dev/zero.
MAX_SETTINGS_FILE_BYTES = 2**20


def read_settings_file(path):
    """The YAML of a settings file a user names: `read_small_text_file` (ValueError, OSError) bounded by
    `MAX_SETTINGS_FILE_BYTES`, then `load_yaml_strict` (yaml.YAMLError)."""
    return load_yaml_strict(read_small_text_file(path, MAX_SETTINGS_FILE_BYTES))


def yaml_error_line(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def status_of(prog: str, action: Callable[[], object], *mistakes: type[Exception]) -> int:
    """Run a command's `action`: exit status 0, or 2 with `prog: error: message` on stderr for one of `mistakes`
    (exceptions whose message is one line for the user)."""
    try:
        action()
    except mistakes as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def lazy_names(package: str, exports: dict[str, str], on_first_use: Callable[[], None] | None = None):
    """`__getattr__` and `__dir__` (PEP 562) for a package whose names load from their submodules on first use
    (`exports`: name -> submodule), so that importing the package, as a command does before parsing its options,
    loads nothing heavy. `on_first_use` runs before any of them loads."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if on_first_use is not None:
            on_first_use()
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


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


__all__ = ["OneLineErrorParser", "cannot_create_in", "fail", "first_line", "format_value", "lazy_names",
           "load_yaml_strict", "markdown_table", "read_small_text_file", "status_of", "write_json_atomically",
           "yaml_error_line"]
