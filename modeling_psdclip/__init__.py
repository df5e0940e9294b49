"""PSD-CLIP: CLIP trained with progressive self-distillation, as a transformers model.

The package's names load on first use, so that importing it (as every command does before parsing its options)
does not load torch and transformers. The first use of any of them registers model_type "psdclip" with
transformers' Auto classes (AutoConfig, AutoModel, AutoModelForZeroShotImageClassification), so that
`AutoModel.from_pretrained(folder)` resolves a PSD-CLIP folder without `trust_remote_code`; so does
`register_auto_classes()`.
"""

from .utils import lazy_names

_EXPORTS = {
    "PRESETS": "configuration_psdclip", "PSDCLIPConfig": "configuration_psdclip", "PSDCLIPModel": "modeling_psdclip",
    "PSDCLIPOutput": "modeling_psdclip", "PSDContrastiveLoss": "modeling_psdclip",
}
__all__ = sorted(_EXPORTS) + ["register_auto_classes"]
_registered = False


def register_auto_classes() -> None:
    """Register model_type "psdclip" with transformers' Auto classes; later calls do nothing."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

    from .configuration_psdclip import PSDCLIPConfig
    from .modeling_psdclip import PSDCLIPModel

    AutoConfig.register("psdclip", PSDCLIPConfig)
    AutoModel.register(PSDCLIPConfig, PSDCLIPModel)
    AutoModelForZeroShotImageClassification.register(PSDCLIPConfig, PSDCLIPModel)
    _registered = True


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, on_first_use=register_auto_classes)
