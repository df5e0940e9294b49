"""Built-in captioned scenes: the default training data, and clean or shifted splits to evaluate on.

A split is a `datasets.Dataset` saved under a cache folder named by a hash of its parameters, so it is made
once and then read back like any other dataset saved with `save_to_disk`.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import datasets
import numpy as np

from .errors import DataError
from .raw_images import encode_ppm
from .render import render_scene
from .scenes import (
    COLOURS, COUNTS, GENERIC_CAPTIONS, HELD_OUT_BACKGROUNDS, HELD_OUT_TEXTURES, SHAPES, SceneStyle, describe,
    sample_scene, with_wrong_attribute,
)

SPLIT_STYLES = {
    "train": SceneStyle(),
    "val": SceneStyle(),
    "test": SceneStyle(),
    "sketch": SceneStyle(sketch=True),
    "unseen_texture": SceneStyle(backgrounds=HELD_OUT_BACKGROUNDS, textures=HELD_OUT_TEXTURES),
    "unseen_shade": SceneStyle(shades=(3,)),
}
SPLITS = tuple(SPLIT_STYLES)
# What every split of a world changes in its style: fine-tuning benchmarks train a starting model in one world and
# fine-tune it in another. `familiar_shapes` never shows the three shapes (nor their words) that make up
# `novel_shapes`; `sketch` draws every split as outlines, with sketch captions.
FAMILIAR_SHAPES = tuple(range(5))  # circle, square, triangle, star, ring
WORLDS = {
    "standard": {},
    "sketch": {"sketch": True},
    "familiar_shapes": {"shapes": FAMILIAR_SHAPES},
    "novel_shapes": {"shapes": tuple(range(len(FAMILIAR_SHAPES), len(SHAPES)))},  # cross, diamond, hexagon
}
CLEAN = "clean"  # the noise label of an untouched pair, in the `noise` column of this and every built data set
NOISE_KINDS = (CLEAN, "mismatch", "partial", "generic")
CAPTIONS_PER_EVAL_IMAGE = 5  # several captions per held-out image, as retrieval benchmarks have
# Part of the cache key: bump it when a change alters what a seed produces or how it is stored (4: PPM images).
GENERATOR_VERSION = 4

FEATURES = datasets.Features({
    "image": datasets.Image(),
    "caption": datasets.Value("string"),
    "captions": datasets.List(datasets.Value("string")),
    "label_shape": datasets.ClassLabel(names=list(SHAPES)),
    "label_colour": datasets.ClassLabel(names=list(COLOURS)),
    "label_count": datasets.ClassLabel(names=list(COUNTS)),
    "noise": datasets.Value("string"),
})


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    split: str
    num_samples: int
    seed: int
    image_size: int
    p_mismatch: float
    p_partial: float
    p_generic: float
    world: str = "standard"

    def validate(self):
        if self.split not in SPLIT_STYLES:
            raise DataError(f"unknown synthetic split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.world not in WORLDS:
            raise DataError(f"unknown synthetic world {self.world!r}; choose one of {', '.join(WORLDS)}")
        if self.num_samples < 1 or self.image_size < 8:
            raise DataError(f"a synthetic split needs num_samples >= 1 and image_size >= 8, got {self.num_samples} "
                            f"and {self.image_size}")
        noise = (self.p_mismatch, self.p_partial, self.p_generic)
        if not all(0 <= p <= 1 for p in noise) or sum(noise) > 1:
            raise DataError(f"noise probabilities must lie in [0, 1] and sum to at most 1, got {noise}")
        if self.split != "train" and any(noise):
            raise DataError(f"caption noise applies to the train split only, not {self.split!r}")

    @property
    def style(self) -> SceneStyle:
        return dataclasses.replace(SPLIT_STYLES[self.split], **WORLDS[self.world])

    def rng(self, index: int) -> np.random.Generator:
        # Seeding by (seed, split, index) makes each image independent of the others and of the split size,
        # and keeps splits that share a seed apart.
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index])

    def cache_name(self) -> str:
        fields = json.dumps({**dataclasses.asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return f"{self.split}-{self.num_samples}-{hashlib.sha256(fields.encode()).hexdigest()[:16]}"


def build_synthetic_dataset(
    split: str = "train",
    num_samples: int = 10_000,
    seed: int = 0,
    image_size: int = 64,
    p_mismatch: float = 0.0,
    p_partial: float = 0.0,
    p_generic: float = 0.0,
    world: str = "standard",
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """One split of the synthetic scenes, made on first use and read from `cache_dir` afterwards.

    Columns: `image` (stored as binary PPM, which reads with no decoder: see raw_images.py), `caption` (for
    `train`, the caption after noise), `captions` (several clean captions for held-out splits, `[caption]` for
    `train`), the class labels `label_shape`, `label_colour`, `label_count` of the
    main object and the number of objects (`ClassLabel`s whose names are `SHAPES`, `COLOURS`, `COUNTS`), and
    `noise` ("clean", "mismatch", "partial" or "generic"), what was done to the caption. `world` (one of `WORLDS`)
    changes the style of every split: the labels keep all the class names.
    """
    config = SyntheticConfig(split, num_samples, seed, image_size, p_mismatch, p_partial, p_generic, world)
    config.validate()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / config.cache_name()
    if not path.exists():
        _build_to(path, config, num_proc)
    return datasets.load_from_disk(str(path))


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "psdclip" / "synthetic"


def _build_to(path: Path, config: SyntheticConfig, num_proc: int | None):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built in a private folder and renamed into place, so processes building the same split at once
    # never read a half-written one.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".building-") as scratch:
        if num_proc is None:
            num_proc = min(os.cpu_count() or 1, config.num_samples // 5000) or None
        shards = np.array_split(np.arange(config.num_samples), num_proc or 1)
        dataset = datasets.Dataset.from_generator(
            _generate, features=FEATURES, gen_kwargs={"shards": [s.tolist() for s in shards], "config": config},
            num_proc=num_proc, cache_dir=str(Path(scratch) / "generator"),
        )
        dataset.save_to_disk(str(Path(scratch) / "dataset"))
        try:
            os.rename(Path(scratch) / "dataset", path)
        except OSError:
            if not path.exists():
                raise  # anything but another process having finished first


def _generate(shards: list[list[int]], config: SyntheticConfig):
    for shard in shards:
        for index in shard:
            yield _example(index, config)


def _example(index: int, config: SyntheticConfig) -> dict:
    rng = config.rng(index)
    scene = sample_scene(rng, config.style)
    image = render_scene(scene, config.image_size, rng)
    if config.split == "train":
        caption, noise = _train_caption(scene, index, rng, config)
        captions = [caption]
    else:
        captions = [describe(scene, rng) for _ in range(CAPTIONS_PER_EVAL_IMAGE)]
        noise = "clean"
    main = scene.objects[0]
    return {"image": {"bytes": encode_ppm(image), "path": None}, "caption": captions[0], "captions": captions,
            "label_shape": main.shape, "label_colour": main.colour, "label_count": len(scene.objects) - 1,
            "noise": noise}


def _train_caption(scene, index: int, rng: np.random.Generator, config: SyntheticConfig) -> tuple[str, str]:
    draw = rng.random()
    if draw < config.p_mismatch and config.num_samples > 1:
        other = (index + 1 + int(rng.integers(config.num_samples - 1))) % config.num_samples
        # The other image's scene is the first thing drawn from its generator.
        return describe(sample_scene(config.rng(other), config.style), rng), "mismatch"
    draw -= config.p_mismatch
    if draw < config.p_partial:
        wrong_scene, attribute = with_wrong_attribute(scene, rng, config.style)
        return describe(wrong_scene, rng, name_colour=attribute == "colour"), "partial"
    draw -= config.p_partial
    if draw < config.p_generic:
        return GENERIC_CAPTIONS[rng.integers(len(GENERIC_CAPTIONS))], "generic"
    return describe(scene, rng), "clean"
