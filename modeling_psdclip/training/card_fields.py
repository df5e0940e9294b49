"""What a model card says of a training run: its options (less what only locates files on the training machine),
its data, its metrics, and where a Hub dataset or base model came from."""

from pathlib import Path

from ..data.sources import hub_dataset_id

# train.py options that only locate files on the training machine: private there, and meaningless on the Hub.
MACHINE_OPTIONS = ("config", "output_dir", "run_dir", "resume")


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
