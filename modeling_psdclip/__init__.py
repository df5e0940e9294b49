"""PSD-CLIP: CLIP trained with progressive self-distillation, as a transformers model."""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from .configuration_psdclip import PRESETS, PSDCLIPConfig
from .modeling_psdclip import PSDCLIPModel, PSDCLIPOutput, PSDContrastiveLoss


# With the package imported, the Auto classes resolve "psdclip" without trust_remote_code.
AutoConfig.register("psdclip", PSDCLIPConfig)
AutoModel.register(PSDCLIPConfig, PSDCLIPModel)
AutoModelForZeroShotImageClassification.register(PSDCLIPConfig, PSDCLIPModel)

__all__ = ["PRESETS", "PSDCLIPConfig", "PSDCLIPModel", "PSDCLIPOutput", "PSDContrastiveLoss"]
