"""One interface for every model the tasks evaluate: images and texts in, L2-normalised embeddings out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol, Sequence

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from modeling_psdclip.cli import first_line
from modeling_psdclip.hub import pickle_weights_note
from modeling_psdclip.data.records import to_rgb

from .errors import EvalInputError


class ImageTextEncoder(Protocol):
    """What a task needs from a model. `EmbeddingModel` implements it; tests implement it with fakes."""

    name: str

    def encode_images(self, images: Sequence) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...

    @property
    def logit_multiplier(self) -> float: ...


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding;
    # older versions return the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def require_model_folder(folder: str | Path) -> Path:
    """The folder as a Path; EvalInputError unless it holds a saved model (a config.json)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EvalInputError(f"model folder {folder} not found or has no config.json")
    return folder


class EmbeddingModel:
    """A CLIP-style transformers model (PSD-CLIP or stock `CLIPModel`) with its processor.

    Inputs are encoded in batches under `torch.inference_mode()` with a progress bar; outputs are float32,
    L2-normalised, on the CPU, one row per input in input order.
    """

    def __init__(self, model, processor, *, name: str = "model", batch_size: int = 256,
                 device: str | torch.device | None = None, progress: bool = True):
        try:  # An unknown device name, or one this machine lacks (torch raises either error)
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as error:
            raise EvalInputError(f"cannot use the device {device!r}: {first_line(error)}") from None
        self.processor = processor
        self.name = name
        self.batch_size = batch_size
        self.progress = progress

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, trust_remote_code: bool = False, **kwargs) -> "EmbeddingModel":
        """Load a saved model folder (PSD-CLIP or any CLIP-compatible checkpoint) and its processor, offline.

        PSD-CLIP folders load through this package's classes, stock CLIP folders through transformers' own; the
        Python files a folder carries run only with `trust_remote_code=True`, for folders you trust.
        """
        from transformers import AutoModel, AutoProcessor

        import modeling_psdclip  # noqa: F401 (registers model_type "psdclip" with the Auto classes)

        folder = require_model_folder(folder)
        note = pickle_weights_note(folder)
        if note:
            print(f"note: {note}", file=sys.stderr)
        try:
            model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                      local_files_only=True)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            hint = "" if trust_remote_code or "trust_remote_code" not in str(error) else \
                " (the folder's own Python runs only with --trust-remote-code: pass it for folders you trust)"
            raise EvalInputError(f"cannot load model folder {folder}: {first_line(error)}{hint}") from error
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(model, method):
                raise EvalInputError(f"model in {folder} is not an image-text model (no {method})")
        return cls(model, processor, name=kwargs.pop("name", folder.name), **kwargs)

    @property
    def context_length(self) -> int:
        # The model's position table, not the tokenizer's model_max_length, bounds what it can read.
        return self.model.config.text_config.max_position_embeddings

    @property
    def logit_multiplier(self) -> float:
        """The multiplier of cosine similarities in the model's logits (PSD-CLIP clamps it; CLIP does not)."""
        with torch.no_grad():
            if hasattr(self.model, "logit_multiplier"):
                return float(self.model.logit_multiplier())
            return float(self.model.logit_scale.exp())

    def encode_images(self, images: Sequence) -> torch.Tensor:
        """Embed PIL images (a list, or a `datasets` image column, which decodes lazily per batch)."""
        return self._encode(images, "images", self.model.get_image_features)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._encode(list(texts), "texts", self.model.get_text_features)

    def _encode(self, items: Sequence, kind: str, features) -> torch.Tensor:
        chunks = []
        starts = range(0, len(items), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=f"{self.name}: {kind}", unit="batch", disable=not self.progress,
                              leave=False):
                batch = items[start:start + self.batch_size]
                if kind == "images":
                    inputs = self.processor(images=[to_rgb(image) for image in batch], return_tensors="pt")
                else:
                    inputs = self.processor(text=batch, padding=True, truncation=True,
                                            max_length=self.context_length, return_tensors="pt")
                inputs = {key: value.to(self.device) for key, value in inputs.items()}
                chunks.append(_pooled(features(**inputs)).float().cpu())
        if not chunks:
            raise EvalInputError(f"no {kind} to encode")
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
