"""Saving a Hub-ready model folder (weights, remote code, processor, model card) and pushing it."""

import json
import re
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants, upload_folder
from tokenizers import Tokenizer

from .utils import cannot_create_in, first_line
from .configuration_psdclip import PRESETS
from .data.sources import hub_dataset_id
from .modeling_psdclip import PSDCLIPModel


# The repository's model_card.md, linked into the package so that an installed (non-editable) package has it.
CARD_TEMPLATE = Path(__file__).parent / "model_card.md"
LICENSE = "apache-2.0"  # the project's licence (pyproject.toml)
# train.py options that only locate files on the training machine: private there, and meaningless on the Hub.
MACHINE_OPTIONS = ("config", "output_dir", "run_dir", "resume")
VALIDATION_PREFIX = "val/"


# Every file a model folder of this package holds: what `save_model_folder` writes (sharded weights included, and
# the tokenizer files of a processor taken from a stock CLIP folder) and train.py's metrics.json. A folder with
# anything else in it holds something a user put there, and is never replaced.
MODEL_FOLDER_FILES = re.compile(
    r"README\.md|config\.json|configuration_psdclip\.py|modeling_psdclip\.py|metrics\.json|generation_config\.json"
    r"|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
    r"|(pre)?processor_config\.json|tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json"
    r"|vocab\.json|merges\.txt|chat_template\.(json|jinja)")


class HubError(RuntimeError):
    """Pushing a folder to the Hub failed; the message is one line for the user."""


def model_title(config, base_model: str | None = None) -> str:
    """What the card calls the model: what it was fine-tuned from, its preset, or its vision tower."""
    if base_model:
        return f"PSD-CLIP fine-tuned from {base_model}"
    for name, preset in PRESETS.items():
        if config.projection_dim == preset["projection_dim"] and all(
                getattr(getattr(config, tower), key) == value
                for tower in ("text_config", "vision_config") for key, value in preset[tower].items()):
            return f"PSD-CLIP {name}"
    vision = config.vision_config
    return (f"PSD-CLIP ViT/{vision.patch_size} at {vision.image_size} px, width {vision.hidden_size}, "
            f"depth {vision.num_hidden_layers}")


def validation_results(metrics: dict, dataset: str) -> list[EvalResult]:
    """The model-index entries of the final validation metrics (`val/...` keys) on `dataset`."""
    return [
        EvalResult(task_type="image-text-retrieval", task_name="Validation", dataset_type=dataset.partition(":")[0],
                   dataset_name=dataset, dataset_split="validation", metric_type=key.removeprefix(VALIDATION_PREFIX),
                   metric_name=key.removeprefix(VALIDATION_PREFIX), metric_value=float(value))
        for key, value in metrics.items() if key.startswith(VALIDATION_PREFIX)
    ]


class ModelFolderError(ValueError):
    """A model folder cannot be written there without destroying something else; one line for the user."""


def check_model_folder_target(folder) -> None:
    """Raise ModelFolderError unless `folder` can be written: creatable, empty, or a model folder of this package."""
    folder = Path(folder)
    if folder.is_symlink() or folder.exists():
        if folder.is_symlink() or not folder.is_dir():
            raise ModelFolderError(f"{folder} is a {'link' if folder.is_symlink() else 'file'}, not a model folder")
        entries = list(folder.iterdir())
        foreign = [entry.name for entry in entries
                   if not (entry.is_file() and MODEL_FOLDER_FILES.fullmatch(entry.name))]
        if entries and (foreign or not _is_psdclip_config(folder / "config.json")):
            why = f"it holds {sorted(foreign)[0]!r}" if foreign else "its config.json is not a PSD-CLIP config"
            raise ModelFolderError(f"{folder} exists and is not a PSD-CLIP model folder ({why}); it is never "
                                   "replaced: choose another folder or move it away")
    reason = cannot_create_in(folder.absolute().parent)  # the folder is written beside itself, then renamed
    if reason:
        raise ModelFolderError(f"cannot create {folder}: {reason}")


def pickle_weights_note(folder) -> str | None:
    """One line for a folder whose weights are only a pickle (`pytorch_model*.bin`), else None.

    transformers loads such weights with torch's restricted unpickler (`weights_only=True`), which rebuilds tensors
    and refuses anything else; the line says so, since a pickle is not the format a folder should be shared in.
    """
    folder = Path(folder)
    if any(folder.glob("*.safetensors")) or not any(folder.glob("pytorch_model*.bin")):
        return None
    return (f"{folder} holds its weights only as pytorch_model.bin, a pickle: loading them with torch's restricted "
            "unpickler (weights_only=True), which loads tensors and refuses anything else")


