"""A model folder of this package: what one holds, whether one can be written somewhere without destroying anything,
writing one (weights, remote code, processor, card) so that it is replaced only once complete, and pushing it.

Imported by the option checks of every command, so it loads nothing heavy until a folder is written or pushed.
"""

import json
import re
import shutil
import tempfile
from pathlib import Path

from .utils import cannot_create_in, first_line


# Every file a model folder of this package holds: what `save_model_folder` writes (sharded weights included, and
# the tokenizer files of a processor taken from a stock CLIP folder) and train.py's metrics.json. A folder with
# anything else in it holds something a user put there, and is never replaced.
MODEL_FOLDER_FILES = re.compile(
    r"README\.md|config\.json|configuration_psdclip\.py|modeling_psdclip\.py|metrics\.json|generation_config\.json"
    r"|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
    r"|(pre)?processor_config\.json|tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json"
    r"|vocab\.json|merges\.txt|chat_template\.(json|jinja)")

PROCESSOR_CONFIGS = ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
# What a folder's processor is loaded from: a folder with none of them holds bare weights.
PROCESSOR_FILES = (*PROCESSOR_CONFIGS, "tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json")


class HubError(RuntimeError):
    """Pushing a folder to the Hub failed; the message is one line for the user."""


class ModelFolderError(ValueError):
    """A model folder cannot be written there without destroying something else; one line for the user."""


