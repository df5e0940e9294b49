"""A model folder anyone can load without code: transformers' own `CLIPModel` config, processor and tokenizer files,
the PSD-CLIP weights, and the model card with the self-distillation details.

    python -m modeling_psdclip.export outputs/psdclip-tiny outputs/psdclip-tiny-clip   # a folder already saved
    python train.py --export-format clip                                                # at the end of training

A PSD-CLIP model runs as CLIP does (the objective changes only training), so the export loses nothing at inference.
CLIP's config cannot hold the self-distillation settings: the card holds them, in its `psdclip` metadata block and
its text. `PSDCLIPModel.from_pretrained` loads the export back, for further PSD training.
"""

import pickle
import shutil
from pathlib import Path

from huggingface_hub import ModelCard
from safetensors import SafetensorError
from transformers import AutoProcessor, CLIPConfig, CLIPModel

from . import register_auto_classes
from .card import PACKAGE_TAG, render_model_card, training_metadata
from .configuration_psdclip import PSDCLIPConfig
from .model_folder import check_model_folder_target, invalid_repo_id, model_type_of, save_model_folder
from .modeling_psdclip import PSDCLIPModel
from .utils import OneLineErrorParser, fail, first_line

USAGE_HEADING = "\n## Usage\n"
PROG = "python -m modeling_psdclip.export"


class ExportError(ValueError):
    """A folder that cannot be exported; the message is one line for the user."""


def clip_config(config: PSDCLIPConfig) -> CLIPConfig:
    """transformers' CLIPConfig of the same towers, projection and initial scale."""
    return CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                      projection_dim=config.projection_dim, logit_scale_init_value=config.logit_scale_init_value)


def clip_model(model: PSDCLIPModel) -> CLIPModel:
    """A `CLIPModel` holding `model`'s weights, in its dtype.

    Its logits equal the PSD-CLIP model's because training keeps the `logit_scale` parameter within PSD-CLIP's bound
    (`clamp_logit_scale_`), which `CLIPModel` does not apply.
    """
    clip = CLIPModel(clip_config(model.config))
    clip.load_state_dict(model.state_dict(), assign=True)  # assign: no second copy of the weights, and their dtype
    return clip


def clip_card(card: ModelCard, config: PSDCLIPConfig, model_path: str) -> ModelCard:
    """A copy of a PSD-CLIP folder's `card` for its clip export: its metadata and text (data, training, results,
    evaluation results), with the clip usage naming `model_path` and the training details in the metadata."""
    rendered = render_model_card(config, model_path, model_format="clip").text
    usage = rendered[rendered.index(USAGE_HEADING):]
    exported = ModelCard(str(card))
    text = exported.text
    start = text.find(USAGE_HEADING)
    if start == -1:
        exported.text = text.rstrip("\n") + "\n" + usage
    else:
        rest = text[start + len(USAGE_HEADING):]
        # The usage section runs to the next section or marked block (python -m eval's results), or to the end.
        ends = [index for index in (rest.find("\n## "), rest.find("\n<!-- ")) if index != -1]
        exported.text = text[:start] + usage + rest[min(ends, default=len(rest)):]
    if getattr(exported.data, PACKAGE_TAG, None) is None:  # a card written before the block existed
        setattr(exported.data, PACKAGE_TAG, training_metadata(config))
    return exported


def save_clip_folder(model: PSDCLIPModel, processor, folder, repo_id: str | None = None,
                     card: ModelCard | None = None, **card_fields) -> Path:
    """`model_folder.save_model_folder` in the clip format: `model` as a `CLIPModel`, its processor, and a card.

    The card is `card` (a PSD-CLIP folder's) made into the export's by `clip_card`, or else rendered from
    `card_fields` as `save_model_folder` renders it; its usage names `repo_id`, else the folder's name.
    """
    model_path = repo_id or Path(folder).name
    card = clip_card(card, model.config, model_path) if card is not None else \
        render_model_card(model.config, model_path, model_format="clip", **card_fields)
    return save_model_folder(clip_model(model), processor, folder, card=card)


def export_clip_folder(src, dst, repo_id: str | None = None) -> Path:
    """Export the PSD-CLIP model folder `src` (train.py's `--output-dir`) to `dst` in the clip format.

    `dst` gets the same weights, the processor, `metrics.json` when `src` has one, and `src`'s card made into the
    export's (`clip_card`, its usage naming `repo_id` or `dst`'s name). Raises ExportError when `src` is not a
    PSD-CLIP folder with a processor and weights that load, is `dst`, holds it or lies in it, or `repo_id` is not a
    Hub repository id; ModelFolderError when `src` has no config.json (or one that is not a JSON object), when `dst`
    is the current folder or one above it or holds anything else than a model folder of this package, and when it
    cannot be written (a full disk).
    """
    src, dst = Path(src), Path(dst)
    model_type = model_type_of(src)
    if model_type != "psdclip":
        loads = " (a CLIP folder loads without code already)" if model_type == "clip" else ""
        raise ExportError(f"{src} holds a {model_type!r} model, not a PSD-CLIP one{loads}")
    if dst.resolve() == src.resolve():
        raise ExportError(f"{dst} is the folder being exported; the export is written to a folder of its own")
    # A folder inside the model folder would make it hold something else than a model (and a later save refuse it).
    for inner, outer in ((dst, src), (src, dst)):
        if outer.resolve() in inner.resolve().parents:
            raise ExportError(f"{inner} is inside {outer}; the export and the folder being exported must be separate "
                              "folders, neither inside the other")
    problem = repo_id is not None and invalid_repo_id(repo_id)
    if problem:
        raise ExportError(f"repository id {repo_id!r}: {problem}")
    check_model_folder_target(dst)  # before the model loads, as train.py checks --output-dir before training
    register_auto_classes()  # the folder's config names "psdclip": load it with this package's code, not the folder's
    try:
        processor = AutoProcessor.from_pretrained(src)
    except (OSError, ValueError) as error:
        raise ExportError(f"{src} has no processor a folder can be loaded with: {first_line(error)}") from None
    try:
        model = PSDCLIPModel.from_pretrained(src)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as error:  # weights missing, truncated
        raise ExportError(f"cannot load the model in {src}: {first_line(error)}") from None
    card_path = src / "README.md"
    folder = save_clip_folder(model, processor, dst, repo_id,
                              card=ModelCard.load(card_path) if card_path.is_file() else None)
    if (src / "metrics.json").is_file():
        shutil.copyfile(src / "metrics.json", folder / "metrics.json")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog=PROG, description="Export a PSD-CLIP model folder as transformers' CLIPModel: "
                                "it loads with the Auto classes and the pipeline without trust_remote_code.")
    parser.add_argument("src", help="a PSD-CLIP model folder (train.py's --output-dir)")
    parser.add_argument("dst", help="the folder to write; replaced only when it is empty or a model folder this "
                                    "package wrote")
    parser.add_argument("--repo-id", help="the Hub repository the card's usage names (default: DST's name)")
    args = parser.parse_args(argv)
    try:
        folder = export_clip_folder(args.src, args.dst, args.repo_id)
    except (OSError, ValueError) as error:  # ExportError and ModelFolderError are ValueErrors
        fail(PROG, first_line(error))
    print(f"exported {args.src} to {folder}")


if __name__ == "__main__":
    main()
