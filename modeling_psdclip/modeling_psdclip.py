"""PSD-CLIP: CLIP trained with progressive self-distillation.

The towers, projections and feature methods are transformers' CLIP; this file adds the objective. For a random
subset of image rows and of caption rows, the one-hot target of CLIP's contrastive loss is mixed with a teacher's
alignment distribution over the same global batch, with a weight that grows over training. The teacher is an
earlier self of the model (its previous epoch, or a momentum copy), given to `forward` as embeddings. It must be
a different function of the data than the student at this step: d CE(z, y) / dz = softmax(z) - y, so with the
student's own logits as teacher (at temperature 1) the soft part of the target is softmax(z) itself and has zero
gradient, leaving CLIP's gradient scaled by (1 - alpha).

This file and `configuration_psdclip.py` are copied next to saved weights for `trust_remote_code`, so they import
only from transformers, torch, numpy and each other.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_psdclip import PSDCLIPConfig


@dataclass
class PSDLossOutput:
    r"""The objective of one step and its diagnostics, all 0-d tensors over this process's rows.

    loss (`torch.Tensor`): `loss_hard + loss_soft`, the soft-target cross-entropy.
    loss_hard (`torch.Tensor`): the part of the loss weighted by the one-hot targets.
    loss_soft (`torch.Tensor`): the part weighted by the teacher's distribution.
    distill_alpha (`torch.Tensor`): the teacher weight `a(t)` used this step.
    teacher_share (`torch.Tensor`): share of rows that had a teacher, both directions.
    teacher_entropy (`torch.Tensor`): mean entropy of the teacher's rows, both directions.
    paired_probability (`torch.Tensor`): mean teacher probability of each row's own pair, both directions.
    teacher_agreement (`torch.Tensor`): share of rows where student and teacher rank the same item first.
    logit_multiplier (`torch.Tensor`): the scale s = exp(logit_scale) the logits were multiplied by (no gradient).

    The teacher diagnostics are means over the rows that have a teacher (NaN when none has).
    """

    loss: torch.Tensor | None = None
    loss_hard: torch.Tensor | None = None
    loss_soft: torch.Tensor | None = None
    distill_alpha: torch.Tensor | None = None
    teacher_share: torch.Tensor | None = None
    teacher_entropy: torch.Tensor | None = None
    paired_probability: torch.Tensor | None = None
    teacher_agreement: torch.Tensor | None = None
    logit_multiplier: torch.Tensor | None = None


@dataclass
class PSDCLIPOutput(PSDLossOutput, CLIPOutput):
    r"""
    CLIP's output plus `PSDLossOutput`'s parts of the self-distillation loss and its diagnostics (set when
    `return_loss=True`; `logit_multiplier` is always set). The fields are CLIPOutput's, then the loss parts.
    """


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows, concatenated in rank order, and the offset of this process's rows among them.

    The gather keeps the autograd graph (its backward sums every process's gradient into the owner's rows), so each
    process can take the loss of its own rows against all columns. All processes must hold the same number of rows.
    """
    if not is_distributed():
        return features, 0
    gathered = torch.cat(dist_fn.all_gather(features), dim=0)
    return gathered, dist.get_rank() * features.shape[0]


def gather_without_grad(features: torch.Tensor) -> torch.Tensor:
    """All processes' rows in rank order, for tensors that take no gradient (the teacher's)."""
    if not is_distributed():
        return features
    gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, features.contiguous())
    return torch.cat(gathered, dim=0)


class DirectionLoss(NamedTuple):
    """One direction of the loss (images against captions, or captions against images), means over its rows:
    `loss` is the soft-target cross-entropy, `hard` and `soft` its parts weighted by the one-hot targets and by the
    teacher's distribution (`loss = hard + soft`, cross-entropy being linear in the target)."""

    loss: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor
    teacher_share: torch.Tensor
    teacher_entropy: torch.Tensor
    paired_probability: torch.Tensor
    teacher_agreement: torch.Tensor


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()  # NaN when no row counts: the diagnostic is undefined, not zero.


def teacher_distribution(teacher_logits: torch.Tensor, column_has_teacher: torch.Tensor, temperature: float):
    """softmax(T / tau) over the columns that have a teacher embedding; rows with no such column are NaN."""
    masked = (teacher_logits / temperature).masked_fill(~column_has_teacher, float("-inf"))
    return torch.softmax(masked, dim=-1)


