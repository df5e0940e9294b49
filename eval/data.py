"""Evaluation data in one shape, whatever it was stored as.

Sources (`load_eval_data(source)`), read through the data package's resolver (`modeling_psdclip.data.sources`:
the split syntax `SOURCE:SPLIT` and the image columns training uses too); without a split, "test", or a source's
only split:
- `synthetic:SPLIT` — the library's built-in captioned scenes (train, val, test, sketch, unseen_texture, ...).
- `PATH[:SPLIT]` where PATH holds `classnames.txt` or `dataset_type.txt` — a CLIP_benchmark webdataset export
  (classification or retrieval): shards `SPLIT/*.tar` with an image (.webp/.jpg/.png) and .cls (class index) or
  .txt (captions, one a line) per sample, plus optional `zeroshot_classification_templates.txt`.
- `PATH[:SPLIT]` written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (e.g. the OpenMoji benchmark).
- `PATH[:SPLIT]` any other folder — `datasets`' imagefolder: classes from sub-folder names; or, with a
  `metadata.jsonl`/`metadata.csv` next to the images (datasets then infers no folder classes), captions,
  noise labels and a class column (e.g. "label", class names as strings) from the metadata; a folder of parquet
  files or WebDataset shards.
- a table (`.csv`, `.tsv`, `.jsonl`, `.parquet`, `.arrow`) of images or image paths (relative to the table's
  folder), or a `datasets` name, as training reads them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np
from datasets.data_files import SPLIT_KEYWORDS

from modeling_psdclip.utils import first_line
from modeling_psdclip.data import CLEAN, DataError  # noqa: F401 (CLEAN: eval's name for the label too)
from modeling_psdclip.data.records import BadRecord, decode_image
from modeling_psdclip.data.sources import IMAGE_COLUMNS, image_columns, load_raw_dataset, split_source

from .errors import EvalInputError
from .templates import read_lines

LABEL_COLUMNS = ("label", "cls")
DEFAULT_SPLIT = "test"  # what a source of several splits is evaluated on when the source names none


@dataclass
class EvalData:
    """Images with whatever annotations the data has: class labels, captions (several per image allowed),
    noise labels. `images` is a sequence of PIL images (a `datasets` column decodes lazily)."""

    name: str
    images: Sequence
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None
    noise: list[str] | None = None
    templates: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def require(self, task: str, *fields: str) -> None:
        """EvalInputError naming what `task` needs and this data lacks."""
        missing = [field for field in fields if getattr(self, field) is None]
        if missing:
            raise EvalInputError(f"{task} needs {' and '.join(missing)}, which data {self.name!r} does not have")
        if "class_names" in fields and len(self.class_names) < 2:
            raise EvalInputError(f"{task} needs at least two classes; data {self.name!r} has {len(self.class_names)}")

    def sample(self, count: int, seed: int = 0) -> "EvalData":
        """A seeded random `count` of the examples (all of them, in order, when there are no more)."""
        if count >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False))
        pick = lambda values: None if values is None else [values[int(row)] for row in rows]  # noqa: E731
        return EvalData(name=self.name, images=pick(self.images),
                        labels=None if self.labels is None else self.labels[rows], class_names=self.class_names,
                        captions=pick(self.captions), noise=pick(self.noise), templates=self.templates)

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset, name: str, *, label_column: str | None = None,
                     class_names: list[str] | None = None, templates: list[str] | None = None,
                     base_dir: str | None = None) -> "EvalData":
        """Adapt a `datasets.Dataset` with an image column (found as training finds it: images, encoded bytes, or
        paths relative to `base_dir`) and any of: a class label column (a ClassLabel, ints with `class_names`,
        or strings), `captions` (list of str), `caption` (str), `txt` (captions one a line), `noise` ("clean" or
        the kind of corruption)."""
        columns = dataset.column_names
        image_column = next(iter(image_columns(columns, dataset.features)), None)
        if image_column is None:
            raise EvalInputError(f"data {name!r} has no image column (looked for {', '.join(IMAGE_COLUMNS)})")
        if len(dataset) == 0:
            raise EvalInputError(f"data {name!r} is empty")
        if label_column is not None and label_column not in columns:
            raise EvalInputError(f"data {name!r} has no column {label_column!r} (it has {', '.join(columns)})")
        label_column = label_column or next((column for column in LABEL_COLUMNS if column in columns), None)
        dataset = _readable_images(_decoded_images(dataset, image_column, base_dir), image_column, name)
        labels, class_names = _labels(dataset, label_column, class_names, name)
        return cls(name=name, images=dataset[image_column], labels=labels, class_names=class_names,
                   captions=_captions(dataset), noise=list(dataset["noise"]) if "noise" in columns else None,
                   templates=templates)


def _decoded_images(dataset: datasets.Dataset, column: str, base_dir: str | None) -> datasets.Dataset:
    """`column` as a `datasets.Image` column that decodes to PIL images, whether it held images, encoded bytes or
    paths (relative ones from `base_dir`)."""
    feature = dataset.features.get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset
    if base_dir is not None and isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        dataset = dataset.map(lambda path: {column: os.path.join(base_dir, os.path.expanduser(path)) if path else path},
                              input_columns=[column])
    return dataset.cast_column(column, datasets.Image())


def _readable_images(dataset: datasets.Dataset, column: str, name: str) -> datasets.Dataset:
    """The rows whose image decodes; the others are dropped and counted in a note, so that one truncated file does
    not stop an evaluation (images are decoded lazily, in the middle of encoding, where it would)."""
    if not isinstance(dataset.features.get(column), datasets.Image):
        return dataset
    readable = []
    for index, value in enumerate(dataset.cast_column(column, datasets.Image(decode=False))[column]):
        try:
            decode_image(value)
        except BadRecord:
            continue
        readable.append(index)
    if len(readable) == len(dataset):
        return dataset
    if not readable:
        raise EvalInputError(f"data {name!r}: none of its {len(dataset)} images can be read")
    print(f"note: data {name!r}: skipped {len(dataset) - len(readable)} of {len(dataset)} images that cannot be read",
          file=sys.stderr)
    return dataset.select(readable)


def _labels(dataset, column, class_names, name):
    if column is None:
        return None, class_names
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return np.asarray(list(dataset[column])), class_names or list(feature.names)
    values = list(dataset[column])
    if all(isinstance(value, str) for value in values[:1]):
        class_names = class_names or sorted(set(values))
        index = {class_name: i for i, class_name in enumerate(class_names)}
        return np.asarray([index[value] for value in values]), class_names
    labels = np.asarray(values, dtype=int)
    if labels.min() < 0:
        raise EvalInputError(f"data {name!r} has negative labels in {column!r}")
    if class_names is not None and labels.max() >= len(class_names):
        raise EvalInputError(f"data {name!r} has labels outside its {len(class_names)} class names")
    return labels, class_names


def _captions(dataset) -> list[list[str]] | None:
    columns = dataset.column_names
    if "captions" in columns:
        return [_caption_list(captions) for captions in dataset["captions"]]
    if "caption" in columns:
        return [[caption] for caption in dataset["caption"]]
    if "txt" in columns:  # text, or the raw bytes of a WebDataset shard's .txt member
        return [(text.decode("utf-8", "replace") if isinstance(text, bytes) else text).splitlines()
                for text in dataset["txt"]]
    return None


def _caption_list(captions) -> list[str]:
    """Several captions as a list; a table (metadata.csv) holds them as text: a JSON list, or one a line."""
    if not isinstance(captions, str):
        return list(captions)
    if captions.lstrip().startswith("["):
        try:
            return [str(caption) for caption in json.loads(captions)]
        except json.JSONDecodeError:
            pass
    return captions.splitlines()


def load_eval_data(source: str, *, label_column: str | None = None, num_samples: int = 1000, seed: int = 0,
                   image_size: int = 64, **synthetic_options) -> EvalData:
    """Load one split of any supported source (see the module docstring) as `EvalData`. `num_samples`,
    `seed`, `image_size` and `synthetic_options` (e.g. the train split's `p_mismatch`) apply to the synthetic
    data only."""
    if source.startswith("synthetic:"):
        return _synthetic(source.partition(":")[2], label_column, num_samples=num_samples, seed=seed,
                          image_size=image_size, **synthetic_options)
    path, split = split_source(source)
    folder = Path(path).expanduser()
    if (folder / "classnames.txt").is_file() or (folder / "dataset_type.txt").is_file():
        return _clip_benchmark_webdataset(folder, split or DEFAULT_SPLIT, label_column)
    try:
        dataset, base_dir = load_raw_dataset(path, split=split, default_split=DEFAULT_SPLIT)
    except DataError as error:
        raise EvalInputError(str(error)) from None
    if isinstance(dataset, datasets.IterableDataset):
        raise EvalInputError(f"data {source!r} is a stream; evaluation needs a data set it can index")
    # An image folder without metadata has labels only from two or more class folders; one class folder holding
    # every image is one class, so that a task needing classes says how many there are.
    if dataset.column_names == ["image"] and folder.is_dir():
        class_name = _single_class_folder(dataset, folder)
        if class_name is not None:
            dataset = dataset.add_column("label", [class_name] * len(dataset))
    name = f"{folder.name}:{split}" if split else folder.name
    return EvalData.from_dataset(dataset, name, label_column=label_column, base_dir=base_dir)


def _synthetic(split, label_column, **options) -> EvalData:
    try:
        from modeling_psdclip.data import build_synthetic_dataset
    except ImportError as error:
        raise EvalInputError("synthetic data needs the modeling_psdclip package") from error
    try:
        dataset = build_synthetic_dataset(split, **options)
    except (KeyError, ValueError) as error:
        raise EvalInputError(f"synthetic split {split!r}: {first_line(error)}") from error
    return EvalData.from_dataset(dataset, f"synthetic:{split}", label_column=label_column or "label_shape")


def _clip_benchmark_webdataset(root: Path, split: str, label_column) -> EvalData:
    """Read with the training data's shard reader: datasets' webdataset builder fails on shards that mix image
    formats (CLIP_benchmark keeps each image's own) and on a caption that is not UTF-8."""
    from modeling_psdclip.data import DataError
    from modeling_psdclip.data.records import UNREADABLE
    from modeling_psdclip.data.webdataset_shards import load_webdataset_shards

    name = f"{root.name}:{split}"
    shards = sorted(str(shard) for shard in (root / split).glob("*.tar"))
    if not shards:
        raise EvalInputError(f"webdataset {root} has no shards {split}/*.tar")
    try:
        raw = load_webdataset_shards(shards)
    except DataError as error:
        raise EvalInputError(str(error)) from None
    unreadable = sum(raw[UNREADABLE])
    if unreadable:
        print(f"note: data {name!r}: skipped {unreadable} damaged shard part(s) that could not be read",
              file=sys.stderr)
        raw = raw.filter(lambda flag: not flag, input_columns=[UNREADABLE])
        if len(raw) == 0:
            raise EvalInputError(f"data {name!r} has no readable sample in {len(shards)} damaged shard(s)")
    dataset = raw.select_columns(["image"]).cast_column("image", datasets.Image())
    for field in ("cls", "txt"):
        values = [_utf8(value, name, field) for value in raw[field]]
        if all(value is not None for value in values):
            dataset = dataset.add_column(field, [_class_index(v, name) for v in values] if field == "cls" else values)
    classnames_file = root / "classnames.txt"
    templates_file = root / "zeroshot_classification_templates.txt"
    return EvalData.from_dataset(
        dataset, name, label_column=label_column,
        class_names=read_lines(classnames_file, "class name") if classnames_file.is_file() else None,
        templates=read_lines(templates_file, "template") if templates_file.is_file() else None)


def _utf8(value: bytes | None, name: str, field: str) -> str | None:
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        raise EvalInputError(f"data {name!r} has a .{field} member that is not UTF-8 text") from None


def _class_index(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise EvalInputError(f"data {name!r} has a .cls member that is not a class index: {text[:40]!r}") from None


def _single_class_folder(dataset: datasets.Dataset, root: Path) -> str | None:
    """The name of the one folder below `root` that holds every image, unless it is a split's folder."""
    values = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    parents = {Path(value["path"]).resolve().parent for value in values if value.get("path")}
    if len(parents) != 1:
        return None
    (parent,) = parents
    split_names = {name for names in SPLIT_KEYWORDS.values() for name in names}
    if parent == root.resolve() or parent.name.lower() in split_names:
        return None
    return parent.name
