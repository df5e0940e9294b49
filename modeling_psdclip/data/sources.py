"""One resolver for every kind of image-text data a user can point at, all read through `datasets`: training's
`load_image_text_dataset` and eval's `load_eval_data` both read sources through `load_raw_dataset`, with one split
syntax (`SOURCE:SPLIT`) and one list of image columns."""

import itertools
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np

from ..utils import first_line
from .errors import DataError
from .image_text import ImageTextDataset, ImageTextStream, arrow_rows
from .records import MAX_IMAGE_PIXELS, BadRecord, RecordColumns
from .synthetic import build_synthetic_dataset
from .webdataset_shards import load_webdataset_shards

# Column names tried, in order, when the user names none (besides them, any column of `datasets.Image` type).
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_path", "filepath", "file_path", "path",
                 "file_name")
CAPTION_COLUMNS = ("captions", "caption", "text", "txt", "title", "sentences", "json")
# File suffix -> (datasets builder, its options). CSV is read with undecodable bytes replaced so that one bad
# caption is skipped later instead of failing the whole file.
TABLE_BUILDERS = {
    ".csv": ("csv", {"encoding_errors": "replace"}),
    ".tsv": ("csv", {"delimiter": "\t", "encoding_errors": "replace"}),
    ".parquet": ("parquet", {}),
    ".arrow": ("arrow", {}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
}
PATH_PREFIXES = ("/", "./", "../", "~")
PROBE_RECORDS = 1000  # rows looked at, at most, to tell a dataset with no usable record


def load_image_text_dataset(
    source: str,
    *,
    split: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    streaming: bool = False,
    data_files=None,
    seed: int = 0,
    shuffle_buffer: int | None = 1000,
    input_size: int | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    **options,
) -> ImageTextDataset | ImageTextStream:
    """Image-caption records from `source` (what `load_raw_dataset` reads: `SOURCE:SPLIT` or a `split`, by default
    "train" or a source's only split), which may be

    - `"synthetic"` or `"synthetic:<split>"`: the built-in scenes (`options` go to `build_synthetic_dataset`,
      e.g. `num_samples`, `p_mismatch`; `seed` seeds the scenes too);
    - a folder saved with `save_to_disk`; a folder of WebDataset `.tar` shards; a folder of parquet files;
      an image folder with captions in `metadata.jsonl` / `metadata.csv`;
    - a `.csv` / `.tsv` / `.jsonl` / `.parquet` / `.arrow` table of image paths (relative to the table's folder)
      or images, and captions; a `.tar` shard;
    - anything else `datasets.load_dataset` accepts (`options` go to it), streamed with `streaming=True`.

    Image paths must name regular files (anything else is a missing image, never opened). `input_size` (the
    model's input side) lets large JPEGs decode at a reduced scale; an image that would still decode to more than
    `max_image_pixels` pixels is skipped as too large.

    Columns are found by name (`IMAGE_COLUMNS`, `CAPTION_COLUMNS`) unless given. A caption column may hold a
    list of captions: one is drawn per sample, seeded by (seed, epoch, index). Returns an `ImageTextDataset`
    (map-style, use with `EpochSampler`) or, when streaming, an `ImageTextStream` shuffled with `shuffle_buffer`.
    Raises `DataError` for a missing path, a dataset that cannot be loaded, missing columns, or no usable record.
    """
    raw, base_dir = load_raw_dataset(source, split=split, streaming=streaming, data_files=data_files, seed=seed,
                                     **options)
    if streaming and isinstance(raw, datasets.Dataset):
        raw = raw.to_iterable_dataset(num_shards=min(len(raw), 64) or 1)
    columns = _find_columns(raw, image_column, caption_column, source, base_dir=base_dir, input_size=input_size,
                            max_image_pixels=max_image_pixels)
    for column in columns.image:
        # Images stay undecoded until a worker decodes them, where a corrupt one can be caught and skipped.
        if isinstance((raw.features or {}).get(column), datasets.Image):
            raw = raw.cast_column(column, datasets.Image(decode=False))
    _require_usable_record(raw, columns, source)
    if isinstance(raw, datasets.IterableDataset):
        return ImageTextStream(raw, columns, seed, shuffle_buffer)
    return ImageTextDataset(raw, columns, seed)


def caption_noise(options) -> dict[str, float]:
    """The caption-noise probabilities `build_synthetic_dataset` takes, read from parsed options that name them as it
    does (train.py's and `python -m eval`'s)."""
    return {name: getattr(options, name) for name in ("p_mismatch", "p_partial", "p_generic")}


def split_source(source: str) -> tuple[str, str | None]:
    """`SOURCE:SPLIT` as (SOURCE, SPLIT), any other source as (source, None): `synthetic:val`, `PATH:SPLIT` when PATH
    exists and `PATH:SPLIT` does not (a name may hold a colon), a Hub dataset `NAME:SPLIT` (names hold none)."""
    if source.startswith("synthetic:"):
        return "synthetic", source.partition(":")[2]
    head, colon, split = source.rpartition(":")
    if not colon or not head or not split or Path(source).expanduser().exists():
        return source, None
    if Path(head).expanduser().exists() or not _names_a_path(head):
        return head, split
    return source, None


def choose_split(splits, split: str | None, default: str, source) -> object:
    """`splits[split]` of a dataset of several splits; with no split named, `default`, or the only split there is.
    DataError naming the splits there are when the one asked for is not."""
    if split is None:
        split = default if default in splits or len(splits) != 1 else next(iter(splits))
    if split not in splits:
        raise DataError(f"{source} has no split {split!r}; it has {', '.join(splits)}")
    return splits[split]


def image_columns(names: list[str], features) -> tuple[str, ...]:
    """The columns that may hold a row's image, in the order tried: `IMAGE_COLUMNS` by name, then any column of
    `datasets.Image` type."""
    typed = [name for name in names if isinstance((features or {}).get(name), datasets.Image)]
    return tuple(dict.fromkeys([name for name in IMAGE_COLUMNS if name in names] + typed))


def load_raw_dataset(source: str, *, split: str | None = None, default_split: str = "train", streaming: bool = False,
                     data_files=None, seed: int = 0, **options):
    """The `datasets` dataset behind `source` (the forms `load_image_text_dataset` lists) and the folder relative
    image paths start from. The split: the one `source` names (`SOURCE:SPLIT`), else `split`, else
    `default_split` (training reads "train", evaluation "test"), or a source's only split. Raises DataError."""
    source, named = split_source(source)
    split = named or split
    if source == "synthetic":
        return build_synthetic_dataset(split or default_split, seed=seed, **options), None
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, split, default_split, streaming, options), str(path)
    if path.is_file():
        return _load_file(path, split or default_split, streaming, options), str(path.parent)
    if path.exists():
        raise DataError(f"{source} is neither a regular file nor a folder")
    if _names_a_path(source):
        raise DataError(f"no such file or directory: {source}")
    return _load_dataset(source, source, split=split or default_split, streaming=streaming, data_files=data_files,
                         **options), None


