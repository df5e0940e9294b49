"""Saving a Hub-ready model folder (weights, remote code, processor, model card) and pushing it."""

import shutil
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, constants, upload_folder

from .cli import first_line
from .modeling_psdclip import PSDCLIPModel


# The repository's model_card.md, linked into the package so that an installed (non-editable) package has it.
CARD_TEMPLATE = Path(__file__).parent / "model_card.md"


class HubError(RuntimeError):
    """Pushing a folder to the Hub failed; the message is one line for the user."""


def render_model_card(config, model_path: str, *, data: dict | None = None, training: dict | None = None,
                      metrics: dict | None = None, model_name: str | None = None) -> ModelCard:
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["psdclip", "clip", "self-distillation", "zero-shot-image-classification"],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name or Path(model_path).name,
        model_path=model_path,
        config=config,
        data=data,
        training=training,
        metrics=metrics,
    )


def save_model_folder(model: PSDCLIPModel, processor, folder, repo_id: str | None = None, **card_fields) -> Path:
    """Write model, processor and card to `folder`, replacing it only once the new folder is complete.

    The card's usage snippet names `repo_id` when the folder is meant for the Hub, else the folder.
    `card_fields` are `data`, `training`, `metrics` (dicts shown as tables) and `model_name`.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # mkdtemp makes the folder private to its owner; a model folder is for every user who may load it.
        staging.chmod(0o755)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        render_model_card(model.config, repo_id or str(folder), **card_fields).save(staging / "README.md")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        retired = folder.with_name(f".{folder.name}.retired")
        shutil.rmtree(retired, ignore_errors=True)
        folder.rename(retired)
        staging.rename(folder)
        shutil.rmtree(retired)
    else:
        staging.rename(folder)
    return folder


def push_folder_to_hub(folder, repo_id: str) -> str:
    """Upload a saved folder; any failure (offline, no token, no access) becomes a one-line HubError."""
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"could not push {folder} to the Hub repository {repo_id}: HF_HUB_OFFLINE is set")
    try:
        return str(upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model"))
    except Exception as error:  # Network, auth and repo errors all mean the same to the caller: not pushed.
        raise HubError(f"could not push {folder} to the Hub repository {repo_id}: {first_line(error)}") from error