def model_type_of(folder) -> str | None:
    """The `model_type` in `folder`'s config.json (None when it names none); ModelFolderError, in one line, when
    there is no config.json or it is not a JSON object."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{folder} is not a model folder: it has no config.json") from None
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
        raise ModelFolderError(f"{folder} is not a model folder: cannot read its config.json "
                               f"({first_line(error)})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{folder} is not a model folder: its config.json holds a JSON "
                               f"{type(config).__name__}, not an object")
    return config.get("model_type")


def check_model_folder_target(folder) -> None:
    """Raise ModelFolderError unless `folder` can be written: creatable, empty, or a model folder of this package,
    and not the current folder or one above it."""
    folder = Path(folder)
    resolved, here = folder.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        # It is replaced by a rename, which a folder in use cannot undergo (EBUSY, after the new one was written).
        raise ModelFolderError(f"{folder} is the current folder or one above it; the model folder is replaced as a "
                               "whole, so it must be a folder of its own")
    if folder.is_symlink() or folder.exists():
        if folder.is_symlink() or not folder.is_dir():
            raise ModelFolderError(f"{folder} is a {'link' if folder.is_symlink() else 'file'}, not a model folder")
        entries = list(folder.iterdir())
        foreign = [entry.name for entry in entries
                   if not (entry.is_file() and MODEL_FOLDER_FILES.fullmatch(entry.name))]
        if entries and (foreign or not _written_by_this_package(folder)):
            why = f"it holds {sorted(foreign)[0]!r}" if foreign else \
                "its config.json is neither a PSD-CLIP config nor a CLIP one with a PSD-CLIP card"
            raise ModelFolderError(f"{folder} exists and is not a PSD-CLIP model folder ({why}); it is never "
                                   "replaced: choose another folder or move it away")
    reason = cannot_create_in(folder.absolute().parent)  # the folder is written beside itself, then renamed
    if reason:
        raise ModelFolderError(f"cannot create {folder}: {reason}")


def invalid_repo_id(repo_id: str) -> str | None:
    """Why `repo_id` cannot name a Hub repository, in one line; None when it can. Checked before any work: the
    push comes last, and a card names the id."""
    # Imported here: huggingface_hub.utils loads its HTTP client, which `--help` and most runs never use.
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return first_line(error)
    return None


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


def refused_pickle(folder) -> str:
    """One line for a folder whose pickled weights torch's restricted unpickler refused (they hold more than
    tensors), naming the way out."""
    return (f"{folder} holds its weights as a pickle (pytorch_model.bin) of more than tensors, which torch's "
            "restricted unpickler refuses to load; if you trust where it came from, convert it to model.safetensors "
            "(torch.load(..., weights_only=False), then safetensors.torch.save_file)")


def _written_by_this_package(folder: Path) -> bool:
    """A PSD-CLIP folder, or a clip export: a CLIP config (which names no package) beside a card tagged psdclip."""
    try:
        model_type = model_type_of(folder)
        if model_type == "clip" and (folder / "README.md").is_file():
            from huggingface_hub import ModelCard

            from .card import PACKAGE_TAG

            return PACKAGE_TAG in (ModelCard.load(folder / "README.md").data.tags or [])
        return model_type == "psdclip"
    except (OSError, ValueError):  # ModelFolderError is a ValueError
        return False


def _stock_processor_files(folder: Path) -> None:
    """Make the saved processor load the same, without warnings or foreign code, in transformers and `tokenizers`.

    A fast tokenizer keeps the padding and truncation of its last call in its backend, and saves them: every
    later call that pads without truncating then warns that `max_length` is ignored, and the `tokenizers` library
    pads everything. The processor sets both per call. transformers 5 saves its fast tokenizer class under its own
    name, `TokenizersBackend`; `PreTrainedTokenizerFast` names the same class in every version. It also saves how a
    tokenizer it loaded was loaded (`is_local`, `local_files_only`: from a folder, offline), which says nothing
    about the saved folder, least of all on the Hub. The processor's classes are transformers' own, so an
    `auto_map` came with a processor loaded from another folder and names code this one does not ship.
    """
    from tokenizers import Tokenizer

    backend_path = folder / "tokenizer.json"
    if backend_path.is_file():
        backend = Tokenizer.from_file(str(backend_path))
        backend.no_padding()
        backend.no_truncation()
        backend.save(str(backend_path))
    for config_path in (folder / name for name in PROCESSOR_CONFIGS):
        if not config_path.is_file():
            continue
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        config = {key: value for key, value in saved.items() if key not in ("is_local", "local_files_only", "auto_map")}
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if config != saved:
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                   encoding="utf-8")


def save_model_folder(model, processor, folder, repo_id: str | None = None, card: "ModelCard | None" = None,
                      **card_fields) -> Path:
    """Write model, processor and card to `folder`, replacing it only once the new folder is complete.

    An existing `folder` is replaced only when it is empty or a model folder this package wrote; anything else
    raises ModelFolderError before anything is written. The card's usage snippet names `repo_id` when the folder
    is meant for the Hub, else the folder's name (not its path on this machine). `card_fields` go to
    `render_model_card`: `data`, `training`, `metrics` (dicts shown as tables), `model_name`, `license`,
    `datasets`, `base_model`, `validation_data` (the data `val/...` metrics were measured on; with it they become
    the card's model-index). A `card` given is written as it is instead; `model` may then be any transformers model
    (a clip export's `CLIPModel`).
    """
    from .card import render_model_card

    from safetensors import SafetensorError

    folder = Path(folder)
    check_model_folder_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        _stock_processor_files(staging)
        (card or render_model_card(model.config, repo_id or folder.name, **card_fields)).save(staging / "README.md")
        # mkdtemp makes the folder private to its owner, and files written through temporary files (the weights)
        # are too; a model folder is for every user who may load it.
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        # A full disk, a quota, a lost mount (safetensors words them as SafetensorError): nothing of the new folder
        # is left, and an old one is as it was.
        if isinstance(error, (OSError, SafetensorError)):
            reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
            raise ModelFolderError(f"cannot write the model folder {folder}: {reason}") from error
        raise
    if folder.exists():
        # The old folder moves aside under a name this save has just created (a user's folder is never one), so
        # the only thing removed is what was the model folder being replaced.
        retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.retired.", dir=folder.parent))
        folder.rename(retired)  # replaces the empty folder mkdtemp made
        staging.rename(folder)
        shutil.rmtree(retired)
    else:
        staging.rename(folder)
    return folder


def push_folder_to_hub(folder, repo_id: str) -> str:
    """Upload a saved folder; any failure (offline, no token, no access) becomes a one-line HubError."""
    from huggingface_hub import constants, upload_folder

    if constants.HF_HUB_OFFLINE:
        raise HubError(f"could not push {folder} to the Hub repository {repo_id}: HF_HUB_OFFLINE is set")
    try:
        return str(upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model"))
    except Exception as error:  # Network, auth and repo errors all mean the same to the caller: not pushed.
        raise HubError(f"could not push {folder} to the Hub repository {repo_id}: {first_line(error)}") from error


__all__ = ["MODEL_FOLDER_FILES", "PROCESSOR_FILES", "HubError", "ModelFolderError", "check_model_folder_target",
           "invalid_repo_id", "model_type_of", "pickle_weights_note", "push_folder_to_hub", "refused_pickle",
           "save_model_folder"]