def _names_a_path(source: str) -> bool:
    """Whether `source` is written as a file or folder (even a missing one) rather than a dataset name."""
    suffix = Path(source).suffix.lower()
    return source.startswith(PATH_PREFIXES) or suffix in TABLE_BUILDERS or suffix == ".tar"


def hub_dataset_id(source: str) -> str | None:
    """The Hugging Face Hub dataset that `source` (as `load_image_text_dataset` takes it) is read from, or None for
    the built-in data and local files."""
    if source == "synthetic" or source.startswith("synthetic:") or Path(source).expanduser().exists() \
            or _names_a_path(source):
        return None
    return source


def saved_to_disk(path: str | Path) -> bool:
    """Whether `path` is a folder written by `save_to_disk`, of one `Dataset` or of a `DatasetDict`."""
    return (Path(path).expanduser() / "dataset_info.json").is_file() or saved_with_splits(path)


def saved_with_splits(path: str | Path) -> bool:
    """Whether `path` is a folder written by `DatasetDict.save_to_disk`: named splits, each a saved `Dataset`."""
    return (Path(path).expanduser() / "dataset_dict.json").is_file()


def _load_folder(path: Path, split: str | None, default_split: str, streaming: bool, options: dict):
    if saved_to_disk(path):
        loaded = datasets.load_from_disk(str(path))
        return choose_split(loaded, split, default_split, path) if isinstance(loaded, datasets.DatasetDict) \
            else loaded
    # Shards in a folder named after the split (CLIP_benchmark's and img2dataset's layout) belong to that split
    # alone; otherwise every shard in the folder does.
    shard_root = path / (split or default_split)
    shards = sorted(str(p) for p in (shard_root if shard_root.is_dir() else path).rglob("*.tar"))
    if shards:
        return load_webdataset_shards(shards, streaming=streaming)
    # datasets assigns files to splits by their names and folders (train-*.parquet, data/test/...).
    builder = "parquet" if any(path.rglob("*.parquet")) else "imagefolder"
    loaded = _load_dataset(path, builder, data_dir=str(path), streaming=streaming, **options)
    return choose_split(loaded, split, default_split, path)


