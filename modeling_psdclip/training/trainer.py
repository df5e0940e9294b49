"""PSD-CLIP under transformers' `Trainer`: the distillation progress and a teacher, kept in step with its loop."""

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset
from transformers import Trainer, TrainerCallback

from .teachers import build_teacher, model_inputs, teacher_kwargs

TEACHER_FILE = "teacher.safetensors"


class PSDProgressCallback(TrainerCallback):
    """Before every optimizer step, tell the model which step of how many it is (alpha and the row draw); after
    it, bound the logit scale parameter (`PSDCLIPModel.clamp_logit_scale_`)."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.set_distill_progress(state.global_step, state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.clamp_logit_scale_()


class TeacherCallback(TrainerCallback):
    """Drives a `PSDTrainer`'s teacher from Trainer's events: a new epoch, and each optimizer step (not each
    micro-batch)."""

    def __init__(self, trainer: "PSDTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.teacher is not None:
            self.trainer.teacher.start_epoch(int(state.epoch))

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.trainer.teacher is not None:
            self.trainer.teacher.after_optimizer_step(model)


class PSDTrainer(Trainer):
    """`Trainer` for PSD-CLIP with the teacher `model.config.distill_teacher` names.

    Use it as `Trainer`, with any collator whose batches hold the model inputs and, for the previous-epoch teacher,
    `pair_index` (`ImageTextCollator` adds it). The previous-epoch bank lives in `args.output_dir/teacher_bank`;
    the EMA teacher's weights are saved in, and restored from, Trainer's checkpoints. With
    `gradient_accumulation_steps > 1` each micro-batch's contrastive loss stands alone (fewer negatives than
    train.py's feature caching).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = None
        self.add_callback(PSDProgressCallback())
        self.add_callback(TeacherCallback(self))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # Built here, where it is known whether a resumed run's bank is to be kept; a resumed EMA teacher's
        # weights are loaded with the optimizer's.
        dataset = self.train_dataset
        self.teacher = build_teacher(self.model.config, self.model, self.accelerator,
                                     Path(self.args.output_dir) / "teacher_bank",
                                     num_pairs=None if isinstance(dataset, IterableDataset) else len(dataset),
                                     resume=bool(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # Trainer drops the dataset columns and record fields that the model's forward does not name, before the
    # collator runs; PSD-CLIP's collator needs the raw images and captions, and the teacher the pair indices.
    # `compute_loss` hands the model only its inputs.
    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training and self.teacher is not None
        targets = self.teacher.embeddings(inputs) if training else None
        outputs = model(**model_inputs(inputs), return_loss=True, **teacher_kwargs(targets))
        if training:
            self.teacher.record(inputs, outputs.image_embeds, outputs.text_embeds)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        state = self.teacher.state_dict() if self.teacher is not None else {}
        if state and self.args.should_save:
            save_file({name: tensor.cpu() for name, tensor in state.items()}, Path(output_dir) / TEACHER_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.teacher is not None and (Path(checkpoint) / TEACHER_FILE).is_file():
            self.teacher.load_state_dict(load_file(Path(checkpoint) / TEACHER_FILE))


__all__ = ["PSDProgressCallback", "PSDTrainer", "TeacherCallback"]
