"""Keeps a PSD-CLIP model's distillation progress in step with transformers' `Trainer`."""

from transformers import TrainerCallback


class PSDProgressCallback(TrainerCallback):
    """Before every optimizer step, tell the model which step of how many it is (alpha and the row draw)."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.set_distill_progress(state.global_step, state.max_steps)
