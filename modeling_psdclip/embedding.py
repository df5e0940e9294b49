"""Embedding images or texts alone with a saved model, for search, clustering or a FAISS index."""

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .utils import first_line
from .data.records import to_rgb


IMAGE_TYPES = "PIL images, file paths or HxWx3 uint8 numpy arrays"


def _rgb(image) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:  # closed once decoded: a folder of images must not exhaust file handles
            return to_rgb(opened)
    if isinstance(image, np.ndarray):  # what OpenCV, imageio and matplotlib read: converted rather than refused
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or 0 in image.shape[:2] or (
                image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise TypeError(f"cannot embed a numpy array of shape {image.shape} and dtype {image.dtype}: arrays must "
                            "be HxW, HxWx3 or HxWx4 uint8 with H, W > 0")
        return to_rgb(Image.fromarray(image))
    if not isinstance(image, Image.Image):  # Pillow would fail deep inside with an AttributeError
        raise TypeError(f"cannot embed a {type(image).__name__}: encode_images takes a list of {IMAGE_TYPES}")
    return to_rgb(image)


def _require_list(items, kind: str, one: tuple[type, ...]) -> None:
    """A bare str or image is a sequence (of characters, of rows) too: refused rather than embedded piece by piece."""
    if isinstance(items, one):
        raise TypeError(f"encode_{kind} takes a list of {kind}, not a single {type(items).__name__}: "
                        f"pass [{kind[:-1]}]")


def _missing_folder(name_or_path, offline: bool) -> str | None:
    """Why `name_or_path` cannot be loaded when it names no existing folder and is a path (a PathLike, absolute,
    ./, ~, or inside a folder that exists) or the Hub is not looked at (offline); None otherwise."""
    from huggingface_hub import constants

    text = os.path.expanduser(os.fspath(name_or_path))
    if os.path.exists(text):
        return None
    if (isinstance(name_or_path, os.PathLike) or os.path.isabs(text) or text.startswith(".")
            or os.path.isdir(os.path.dirname(text))):
        return f"no model folder at {name_or_path}"
    if offline or constants.HF_HUB_OFFLINE:
        return f"no model folder at {name_or_path} (offline, so the Hub is not looked up)"
    return None


class UntrustedCodeError(ValueError):
    """A model needs the Python code it ships with, and the caller did not pass `trust_remote_code=True`."""


class ImageTextEmbedder:
    """A CLIP-style transformers model (PSD-CLIP, or a stock `CLIPModel`) with its processor, embedding inputs in
    batches under `torch.inference_mode()` with a progress bar.

    Returns float32 CPU tensors of L2-normalised embeddings, one row per input in input order, so a dot product
    is the cosine similarity. `device` defaults to the accelerator when there is one; `dtype` (e.g.
    `torch.float16`) casts the model and its image inputs.
    """

    def __init__(self, model, processor, *, batch_size: int = 256, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, progress: bool = True, name: str = "model"):
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        # Checked here: 0 fails only at the first encode, and a negative size silently embeds nothing.
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device or accelerator or "cpu")
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.processor = processor
        self.batch_size = batch_size
        self.progress = progress
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path, *, batch_size: int = 256, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, progress: bool = True, name: str | None = None,
                        **load_kwargs) -> "ImageTextEmbedder":
        """Load a model folder or Hub repository and its processor; `load_kwargs` (e.g. `trust_remote_code`,
        `local_files_only`, `revision`) go to both `from_pretrained` calls.

        The Python files a folder or repository carries run only with `trust_remote_code=True`; without it, a model
        that needs them raises `UntrustedCodeError`. Raises ValueError, in one line, when transformers cannot load
        the model ("no model folder at ..." for a local path that does not exist), and when the model has no image
        and text features.
        """
        from transformers import AutoModel, AutoProcessor

        from . import register_auto_classes

        register_auto_classes()  # a PSD-CLIP folder loads with the installed code, not the folder's
        # Left unset, transformers asks on stdin whether to run the code; a library call must never wait on a prompt.
        load_kwargs.setdefault("trust_remote_code", False)
        try:
            model = AutoModel.from_pretrained(name_or_path, **load_kwargs)
            for method in ("get_image_features", "get_text_features"):
                if not hasattr(model, method):
                    raise ValueError(f"model in {name_or_path} is not an image-text model (no {method})")
            processor = AutoProcessor.from_pretrained(name_or_path, **load_kwargs)
        except (ValueError, OSError) as error:  # transformers raises OSError for a missing folder or repository
            if "trust_remote_code" in str(error) and not load_kwargs["trust_remote_code"]:
                raise UntrustedCodeError(f"the model in {name_or_path} is defined by its own Python code, which runs "
                                         "only with trust_remote_code=True: pass it for models you trust") from None
            # Rather than transformers' "Repo id must be in the form ...", which misleads about a path.
            missing = _missing_folder(name_or_path, offline=load_kwargs.get("local_files_only", False))
            if missing:
                raise ValueError(missing) from None
            raise ValueError(first_line(error)) from error
        return cls(model, processor, batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                   name=name or os.path.basename(os.path.normpath(str(name_or_path))))

    @property
    def context_length(self) -> int:
        # The model's position table, not the tokenizer's model_max_length, bounds what it can read.
        return self.model.config.text_config.max_position_embeddings

    @property
    def logit_multiplier(self) -> float:
        """The multiplier of cosine similarities in the model's logits (PSD-CLIP bounds it; CLIP does not)."""
        with torch.no_grad():
            if hasattr(self.model, "logit_multiplier"):
                return float(self.model.logit_multiplier())
            return float(self.model.logit_scale.exp())

    def encode_images(self, images: Sequence) -> torch.Tensor:
        """Embed images: PIL images, file paths, HxWx3 uint8 numpy arrays, or a `datasets` image column (decoded
        batch by batch). TypeError for a single image or path rather than a list of them."""
        _require_list(images, "images", (str, os.PathLike, Image.Image, np.ndarray))
        def inputs(batch):
            return self.processor(images=[_rgb(image) for image in batch], return_tensors="pt")
        return self._encode(images, "images", inputs, self.model.get_image_features)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts, each truncated to the model's context length. TypeError for a single str rather than a
        list of them."""
        _require_list(texts, "texts", (str,))
        def inputs(batch):
            return self.processor(text=list(batch), padding=True, truncation=True, max_length=self.context_length,
                                  return_tensors="pt")
        return self._encode(texts, "texts", inputs, self.model.get_text_features)

    def _encode(self, items: Sequence, kind: str, inputs, features) -> torch.Tensor:
        chunks = [torch.empty(0, self.model.config.projection_dim)]
        starts = range(0, len(items), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=f"{self.name}: {kind}", unit="batch", disable=not self.progress,
                              leave=False):
                batch = inputs(items[start:start + self.batch_size])
                batch = {key: value.to(self.device, dtype=self.model.dtype if value.is_floating_point() else None)
                         for key, value in batch.items()}
                chunks.append(features(**batch).pooler_output.float().cpu())
        return F.normalize(torch.cat(chunks), dim=-1)


__all__ = ["ImageTextEmbedder", "UntrustedCodeError"]
