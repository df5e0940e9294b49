"""One optimizer step's forward and backward, the one place where model, teacher and loss meet; and validation.

`TrainingStep` owns the model (as the loop holds it: prepared by Accelerate, or plain), the teacher its config names
(none for plain CLIP) and the loss's progress. train.py's loop, `PSDTrainer`, the benchmarks and a plain loop drive it
the same way:

    step = TrainingStep.build(model, accelerator, bank_folder=..., num_pairs=len(train_data))
    step.start_epoch(epoch)                              # every process, before each epoch
    losses, parts = step.forward_backward(micro_batches, (optimizer_step, total_steps))  # teacher in, record out
    ...clip the gradients, optimizer.step(), zero them...
    step.after_optimizer_step()                          # bound the logit scale, move the EMA teacher
    if step.needs_checkpoint_at_epoch_end: ...           # a resume must not go back across this epoch's end

One optimizer step: the global batch is split over the processes and, on each process, into micro-batches. With one
micro-batch the model's forward computes the loss. With several, the step uses feature caching (as open_clip's
accum_freq): a no-grad forward of every micro-batch caches its embeddings, then each micro-batch is forwarded again
with gradients, its rows replace the cached ones, and the full-batch loss is backpropagated through that micro-batch
only. The gradients add up to exactly the full-batch gradient, so the contrastive loss sees all N pairs whatever the
memory.
"""

import contextlib
import dataclasses
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..data.collate import model_inputs
from ..modeling_psdclip import PSDLossOutput
from ..ranking import distinct_items, distinct_text_contrastive_loss, image_carries, retrieval_ranks, text_items
from .teachers import Teacher, TeacherEmbeddings, build_teacher, teacher_kwargs


def feature_caching_unsupported(accelerator: Accelerator) -> bool:
    # FSDP shards the logit scale outside the forward; DeepSpeed steps the optimizer inside every backward.
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)



LOSS_PARTS = tuple(field.name for field in dataclasses.fields(PSDLossOutput)
                   if field.name not in ("distill_alpha", "logit_multiplier"))


def global_loss_parts(accelerator: Accelerator, losses) -> dict:
    """The loss parts of the whole global batch: the mean over processes of their rows' means."""
    local = torch.stack([getattr(losses, name) for name in LOSS_PARTS]).detach().float()
    return dict(zip(LOSS_PARTS, accelerator.reduce(local, "mean").tolist()))


