"""Deprecated alias, kept for one release: what hub.py held now lives by job in `modeling_psdclip.model_folder`
(folder safety, writing, pushing), `modeling_psdclip.card` (the model card) and
`modeling_psdclip.training.card_fields` (what a card says of a training run)."""

from .card import CARD_TEMPLATE, LICENSE, model_title, render_model_card, validation_results  # noqa: F401
from .model_folder import (  # noqa: F401
    MODEL_FOLDER_FILES, HubError, ModelFolderError, check_model_folder_target, pickle_weights_note, push_folder_to_hub,
    save_model_folder,
)
from .training.card_fields import MACHINE_OPTIONS, downloaded_model_id, training_card_fields  # noqa: F401