def direction_loss(logits, teacher_logits, labels, weights, row_has_teacher, column_has_teacher, temperature,
                   target="mix"):
    """Soft-target cross-entropy of rows of student logits against all columns, and the teacher diagnostics.

    With `q_r` the teacher's probability of row r's own pair (a constant, like the teacher), and `w_r = 0` for
    rows without a teacher, `target` (`distill_target`) is
    - `"mix"`: row r's target is `(1 - w_r) * onehot(r) + w_r * softmax(T_r / tau)`;
    - `"mix_by_doubt"`: the same with `w_r` scaled by `1 - q_r`, the teacher's doubt in the pair;
    - `"reweight"`: the one-hot target, and row r's loss weighted by `1 - w_r + w_r * q_r`.
    The gradient of a mixed target's loss with respect to `z_r` is `softmax(z_r) - target_r`, and of the
    reweighted one `(1 - w_r + w_r q_r) (softmax(z_r) - onehot(r))` (per row, before the mean).
    """
    hard = F.cross_entropy(logits, labels, reduction="none")
    if teacher_logits is None:
        zero, undefined = logits.new_zeros(()), logits.new_full((), float("nan"))
        return DirectionLoss(hard.mean(), hard.mean(), zero, zero, undefined, undefined, undefined)
    teacher = teacher_distribution(teacher_logits, column_has_teacher, temperature)
    # Rows without a teacher have weight 0; zero their (possibly NaN) distribution so 0 * NaN cannot appear.
    teacher = torch.where(row_has_teacher[:, None], teacher, 0.0)
    paired = teacher.gather(1, labels[:, None]).squeeze(1)
    row_scale = torch.ones_like(weights)
    if target == "mix_by_doubt":
        weights = weights * (1 - paired)
    elif target == "reweight":  # the per-pair loss weights of noisy-correspondence learning (NCR, NPC)
        row_scale, weights = 1 - weights + weights * paired, torch.zeros_like(weights)
    onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    targets = (1 - weights[:, None]) * onehot + weights[:, None] * teacher
    soft = F.cross_entropy(logits, teacher, reduction="none")
    has = row_has_teacher.float()
    return DirectionLoss(
        loss=(row_scale * F.cross_entropy(logits, targets, reduction="none")).mean(),
        hard=(row_scale * (1 - weights) * hard).mean(),
        soft=(row_scale * weights * soft).mean(),
        teacher_share=has.mean(),
        teacher_entropy=masked_mean(-torch.special.xlogy(teacher, teacher).sum(-1), has),
        paired_probability=masked_mean(paired, has),
        teacher_agreement=masked_mean((logits.detach().argmax(-1) == teacher.argmax(-1)).float(), has),
    )


class TrainingProgress(NamedTuple):
    """Where training is: optimizer step `step` of `total_steps`. It sets alpha and, with the seed, the draw."""

    step: int = 0
    total_steps: int = 0


def distill_alpha(alpha_max: float, schedule: str, progress: TrainingProgress) -> float:
    """a(t): `alpha_max * min(1, t / T)` (`"linear"`, 0 while T is unknown) or `alpha_max` (`"constant"`)."""
    if schedule == "constant":
        return alpha_max
    if progress.total_steps <= 0:
        return 0.0
    return alpha_max * min(1.0, progress.step / progress.total_steps)