class TrainingStep:
    """Forward, backward and the teacher of each optimizer step, for a model as the loop holds it.

    `accelerator` is the loop's (a plain loop's default: one process, no mixed precision). Every method that
    involves the teacher is collective under several processes: every process calls it.
    """

    def __init__(self, model, teacher: Teacher | None = None, accelerator: Accelerator | None = None):
        self.model = model
        self.teacher = teacher
        self.accelerator = accelerator or Accelerator()

    @classmethod
    def build(cls, model, accelerator: Accelerator | None = None, *, bank_folder: str | Path | None = None,
              num_pairs: int | None = None, resume: bool = False) -> "TrainingStep":
        """A step with the teacher the model's config names (`build_teacher`): the previous-epoch teacher keeps its
        bank in `bank_folder` and needs `num_pairs`, the size of map-style training data; `resume` keeps a bank
        that is there. Raises ValueError with a one-line reason when the teacher cannot work here."""
        accelerator = accelerator or Accelerator()
        config = accelerator.unwrap_model(model).config
        teacher = build_teacher(config, model, accelerator, bank_folder, num_pairs, resume=resume)
        return cls(model, teacher, accelerator)

    @property
    def psd(self):
        """The model itself, unwrapped from what Accelerate prepared."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def needs_checkpoint_at_epoch_end(self) -> bool:
        """Whether the end of an epoch needs a checkpoint: the previous-epoch teacher overwrites, in the next epoch,
        the bank that an earlier checkpoint's epoch reads, so a resume must never go back across an epoch's end."""
        return self.teacher is not None and self.teacher.needs_checkpoint_at_epoch_end

    @property
    def first_taught_epoch(self) -> int | None:
        """The first epoch whose rows have a teacher (None without one)."""
        return self.teacher.first_taught_epoch if self.teacher is not None else None

    def start_epoch(self, epoch: int) -> None:
        if self.teacher is not None:
            self.teacher.start_epoch(epoch)

    def forward(self, batch: dict, progress: tuple[int, int], model=None):
        """The loss output of one batch against the teacher's targets at `progress` (optimizer step, total steps:
        alpha and the draw of distilled rows); nothing is backpropagated or recorded.

        `model`: the model to run, when the loop holds it wrapped in another way (Trainer's `compute_loss`).
        """
        targets = self.teacher.embeddings(batch) if self.teacher is not None else None
        return (model or self.model)(**model_inputs(batch), return_loss=True, training_progress=progress,
                                     **teacher_kwargs(targets))

    def record(self, batch: dict, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        """Give the teacher this step's embeddings of the batch's pairs (the previous-epoch bank stores them)."""
        if self.teacher is not None:
            self.teacher.record(batch, image_embeds, text_embeds)

    def forward_backward(self, micro_batches: list[dict], progress: tuple[int, int]) -> tuple[object, dict]:
        """Forward and backward of this process's share of the global batch, with the teacher's targets, at
        `progress` (optimizer step, total steps: alpha and the draw of distilled rows).

        Returns the last micro-step's loss output and the global loss parts. A non-finite loss (on any process) is
        not backpropagated at all (under DeepSpeed the backward pass itself steps the optimizer), and the teacher
        does not record its embeddings.
        """
        accelerator, model, psd = self.accelerator, self.model, self.psd
        targets = [self.teacher.embeddings(batch) if self.teacher is not None else None for batch in micro_batches]
        inputs = [model_inputs(batch) for batch in micro_batches]
        parts = None
        if len(micro_batches) > 1:
            with torch.no_grad():
                cached = [model(**batch, return_loss=False) for batch in inputs]
            cached_images = [output.image_embeds for output in cached]
            cached_texts = [output.text_embeds for output in cached]
            step_targets = teacher_kwargs(TeacherEmbeddings.concatenate(targets))
        last = len(micro_batches) - 1
        for index, batch in enumerate(inputs):
            # Gradients are all-reduced once, after the last micro-batch.
            with accelerator.no_sync(model) if index < last else contextlib.nullcontext():
                if len(micro_batches) == 1:
                    # The model's own forward computes the loss, which works under every Accelerate backend.
                    losses = model(**batch, return_loss=True, training_progress=progress,
                                   **teacher_kwargs(targets[0]))
                    step_images, step_texts = losses.image_embeds, losses.text_embeds
                else:
                    fresh = model(**batch, return_loss=False)
                    images = torch.cat([*cached_images[:index], fresh.image_embeds, *cached_images[index + 1:]])
                    texts = torch.cat([*cached_texts[:index], fresh.text_embeds, *cached_texts[index + 1:]])
                    scale = psd.logit_multiplier()
                    # Every micro-step's loss contains the scale; its gradient is taken once so the sum over
                    # micro-steps is exactly the full-batch gradient.
                    losses = psd.psd_loss(images, texts, scale if index == last else scale.detach(), **step_targets,
                                          progress=progress)
                    step_images, step_texts = torch.cat(cached_images), torch.cat(cached_texts)
                if parts is None:
                    # Every micro-step's loss has the full-batch value, so the first one decides for the step.
                    parts = global_loss_parts(accelerator, losses)
                    if not math.isfinite(parts["loss"]):
                        return losses, parts
                accelerator.backward(losses.loss)
        if self.teacher is not None:
            pair_index = torch.cat([batch["pair_index"] for batch in micro_batches]) if "pair_index" in \
                micro_batches[0] else None
            self.record({"pair_index": pair_index}, step_images, step_texts)
        return losses, parts

    def after_optimizer_step(self) -> None:
        """Once per optimizer step, not per micro-batch: bound the logit scale parameter, move the EMA teacher."""
        self.psd.clamp_logit_scale_()
        if self.teacher is not None:
            self.teacher.after_optimizer_step(self.model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the teacher (the EMA weights; nothing for the bank, which is on disk)."""
        return self.teacher.state_dict() if self.teacher is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        if self.teacher is not None:
            self.teacher.load_state_dict(state or {})


@torch.no_grad()
def validate(accelerator: Accelerator, model, loader) -> dict:
    """Held-out CLIP loss (alpha-free, so runs with any schedule compare) and retrieval Recall@1, with identical
    caption texts (the same token ids) counted as one item, as `python -m eval retrieval` counts them.

    Embeddings are gathered batch by batch, inside the loop, so `gather_for_metrics` can drop the samples
    Accelerate repeats to even out the last batch; each batch's loss is over the global batch, so it does not
    depend on the number of processes.
    """
    model.eval()
    images, texts, token_ids, batch_losses = [], [], [], []
    for batch in loader:
        output = model(**model_inputs(batch), return_loss=False)
        image_embeds = accelerator.gather_for_metrics(output.image_embeds.float())
        text_embeds = accelerator.gather_for_metrics(output.text_embeds.float())
        # Captions are padded to the context length, so the rows of every batch compare position by position.
        ids = batch["input_ids"] * batch["attention_mask"] if "attention_mask" in batch else batch["input_ids"]
        ids = accelerator.gather_for_metrics(ids)
        logits = output.logit_multiplier.float() * image_embeds @ text_embeds.t()
        if len(logits) > 1:  # a last batch of one pair has no other pair to contrast with: its loss is always 0
            batch_losses.append(distinct_text_contrastive_loss(logits, text_items(ids)).item())
        images.append(image_embeds.cpu())
        texts.append(text_embeds.cpu())
        token_ids.append(ids.cpu())
    model.train()
    images, texts = torch.cat(images), torch.cat(texts)
    first, text_item = distinct_items(torch.cat(token_ids))
    image_ranks, text_ranks = retrieval_ranks(images, texts[first], image_carries(text_item))
    return {
        "val/loss": sum(batch_losses) / len(batch_losses),
        "val/image_to_text_R@1": float((image_ranks < 1).mean()),
        "val/text_to_image_R@1": float((text_ranks < 1).mean()),
    }


__all__ = ["LOSS_PARTS", "TrainingStep", "global_loss_parts", "validate"]
