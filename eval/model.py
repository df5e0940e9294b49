"""One interface for every model the tasks evaluate: images and texts in, L2-normalised embeddings out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

import torch

from modeling_psdclip.cli import first_line
from modeling_psdclip.embedding import ImageTextEmbedder

from .errors import EvalInputError


class ImageTextEncoder(Protocol):
    """What a task needs from a model. `EmbeddingModel` implements it; tests implement it with fakes."""

    name: str

    def encode_images(self, images: Sequence) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...

    @property
    def logit_multiplier(self) -> float: ...


def require_model_folder(folder: str | Path) -> Path:
    """The folder as a Path; EvalInputError unless it holds a saved model (a config.json)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EvalInputError(f"model folder {folder} not found or has no config.json")
    return folder


def input_size(folder: str | Path, default: int = 64) -> int:
    """The image side a saved model folder's vision tower reads (`default` when its config does not say)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return config.get("vision_config", {}).get("image_size", default)


class EmbeddingModel(ImageTextEmbedder):
    """The package's embedder (PSD-CLIP or stock `CLIPModel`), loaded from a local folder with eval's errors."""

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "EmbeddingModel":
        """Load a saved model folder (PSD-CLIP or any CLIP-compatible checkpoint) and its processor, offline."""
        folder = require_model_folder(folder)
        try:
            return super().from_pretrained(folder, trust_remote_code=True, local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as error:
            raise EvalInputError(f"cannot load model folder {folder}: {first_line(error)}") from error