def _load_file(path: Path, split: str, streaming: bool, options: dict):
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return load_webdataset_shards([str(path)], streaming=streaming)
    if suffix not in TABLE_BUILDERS:
        raise DataError(f"cannot read {path}: expected one of {', '.join(TABLE_BUILDERS)}, .tar or a folder")
    builder, builder_options = TABLE_BUILDERS[suffix]
    try:
        return _load_dataset(path, builder, data_files={split: str(path)}, split=split, streaming=streaming,
                             **builder_options, **options)
    except DataError:
        # datasets' JSON error names neither the file's line nor what is wrong with it.
        line = _first_line_not_json(path) if suffix == ".jsonl" else None
        if line is None:
            raise
        raise DataError(f"cannot load {str(path)!r}: line {line} is not a JSON object") from None


def _first_line_not_json(path: Path) -> int | None:
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        return number
                except ValueError:
                    return number
    return None


def _load_dataset(source, path: str, **kwargs):
    # load_dataset fails in many ways on a user's input (unknown name, offline hub, bad files, unknown split);
    # each is reported in one line.
    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as error:
        raise DataError(f"cannot load {str(source)!r}: {first_line(error)}") from None


def _find_columns(raw, image_column, caption_column, source, **decoding) -> RecordColumns:
    names = raw.column_names or list(next(iter(raw), {}))
    image = _pick_columns(names, image_column, "image", image_columns(names, raw.features), source)
    caption = _pick_columns(names, caption_column, "caption", CAPTION_COLUMNS, source)
    return RecordColumns(image=image, caption=caption, **decoding)


def _pick_columns(names, chosen, role, candidates, source) -> tuple[str, ...]:
    if chosen is not None:
        if chosen not in names:
            raise DataError(f"{source!r} has no {role} column {chosen!r}; its columns are {', '.join(names)}")
        return (chosen,)
    found = tuple(name for name in candidates if name in names)
    if not found:
        raise DataError(f"{source!r} has no {role} column (columns: {', '.join(names)}); "
                        f"name one with {role}_column=")
    return found


def _require_usable_record(raw, columns: RecordColumns, source: str):
    rng = np.random.default_rng(0)
    reasons = Counter()
    if isinstance(raw, datasets.Dataset):
        row_loaders = (lambda index=index: raw[index] for index in range(min(len(raw), PROBE_RECORDS)))
    else:
        row_loaders = (lambda row=row: row.to_pylist()[0]
                       for row in itertools.islice(arrow_rows(raw), PROBE_RECORDS))
    for load_row in row_loaders:
        try:
            columns.read(load_row, rng)
            return
        except BadRecord as bad:
            reasons[bad.reason] += 1
    if not reasons:
        raise DataError(f"{source!r} has no records")
    summary = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    raise DataError(f"{source!r} has no usable record among its first {sum(reasons.values())} ({summary})")
