"""Configuration of PSD-CLIP: CLIP's towers plus the progressive self-distillation settings."""

import math

import transformers

# This file is also run as remote code by whatever transformers a Hub user has; under 4.x the `@strict` config
# below fails with an error that does not name the cause.
if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(f"PSD-CLIP needs transformers>=5, found {transformers.__version__}: "
                      "pip install --upgrade 'transformers>=5'")

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import CLIPConfig  # noqa: E402


DISTILL_SCHEDULES = ("linear", "constant")
DISTILL_TEACHERS = ("previous_epoch", "ema", "start", "uniform")
DISTILL_TARGETS = ("mix", "mix_by_doubt", "reweight")


def towers(text_width: int, text_heads: int, vision_width: int, vision_heads: int, layers: int,
           image_size: int, patch_size: int, context_length: int, projection_dim: int) -> dict:
    """A preset's tower sizes; MLPs are 4x wide, as in CLIP."""
    def tower(width, heads):
        return {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
                "num_attention_heads": heads}

    return {
        "projection_dim": projection_dim,
        "text_config": {**tower(text_width, text_heads), "max_position_embeddings": context_length},
        "vision_config": {**tower(vision_width, vision_heads), "image_size": image_size, "patch_size": patch_size},
    }


# "tiny" is sized for the default CPU run (48 px images, 24-token context: about 0.4 s a step at batch 128 on 2
# cores), and starts its similarity scale at 30 rather than CLIP's 14.3: the scale barely moves in a short run,
# and 30 measured better on the synthetic scenes. "small" is a larger CPU model on 64 px images; "vit-b-32" and
# "vit-b-16" are the OpenAI CLIP dimensions.
PRESETS = {
    "tiny": {**towers(128, 4, 128, 4, layers=4, image_size=48, patch_size=8, context_length=24, projection_dim=128),
             "logit_scale_init_value": math.log(30.0)},
    "small": towers(320, 5, 320, 5, layers=6, image_size=64, patch_size=8, context_length=32, projection_dim=320),
    "vit-b-32": towers(512, 8, 768, 12, layers=12, image_size=224, patch_size=32, context_length=77,
                       projection_dim=512),
    "vit-b-16": towers(512, 8, 768, 12, layers=12, image_size=224, patch_size=16, context_length=77,
                       projection_dim=512),
}


@strict
class PSDCLIPConfig(CLIPConfig):
    r"""
    CLIP's configuration (`text_config`, `vision_config`, `projection_dim`, `logit_scale_init_value`) extended with
    the progressive self-distillation objective. Because it extends `CLIPConfig`, a stock CLIP checkpoint's
    `config.json` loads into it unchanged, with the distillation settings at their defaults.

    distill_alpha_max (`float`, defaults to 0.5):
        Final weight of the teacher's prediction in the soft targets, in [0, 1]. 0 gives plain CLIP.
    distill_fraction (`float`, defaults to 0.5):
        Fraction of the image rows and, independently, of the caption rows that get soft targets each step.
    distill_schedule (`str`, defaults to `"linear"`):
        `"linear"` ramps alpha from 0 to `distill_alpha_max` over training; `"constant"` holds it there.
    distill_temperature (`float`, defaults to 1.0):
        Temperature of the teacher's softmax over its logits.
    distill_teacher (`str`, defaults to `"ema"`):
        Where the teacher comes from during training: `"previous_epoch"` (the embeddings the model produced for
        each pair in the previous epoch, stored as it trains: no extra compute) or `"ema"` (a momentum copy of the
        model's weights run on the same batch: one extra forward), `"start"` (the model as training started, never
        moved: distilling from it only keeps the start, the control of a method that stays near it) or `"uniform"`
        (no teacher: a uniform target, so the soft part is label smoothing with the same alpha schedule and drawn
        rows; the control that PSD's gains are measured against). Only training reads it; inference never builds a
        teacher.
    distill_ema_decay (`float`, defaults to 0.99):
        Decay of the `"ema"` teacher's moving average, updated once per optimizer step, in [0, 1).
    distill_target (`str`, defaults to `"mix"`):
        What the teacher does to a drawn row: `"mix"` mixes its distribution into the target by alpha;
        `"mix_by_doubt"` the same with alpha scaled by the teacher's doubt in the row's own pair, `1 - q` (`q` the
        teacher's probability of the pair: a pair it finds likely keeps its one-hot target, one it doubts follows
        the teacher); `"reweight"` keeps the one-hot target and weights the row's loss by `1 - alpha + alpha * q`
        (the per-pair weights of noisy-correspondence learning, NCR and NPC).
    distill_seed (`int`, defaults to 0):
        Seed of the per-step draw of distilled rows; with the step number it fixes the draw, so a resumed run
        repeats it.
    logit_scale_max (`float`, defaults to 100.0):
        Upper bound of the similarity scale `exp(logit_scale)`.
    """

    model_type = "psdclip"

    distill_alpha_max: float | int = 0.5
    distill_fraction: float | int = 0.5
    distill_schedule: str = "linear"
    distill_temperature: float | int = 1.0
    distill_teacher: str = "ema"
    distill_ema_decay: float | int = 0.99
    distill_target: str = "mix"
    distill_seed: int = 0
    logit_scale_max: float | int = 100.0

    def __post_init__(self, **kwargs):
        # Checked here rather than in a `@strict` validator so that a bad value raises a plain ValueError.
        self.validate_distillation()
        super().__post_init__(**kwargs)
        # CLIPModel builds its projections from the top-level size, but transformers' tower classes
        # (CLIPVisionModelWithProjection, CLIPTextModelWithProjection) read the sub-configs' own, which default to
        # 512: one size in all three places lets every class load the saved weights.
        self.text_config.projection_dim = self.vision_config.projection_dim = self.projection_dim

    def validate_distillation(self):
        """Raise ValueError naming the first distillation setting that is out of range."""
        for name in ("distill_alpha_max", "distill_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.distill_schedule not in DISTILL_SCHEDULES:
            raise ValueError(f"distill_schedule must be one of {DISTILL_SCHEDULES}, got {self.distill_schedule!r}")
        if self.distill_target not in DISTILL_TARGETS:
            raise ValueError(f"distill_target must be one of {DISTILL_TARGETS}, got {self.distill_target!r}")
        if self.distill_teacher not in DISTILL_TEACHERS:
            raise ValueError(f"distill_teacher must be one of {DISTILL_TEACHERS}, got {self.distill_teacher!r}")
        if not 0.0 <= self.distill_ema_decay < 1.0:
            raise ValueError(f"distill_ema_decay must be in [0, 1), got {self.distill_ema_decay}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if not self.logit_scale_max > 0:
            raise ValueError(f"logit_scale_max must be positive, got {self.logit_scale_max}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PSDCLIPConfig":
        """A named architecture (`"tiny"`, `"small"`, `"vit-b-32"`, `"vit-b-16"`); `overrides` set any field."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        preset = PRESETS[name]
        text_config = {**preset["text_config"], **overrides.pop("text_config", {})}
        vision_config = {**preset["vision_config"], **overrides.pop("vision_config", {})}
        for name in ("projection_dim", "logit_scale_init_value"):
            if name in preset:
                overrides.setdefault(name, preset[name])
        return cls(text_config=text_config, vision_config=vision_config, **overrides)


__all__ = ["DISTILL_SCHEDULES", "DISTILL_TARGETS", "DISTILL_TEACHERS", "PRESETS", "PSDCLIPConfig"]