def _is_psdclip_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("model_type") == "psdclip"
    except (OSError, ValueError, AttributeError):
        return False


def render_model_card(config, model_path: str, *, data: dict | None = None, training: dict | None = None,
                      metrics: dict | None = None, model_name: str | None = None, license: str = LICENSE,
                      datasets: list[str] | None = None, base_model: str | None = None,
                      validation_data: str | None = None) -> ModelCard:
    """The card of a model with `config`: metadata for the Hub (model-index from the `val/...` metrics measured on
    `validation_data`), the template's tables, and usage naming `model_path`."""
    model_name = model_name or model_title(config, base_model)
    results = validation_results(metrics or {}, validation_data) if validation_data else []
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["psdclip", "clip", "self-distillation", "zero-shot-image-classification"],
        datasets=datasets or None,
        base_model=base_model,
        eval_results=results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        model_path=model_path,
        config=config,
        data=data,
        training=training,
        metrics=metrics,
    )


def _public(value):
    """A path on the training machine shortened to its last part (no user's home or layout); other values as
    they are."""
    return Path(value).name if isinstance(value, str) and Path(value).expanduser().exists() else value


def downloaded_model_id(folder) -> str | None:
    """The Hub repository a folder was downloaded from, when it is a snapshot in the Hugging Face cache
    (`.../models--ORG--NAME/snapshots/REVISION`, the folder `hf download ORG/NAME` prints); else None."""
    folder = Path(folder).expanduser().resolve()
    repository = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repository.startswith("models--"):
        return None
    return repository.removeprefix("models--").replace("--", "/")  # Hub ids cannot contain "--"


def training_card_fields(options, data_description: dict, metrics: dict) -> dict:
    """`save_model_folder`'s card fields for a train.py run with `options`, its data description and metrics.

    The output and run folders are left out and other local paths shortened; a Hub dataset as `--data` becomes
    the card's `datasets`, an `--init-from` folder downloaded from the Hub its `base_model`, the final validation
    metrics its model-index.
    """
    base_model = downloaded_model_id(options.init_from) if options.init_from else None
    training = {key: _public(value) for key, value in vars(options).items()
                if value is not None and key not in MACHINE_OPTIONS}
    if base_model:
        training["init_from"] = base_model  # rather than the snapshot's revision, the last part of its path
    return {
        "data": {key: _public(value) for key, value in data_description.items()},
        "training": training,
        "metrics": {key: value for key, value in metrics.items() if not isinstance(value, dict)},
        "datasets": [name for name in [hub_dataset_id(options.data)] if name],
        "base_model": base_model,
        # Without --val-data only the built-in data is validated (on its own clean split).
        "validation_data": _public(options.val_data or options.data),
    }


def _stock_tokenizer_files(folder: Path) -> None:
    """Make the saved tokenizer load the same, without warnings, in transformers and in `tokenizers`.

    A fast tokenizer keeps the padding and truncation of its last call in its backend, and saves them: every
    later call that pads without truncating then warns that `max_length` is ignored, and the `tokenizers` library
    pads everything. The processor sets both per call. transformers 5 saves its fast tokenizer class under its own
    name, `TokenizersBackend`; `PreTrainedTokenizerFast` names the same class in every version.
    """
    backend_path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not backend_path.is_file():
        return
    backend = Tokenizer.from_file(str(backend_path))
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(backend_path))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                               encoding="utf-8")


def save_model_folder(model: PSDCLIPModel, processor, folder, repo_id: str | None = None, **card_fields) -> Path:
    """Write model, processor and card to `folder`, replacing it only once the new folder is complete.

    An existing `folder` is replaced only when it is empty or a model folder this package wrote; anything else
    raises ModelFolderError before anything is written. The card's usage snippet names `repo_id` when the folder
    is meant for the Hub, else the folder's name (not its path on this machine). `card_fields` go to
    `render_model_card`: `data`, `training`, `metrics` (dicts shown as tables), `model_name`, `license`,
    `datasets`, `base_model`, `validation_data` (the data `val/...` metrics were measured on; with it they become
    the card's model-index).
    """
    folder = Path(folder)
    check_model_folder_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        _stock_tokenizer_files(staging)
        render_model_card(model.config, repo_id or folder.name, **card_fields).save(staging / "README.md")
        # mkdtemp makes the folder private to its owner, and files written through temporary files (the weights)
        # are too; a model folder is for every user who may load it.
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
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
