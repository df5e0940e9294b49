"""Evaluation data in one shape, whatever it was stored as.

Sources (`load_eval_data(source)`):
- `synthetic:SPLIT` — the library's built-in captioned scenes (train, val, test, sketch, unseen_texture, ...).
- `PATH[:SPLIT]` where PATH holds `classnames.txt` — a CLIP_benchmark webdataset export: shards
  `SPLIT/*.tar` (default split "test") with an image (.webp/.jpg/.png) and .cls (class index) or .txt
  (captions, one a line) per sample, plus optional `zeroshot_classification_templates.txt`.
- `PATH[:SPLIT]` written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (e.g. the OpenMoji benchmark).
- `PATH[:SPLIT]` any other folder — `datasets`' imagefolder: classes from sub-folder names; or, with a
  `metadata.jsonl`/`metadata.csv` next to the images (datasets then infers no folder classes), captions,
  noise labels and a class column (e.g. "label", class names as strings) from the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np

from .errors import EvalInputError
from .templates import read_lines

IMAGE_COLUMNS = ("image", "webp", "jpg", "jpeg", "png")
LABEL_COLUMNS = ("label", "cls")
CLEAN = "clean"


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

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset, name: str, *, label_column: str | None = None,
                     class_names: list[str] | None = None, templates: list[str] | None = None) -> "EvalData":
        """Adapt a `datasets.Dataset` with an image column and any of: a class label column (a ClassLabel,
        ints with `class_names`, or strings), `captions` (list of str), `caption` (str), `txt` (captions one a
        line), `noise` ("clean" or the kind of corruption)."""
        columns = dataset.column_names
        image_column = next((column for column in IMAGE_COLUMNS if column in columns), None)
        if image_column is None:
            raise EvalInputError(f"data {name!r} has no image column (looked for {', '.join(IMAGE_COLUMNS)})")
        if len(dataset) == 0:
            raise EvalInputError(f"data {name!r} is empty")
        if label_column is not None and label_column not in columns:
            raise EvalInputError(f"data {name!r} has no column {label_column!r} (it has {', '.join(columns)})")
        label_column = label_column or next((column for column in LABEL_COLUMNS if column in columns), None)
        labels, class_names = _labels(dataset, label_column, class_names, name)
        return cls(name=name, images=dataset[image_column], labels=labels, class_names=class_names,
                   captions=_captions(dataset), noise=list(dataset["noise"]) if "noise" in columns else None,
                   templates=templates)


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
    if class_names is None:
        raise EvalInputError(f"data {name!r} has integer labels in {column!r} but no class names")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise EvalInputError(f"data {name!r} has labels outside its {len(class_names)} class names")
    return labels, class_names


def _captions(dataset) -> list[list[str]] | None:
    columns = dataset.column_names
    if "captions" in columns:
        return [list(captions) for captions in dataset["captions"]]
    if "caption" in columns:
        return [[caption] for caption in dataset["caption"]]
    if "txt" in columns:
        return [text.splitlines() for text in dataset["txt"]]
    return None


def load_eval_data(source: str, *, label_column: str | None = None, num_samples: int = 1000, seed: int = 0,
                   image_size: int = 64, **synthetic_options) -> EvalData:
    """Load one split of any supported source (see the module docstring) as `EvalData`. `num_samples`,
    `seed`, `image_size` and `synthetic_options` (e.g. the train split's `p_mismatch`) apply to the synthetic
    data only."""
    if source.startswith("synthetic:"):
        return _synthetic(source.partition(":")[2], label_column, num_samples=num_samples, seed=seed,
                          image_size=image_size, **synthetic_options)
    path, split = _path_and_split(source)
    if (path / "classnames.txt").is_file():
        return _clip_benchmark_webdataset(path, split or "test", label_column)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _saved_to_disk(path, split, label_column)
    return _imagefolder(path, split, label_column)


def _path_and_split(source: str) -> tuple[Path, str | None]:
    path = Path(source)
    if not path.exists() and ":" in source:
        head, _, split = source.rpartition(":")
        path = Path(head)
        if path.is_dir():
            return path, split
    if not path.is_dir():
        raise EvalInputError(f"data source {source!r} is not 'synthetic:SPLIT' nor an existing folder")
    return path, None


def _synthetic(split, label_column, **options) -> EvalData:
    try:
        from modeling_psdclip.data import build_synthetic_dataset
    except ImportError as error:
        raise EvalInputError("synthetic data needs the modeling_psdclip package") from error
    try:
        dataset = build_synthetic_dataset(split, **options)
    except (KeyError, ValueError) as error:
        raise EvalInputError(f"synthetic split {split!r}: {str(error).splitlines()[0]}") from error
    return EvalData.from_dataset(dataset, f"synthetic:{split}", label_column=label_column or "label_shape")


def _split_of(dataset_dict: datasets.DatasetDict, split: str | None, name: str) -> datasets.Dataset:
    if split is None:
        split = "test" if "test" in dataset_dict or len(dataset_dict) != 1 else next(iter(dataset_dict))
    if split not in dataset_dict:
        raise EvalInputError(f"data {name} has no split {split!r} (it has {', '.join(dataset_dict)})")
    return dataset_dict[split]


def _clip_benchmark_webdataset(root: Path, split: str, label_column) -> EvalData:
    shards = sorted((root / split).glob("*.tar"))
    if not shards:
        raise EvalInputError(f"webdataset {root} has no shards {split}/*.tar")
    dataset = datasets.load_dataset("webdataset", data_files={split: [str(shard) for shard in shards]},
                                    split=split)
    templates_file = root / "zeroshot_classification_templates.txt"
    templates = read_lines(templates_file, "template") if templates_file.is_file() else None
    return EvalData.from_dataset(dataset, f"{root.name}:{split}", label_column=label_column,
                                 class_names=read_lines(root / "classnames.txt", "class name"), templates=templates)


def _saved_to_disk(path: Path, split, label_column) -> EvalData:
    loaded = datasets.load_from_disk(str(path))
    dataset = _split_of(loaded, split, str(path)) if isinstance(loaded, datasets.DatasetDict) else loaded
    return EvalData.from_dataset(dataset, f"{path.name}:{split}" if split else path.name, label_column=label_column)


def _imagefolder(path: Path, split, label_column) -> EvalData:
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except (ValueError, FileNotFoundError) as error:
        raise EvalInputError(f"folder {path} is not an image folder: {str(error).splitlines()[0]}") from error
    dataset = _split_of(loaded, split, str(path))
    return EvalData.from_dataset(dataset, f"{path.name}:{split}" if split else path.name, label_column=label_column)
