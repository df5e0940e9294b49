"""PSD-CLIP under transformers' `Trainer`: a `TrainingStep` (model, teacher, loss) kept in step with its loop."""

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset
from transformers import Trainer, TrainerCallback

from ..data.collate import model_inputs
from .step import TrainingStep

TEACHER_FILE = "teacher.safetensors"


class LogitScaleCallback(TrainerCallback):
    """For a plain `Trainer` (which trains PSD-CLIP as CLIP: it builds no teacher): after every optimizer step,
    bound the logit scale parameter (`PSDCLIPModel.clamp_logit_scale_`). `PSDTrainer` does it through its
    `TrainingStep`."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.clamp_logit_scale_()


class StepCallback(TrainerCallback):
    """Drives a `PSDTrainer`'s `TrainingStep` from Trainer's events: a new epoch, and what follows each optimizer
    step (not each micro-batch). The progress needs no event: `compute_loss` reads it from Trainer's state."""

    def __init__(self, trainer: "PSDTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.psd_step is not None:
            self.trainer.psd_step.start_epoch(int(state.epoch))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.psd_step is not None:
            self.trainer.psd_step.after_optimizer_step()



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
        self.psd_step = None  # a TrainingStep, built by `train`
        self.add_callback(StepCallback(self))

    @property
    def teacher(self):
        """The teacher of the current training (None before `train`, or for plain CLIP)."""
        return self.psd_step.teacher if self.psd_step is not None else None

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # Built here, where it is known whether a resumed run's bank is to be kept; a resumed EMA teacher's
        # weights are loaded with the optimizer's.
        dataset = self.train_dataset
        self.psd_step = TrainingStep.build(self.model, self.accelerator,
                                       bank_folder=Path(self.args.output_dir) / "teacher_bank",
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
        if model.training and self.psd_step is not None:
            outputs = self.psd_step.forward(inputs, (self.state.global_step, self.state.max_steps), model=model)
            self.psd_step.record(inputs, outputs.image_embeds, outputs.text_embeds)
        else:  # evaluation: the plain CLIP loss
            outputs = model(**model_inputs(inputs), return_loss=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        state = self.psd_step.state_dict() if self.psd_step is not None else {}
        if state and self.args.should_save:
            save_file({name: tensor.cpu() for name, tensor in state.items()}, Path(output_dir) / TEACHER_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.psd_step is not None and (Path(checkpoint) / TEACHER_FILE).is_file():
            self.psd_step.load_state_dict(load_file(Path(checkpoint) / TEACHER_FILE))


__all__ = ["LogitScaleCallback", "PSDTrainer", "StepCallback"]
