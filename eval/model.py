"""Loading the models the tasks evaluate, with eval's errors. Every task takes the package's `ImageTextEmbedder`
(images and texts in, L2-normalised embeddings out), or anything with its `name`, `encode_images`, `encode_texts` and
`logit_multiplier`."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from safetensors import SafetensorError

from modeling_psdclip.utils import first_line
from modeling_psdclip.embedding import ImageTextEmbedder, UntrustedCodeError
from modeling_psdclip.model_folder import pickle_weights_note, refused_pickle

from .errors import EvalInputError


def require_model_folder(folder: str | Path) -> Path:
    """The folder as a Path; EvalInputError unless it holds a saved model (a config.json)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EvalInputError(f"model folder {folder} not found or has no config.json")
    return folder


def input_size(folder: str | Path, default: int = 64) -> int:
    """The image side a saved model folder's vision tower reads (`default` when its config does not say);
    EvalInputError when config.json is not a JSON object."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalInputError(f"cannot load model folder {folder}: {path} is not JSON: {first_line(error)}") from None
    vision = config.get("vision_config", {}) if isinstance(config, dict) else None
    if not isinstance(vision, dict):  # a JSON list, say: .get would fail with an AttributeError
        raise EvalInputError(f"cannot load model folder {folder}: {path} is not a model config (a JSON object with "
                             "a vision_config object)")
    return vision.get("image_size", default)


class EmbeddingModel(ImageTextEmbedder):
    """The package's embedder (PSD-CLIP or stock `CLIPModel`), loaded from a local folder with eval's errors."""

    def __init__(self, model, processor, **kwargs):
        try:  # An unknown device name, or one this machine lacks (torch raises either error)
            super().__init__(model, processor, **kwargs)
        except (RuntimeError, AssertionError) as error:
            raise EvalInputError(f"cannot use the device {kwargs.get('device')!r}: {first_line(error)}") from None

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, trust_remote_code: bool = False, **kwargs) -> "EmbeddingModel":
        """Load a saved model folder (PSD-CLIP or any CLIP-compatible checkpoint) and its processor, offline.

        PSD-CLIP folders load through this package's classes, stock CLIP folders through transformers' own; the
        Python files a folder carries run only with `trust_remote_code=True`, for folders you trust.
        """
        folder = require_model_folder(folder)
        note = pickle_weights_note(folder)
        if note:
            print(f"note: {note}", file=sys.stderr)
        try:
            return super().from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True,
                                           **kwargs)
        except EvalInputError:  # already one line (an unusable device)
            raise
        except UntrustedCodeError:
            raise EvalInputError(f"cannot load model folder {folder}: its model is defined by the folder's own Python, "
                                 "which runs only with --trust-remote-code: pass it for folders you trust") from None
        except pickle.UnpicklingError:
            raise EvalInputError(f"cannot load model folder {folder}: {refused_pickle(folder)}") from None
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            raise EvalInputError(f"cannot load model folder {folder}: {first_line(error)}") from error
