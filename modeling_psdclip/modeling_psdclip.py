"""PSD-CLIP: CLIP trained with progressive self-distillation.

The towers, projections and feature methods are transformers' CLIP; this file adds the objective. For a random
subset of image rows and of caption rows, the one-hot target of CLIP's contrastive loss is mixed with the model's
own (stop-gradient) alignment distribution from the same forward pass, with a weight that grows over training.

This file and `configuration_psdclip.py` are copied next to saved weights for `trust_remote_code`, so they import
only from transformers, torch and each other.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPOutput

from .configuration_psdclip import PSDCLIPConfig


@dataclass
class PSDLossOutput:
    """The objective of one step and its diagnostics, all 0-d tensors over this process's rows.

    `loss == loss_hard + loss_soft`: the one-hot and the teacher parts of the soft-target cross-entropy.
    """

    loss: torch.Tensor
    loss_hard: torch.Tensor
    loss_soft: torch.Tensor
    distill_alpha: torch.Tensor
    teacher_entropy: torch.Tensor
    paired_probability: torch.Tensor
    logit_scale: torch.Tensor


@dataclass
class PSDCLIPOutput(CLIPOutput):
    r"""
    CLIP's output plus the parts of the self-distillation loss and its diagnostics (set when `return_loss=True`).

    loss_hard (`torch.Tensor`): the part of the loss weighted by the one-hot targets.
    loss_soft (`torch.Tensor`): the part weighted by the teacher's distribution.
    distill_alpha (`torch.Tensor`): the teacher weight `a(t)` used this step.
    teacher_entropy (`torch.Tensor`): mean entropy of the teacher's rows, both directions.
    paired_probability (`torch.Tensor`): mean teacher probability of each row's own pair, both directions.
    logit_scale (`torch.Tensor`): the similarity scale s the logits were multiplied by (no gradient; always set).
    """

    loss_hard: torch.Tensor | None = None
    loss_soft: torch.Tensor | None = None
    distill_alpha: torch.Tensor | None = None
    teacher_entropy: torch.Tensor | None = None
    paired_probability: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None


def gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows, concatenated in rank order, and the offset of this process's rows among them.

    The gather keeps the autograd graph (its backward sums every process's gradient into the owner's rows), so each
    process can take the loss of its own rows against all columns. All processes must hold the same number of rows.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, 0
    gathered = torch.cat(dist_fn.all_gather(features), dim=0)
    return gathered, dist.get_rank() * features.shape[0]


class PSDContrastiveLoss(nn.Module):
    """Symmetric soft-target contrastive loss with progressive self-distillation (DESIGN.md §2).

    For row r with logits z (one image against all captions, or one caption against all images):
        target = (1 - w_r) * onehot(r) + w_r * softmax(stopgrad(z) / tau),   w_r = a(t) if r is drawn, else 0
        loss_r = cross_entropy(z, target)
    averaged over rows and over the two directions. With a = 0 or no drawn rows this is CLIP's InfoNCE.

    Training progress (step t of T) is state held here and set by `set_progress`; it fixes a(t) and, with the
    seed, the draw of distilled rows.
    """

    def __init__(self, config: PSDCLIPConfig):
        super().__init__()
        self.alpha_max = config.distill_alpha_max
        self.fraction = config.distill_fraction
        self.schedule = config.distill_schedule
        self.temperature = config.distill_temperature
        self.seed = config.distill_seed
        self.step = 0
        self.total_steps = 0

    def set_progress(self, step: int, total_steps: int) -> None:
        self.step = step
        self.total_steps = total_steps

    @property
    def alpha(self) -> float:
        if self.schedule == "constant":
            return self.alpha_max
        if self.total_steps <= 0:
            return 0.0
        return self.alpha_max * min(1.0, self.step / self.total_steps)

    def draw_distilled_rows(self, num_rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks over the global image rows and caption rows, drawn independently, the same on every process."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) % 2**63)
        num_drawn = round(self.fraction * num_rows)
        masks = []
        for _ in range(2):
            mask = torch.zeros(num_rows, dtype=torch.bool)
            mask[torch.randperm(num_rows, generator=generator)[:num_drawn]] = True
            masks.append(mask.to(device))
        return masks[0], masks[1]

    def one_direction(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor):
        """Hard and soft parts of the loss and the teacher diagnostics for rows of logits against all columns."""
        teacher = torch.softmax(logits.detach() / self.temperature, dim=-1)
        hard = F.cross_entropy(logits, labels, reduction="none")
        soft = F.cross_entropy(logits, teacher, reduction="none")
        entropy = -torch.special.xlogy(teacher, teacher).sum(-1)
        paired = teacher.gather(1, labels[:, None]).squeeze(1)
        return ((1 - weights) * hard).mean(), (weights * soft).mean(), entropy.mean(), paired.mean()

    @torch.compiler.disable  # Python-side step state and the seeded draw would recompile or break a graph.
    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
        """Loss of this process's rows; `*_embeds` are L2-normalised, `logit_scale` is the multiplier s."""
        all_image_embeds, offset = gather_with_grad(image_embeds)
        all_text_embeds, _ = gather_with_grad(text_embeds)
        num_local, num_global = image_embeds.shape[0], all_image_embeds.shape[0]
        labels = torch.arange(offset, offset + num_local, device=image_embeds.device)

        alpha = self.alpha
        image_drawn, text_drawn = self.draw_distilled_rows(num_global, image_embeds.device)
        image_weights = alpha * image_drawn[offset : offset + num_local].float()
        text_weights = alpha * text_drawn[offset : offset + num_local].float()

        # Softmax over the whole global batch in fp32, even under mixed precision.
        with torch.autocast(device_type=image_embeds.device.type, enabled=False):
            scale = logit_scale.float()
            logits_image_to_text = scale * image_embeds.float() @ all_text_embeds.float().t()
            logits_text_to_image = scale * text_embeds.float() @ all_image_embeds.float().t()
            image_side = self.one_direction(logits_image_to_text, labels, image_weights)
            text_side = self.one_direction(logits_text_to_image, labels, text_weights)
        loss_hard, loss_soft, entropy, paired = ((a + b) / 2 for a, b in zip(image_side, text_side))
        return PSDLossOutput(
            loss=loss_hard + loss_soft,
            loss_hard=loss_hard,
            loss_soft=loss_soft,
            distill_alpha=torch.tensor(alpha, device=image_embeds.device),
            teacher_entropy=entropy,
            paired_probability=paired,
            # Reported from here so a training loop never reads a parameter that FSDP may hold sharded.
            logit_scale=logit_scale.detach(),
        )