def draw_distilled_rows(seed: int, step: int, fraction: float, num_rows: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over the global image rows and caption rows, drawn independently from (seed, step): the same on every
    process, and again when a resumed run repeats the step."""
    rng = np.random.default_rng([seed, step])
    num_drawn = round(fraction * num_rows)
    masks = []
    for _ in range(2):
        mask = torch.zeros(num_rows, dtype=torch.bool)
        mask[torch.from_numpy(rng.permutation(num_rows)[:num_drawn])] = True
        masks.append(mask.to(device))
    return masks[0], masks[1]


class PSDContrastiveLoss(nn.Module):
    """Symmetric soft-target contrastive loss with progressive self-distillation.

    Student logits `Z = s * U V^T` over the global batch (all processes' rows); teacher logits `T = s * U' V'^T`
    from the teacher's embeddings of the same pairs, with the student's scale s (no gradient). For row r:
        target = (1 - w_r) * onehot(r) + w_r * softmax(T_r / tau),   w_r = a(t) if r is drawn and has a teacher
        loss_r = cross_entropy(Z_r, target)
    (`distill_target` chooses this mix, the mix with w_r scaled by the teacher's doubt in the pair, or per-pair
    weights on the one-hot loss instead; see `direction_loss`.)
    averaged over rows and over the two directions. Without a teacher, with a = 0 or with no drawn rows this is
    CLIP's InfoNCE exactly.

    It holds no state: training progress (step t of T) comes with each call, and fixes a(t) and, with the seed,
    the draw of distilled rows.
    """

    def __init__(self, config: PSDCLIPConfig):
        super().__init__()
        self.alpha_max = config.distill_alpha_max
        self.fraction = config.distill_fraction
        self.schedule = config.distill_schedule
        self.temperature = config.distill_temperature
        self.seed = config.distill_seed
        self.target = config.distill_target

    def alpha(self, progress: TrainingProgress) -> float:
        return distill_alpha(self.alpha_max, self.schedule, progress)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_multiplier: torch.Tensor,
                teacher_image_embeds: torch.Tensor | None = None, teacher_text_embeds: torch.Tensor | None = None,
                teacher_mask: torch.Tensor | None = None,
                progress: TrainingProgress | tuple[int, int] | None = None) -> PSDLossOutput:
        """Loss of this process's rows at training `progress` (step, total steps; default: step 0 of unknown).

        `*_embeds` are L2-normalised and `logit_multiplier` is s = exp(logit_scale). `teacher_*_embeds` are the teacher's
        L2-normalised embeddings of the same rows (no gradient), `teacher_mask` marks the rows that have them
        (default: all); without them the loss is CLIP's.
        """
        progress = TrainingProgress(*(progress or ()))
        all_image_embeds, offset = gather_with_grad(image_embeds)
        all_text_embeds, _ = gather_with_grad(text_embeds)
        num_local, num_global = image_embeds.shape[0], all_image_embeds.shape[0]
        device = image_embeds.device
        labels = torch.arange(offset, offset + num_local, device=device)
        local = slice(offset, offset + num_local)

        has_teacher = teacher_image_embeds is not None
        alpha = self.alpha(progress) if has_teacher else 0.0
        # Softmax over the whole global batch in fp32, even under mixed precision.
        with torch.autocast(device_type=device.type, enabled=False):
            scale = logit_multiplier.float()
            logits_image_to_text = scale * image_embeds.float() @ all_text_embeds.float().t()
            logits_text_to_image = scale * text_embeds.float() @ all_image_embeds.float().t()
            if has_teacher:
                if teacher_mask is None:
                    teacher_mask = torch.ones(num_local, dtype=torch.bool, device=device)
                column_has_teacher = gather_without_grad(teacher_mask.to(device=device, dtype=torch.bool))
                row_has_teacher = column_has_teacher[local]
                teacher_images = teacher_image_embeds.detach().float()
                teacher_texts = teacher_text_embeds.detach().float()
                teacher_scale = scale.detach()
                teacher_image_to_text = teacher_scale * teacher_images @ gather_without_grad(teacher_texts).t()
                teacher_text_to_image = teacher_scale * teacher_texts @ gather_without_grad(teacher_images).t()
                image_drawn, text_drawn = draw_distilled_rows(self.seed, progress.step, self.fraction, num_global,
                                                              device)
                image_weights = alpha * (image_drawn[local] & row_has_teacher).float()
                text_weights = alpha * (text_drawn[local] & row_has_teacher).float()
            else:
                teacher_image_to_text = teacher_text_to_image = row_has_teacher = column_has_teacher = None
                image_weights = text_weights = None
            image_side = direction_loss(logits_image_to_text, teacher_image_to_text, labels, image_weights,
                                        row_has_teacher, column_has_teacher, self.temperature, self.target)
            text_side = direction_loss(logits_text_to_image, teacher_text_to_image, labels, text_weights,
                                       row_has_teacher, column_has_teacher, self.temperature, self.target)
        both = DirectionLoss(*((a + b) / 2 for a, b in zip(image_side, text_side)))
        return PSDLossOutput(
            loss=both.loss,
            loss_hard=both.hard,
            loss_soft=both.soft,
            distill_alpha=torch.tensor(alpha, device=device),
            teacher_share=both.teacher_share,
            teacher_entropy=both.teacher_entropy,
            paired_probability=both.paired_probability,
            teacher_agreement=both.teacher_agreement,
            # Reported from here so a training loop never reads a parameter that FSDP may hold sharded.
            logit_multiplier=logit_multiplier.detach(),
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

    def logit_multiplier(self) -> torch.Tensor:
        """The similarity scale s = exp(logit_scale), bounded by `config.logit_scale_max`."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Bound the `logit_scale` parameter itself by ln(`config.logit_scale_max`); call after each optimizer step.

        `logit_multiplier` bounds the scale only inside this model's forward: a stock `CLIPModel` loading the
        saved weights reads the parameter as it is, so the parameter must stay within the bound (as in open_clip).
        """
        self.logit_scale.clamp_(max=math.log(self.config.logit_scale_max))

    @can_return_tuple  # `return_dict=False` (or `config.return_dict = False`) gives `PSDCLIPOutput.to_tuple()`
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        teacher_image_embeds: torch.Tensor | None = None,
        teacher_text_embeds: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
        training_progress: TrainingProgress | tuple[int, int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PSDCLIPOutput:
        r"""
        CLIP's forward; with `return_loss=True` the loss is the PSD objective. `teacher_image_embeds` and
        `teacher_text_embeds` (`(batch, projection_dim)`, L2-normalised, no gradient) are a teacher's embeddings of
        this batch's pairs and `teacher_mask` (`(batch,)` bool) marks the pairs that have them; without a teacher
        the loss is CLIP's. `training_progress` (optimizer step, total steps) sets the teacher's weight alpha and
        the draw of distilled rows.
        """
        # The towers' outputs are read by name here, whatever `config.return_dict` says.
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)

        logit_multiplier = self.logit_multiplier()
        logits_per_image = logit_multiplier * image_embeds @ text_embeds.t()

        if return_loss:
            loss_parts = vars(self.psd_loss(image_embeds, text_embeds, logit_multiplier, teacher_image_embeds,
                                            teacher_text_embeds, teacher_mask, training_progress))
        else:
            loss_parts = {"logit_multiplier": logit_multiplier.detach()}
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
    def from_pretrained(cls, *args, output_loading_info: bool = False, ignore_mismatched_sizes: bool = False,
                        **kwargs):
        # transformers fills weights missing from a checkpoint with random values and only logs it; a model
        # that silently lost part of its weights must not load. Weights of another shape than the config's (a
        # projection size edited in config.json) raise a one-line ValueError here, not a RuntimeError pointing at a
        # report. A caller who asks for the loading info gets the model as transformers loads it, to inspect what is
        # missing.
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True,
                                                      **kwargs)
        if loading_info["mismatched_keys"] and not ignore_mismatched_sizes:
            name, saved, expected = sorted(loading_info["mismatched_keys"])[0]
            raise ValueError(f"checkpoint weight {name} has shape {tuple(saved)}, where the config makes it "
                             f"{tuple(expected)}")
        if output_loading_info:
            return model, loading_info
        if loading_info["missing_keys"]:
            missing = sorted(loading_info["missing_keys"])
            raise ValueError(f"checkpoint is missing {len(missing)} weights of {cls.__name__}, e.g. {missing[0]}")
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` records one Auto class; the zero-shot pipeline looks up this second one. Any
        # other entry came with a config loaded from elsewhere and names code this folder does not ship.
        self.config.auto_map = {"AutoModelForZeroShotImageClassification": "modeling_psdclip.PSDCLIPModel"}
        return super().save_pretrained(save_directory, *args, **kwargs)


PSDCLIPConfig.register_for_auto_class()
PSDCLIPModel.register_for_auto_class("AutoModel")

__all__ = ["PSDCLIPModel", "PSDCLIPOutput", "PSDContrastiveLoss", "PSDLossOutput", "TrainingProgress",
           "distill_alpha", "draw_distilled_rows", "gather_with_grad", "gather_without_grad"]
