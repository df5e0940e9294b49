"""Training PSD-CLIP: what only training uses, apart from what a Hub user imports.

- `cli` / `run`: the training command (`python train.py`, `python -m modeling_psdclip.training`, `psdclip-train`)
  and its run: state, set-up, resume, loop, save; `options`: its options.
- `step`: `TrainingStep`, the one object that owns model, teacher and loss for a batch, and validation.
- `optim`: parameter groups, AdamW, the FLOPs estimate. `teachers`: the teachers, as registered types.
- `checkpoints`: resumable checkpoints. `trainer`: `PSDTrainer`, transformers' Trainer driving a `TrainingStep`.
- `card_fields`: what the model card says of a training run.

Names load on first use, so that importing the package (as the command does before parsing its options) is cheap.
"""

from ..utils import lazy_names

_EXPORTS = {
    "main": "cli", "TrainingOptions": "options", "parse_options": "options", "TrainingStep": "step",
    "validate": "step", "EMATeacher": "teachers", "PreviousEpochTeacher": "teachers", "StartTeacher": "teachers",
    "Teacher": "teachers", "TeacherEmbeddings": "teachers", "UniformTeacher": "teachers", "build_teacher": "teachers",
    "register_teacher": "teachers", "PSDTrainer": "trainer", "LogitScaleCallback": "trainer",
    "CheckpointManager": "checkpoints",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