class PSDCLIPModel(CLIPModel):
    """transformers' `CLIPModel` (same weights and names, so CLIP checkpoints load) trained with the PSD loss.

    Attention (`attn_implementation`: SDPA by default, flash-attention where installed) and gradient checkpointing
    are transformers' switches for the CLIP towers.
    """

    config_class = PSDCLIPConfig

    def __init__(self, config: PSDCLIPConfig):
        super().__init__(config)
        self.psd_loss = PSDContrastiveLoss(config)

    def set_distill_progress(self, step: int, total_steps: int) -> None:
        """Tell the loss where training is: optimizer step `step` of `total_steps` (sets alpha and the draw)."""
        self.psd_loss.set_progress(step, total_steps)

    def logit_multiplier(self) -> torch.Tensor:
        """The similarity scale s = exp(logit_scale), bounded by `config.logit_scale_max`."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> PSDCLIPOutput:
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)

        logit_scale = self.logit_multiplier()
        logits_per_image = logit_scale * image_embeds @ text_embeds.t()

        if return_loss:
            loss_parts = vars(self.psd_loss(image_embeds, text_embeds, logit_scale))
        else:
            loss_parts = {"logit_scale": logit_scale.detach()}
        return PSDCLIPOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            **loss_parts,
        )

    @classmethod
    def from_pretrained(cls, *args, output_loading_info: bool = False, **kwargs):
        # transformers fills weights missing from a checkpoint with random values and only logs it; a model
        # that silently lost part of its weights must not load. Mismatched shapes already raise upstream.
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if loading_info["missing_keys"]:
            missing = sorted(loading_info["missing_keys"])
            raise ValueError(f"checkpoint is missing {len(missing)} weights of {cls.__name__}, e.g. {missing[0]}")
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` records one Auto class; the zero-shot pipeline looks up this second one.
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForZeroShotImageClassification": "modeling_psdclip.PSDCLIPModel",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


PSDCLIPConfig.register_for_auto_class()
PSDCLIPModel.register_for_auto_class("AutoModel")

__all__ = ["PSDCLIPModel", "PSDCLIPOutput", "PSDContrastiveLoss", "PSDLossOutput", "gather_with_grad"]
