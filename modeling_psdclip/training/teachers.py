"""Teachers of progressive self-distillation: the earlier self of the model whose alignment the soft targets mix in.

The loss needs, for the pairs of a batch, a teacher's L2-normalised image and caption embeddings; it turns them
into teacher logits over the global batch (README, "Objective"). The teacher must be a different function of the
data than the student at this step: the student's own logits give a soft term with zero gradient.

A teacher is a subclass of `Teacher` registered under the name `distill_teacher` gives it (`@register_teacher`);
the class declares what the rest of training must know of it (the extra forward passes it costs, the config
settings its card lists, whether each epoch's end needs a checkpoint, its first taught epoch) and how it is built.
Adding one is one class here plus its name in `configuration_psdclip.DISTILL_TEACHERS`, which remote code reads.

- `PreviousEpochTeacher` (PS-KD): the model of epoch e-1 teaches epoch e through the embeddings it produced for each
  pair, stored in a bank as it trained. No extra forward pass.
- `EMATeacher` (ALBEF's momentum distillation, MoCo, DINO): a moving average of the weights, run without gradient on
  the same batch. One extra forward pass; works with streamed data and single-epoch runs.
- `StartTeacher`: the model as training started, never moved: the control of "distillation only keeps the start".
- `UniformTeacher`: no teacher at all, a uniform target in its place: label smoothing with PSD's alpha schedule and
  drawn rows. The control arm: PSD is credited only with what it does beyond it.

`TrainingStep` (training/step.py), the one caller, drives every teacher the same way:

    teacher.start_epoch(epoch)                      # every process, before each epoch
    targets = teacher.embeddings(batch)             # TeacherEmbeddings or None; model(**batch, **targets.as_kwargs())
    teacher.record(batch, image_embeds, text_embeds)   # after a finite step's forward (every process)
    teacher.after_optimizer_step(model)             # once per optimizer step, not per micro-batch
"""

import copy
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..configuration_psdclip import PSDCLIPConfig
from ..data.collate import model_inputs
from ..modeling_psdclip import PSDCLIPModel


@dataclass
class TeacherEmbeddings:
    """A teacher's view of a batch: embeddings of its pairs and, when not all have them, which do."""

    image: torch.Tensor
    text: torch.Tensor
    mask: torch.Tensor | None = None  # None: every pair has a teacher

    def as_kwargs(self) -> dict:
        return {"teacher_image_embeds": self.image, "teacher_text_embeds": self.text, "teacher_mask": self.mask}

    @staticmethod
    def concatenate(parts: list["TeacherEmbeddings | None"]) -> "TeacherEmbeddings | None":
        """The micro-batches of one step as one batch (feature caching); None when no part has a teacher."""
        if any(part is None for part in parts):
            return None
        masks = None
        if any(part.mask is not None for part in parts):
            masks = torch.cat([part.mask if part.mask is not None else
                               torch.ones(len(part.image), dtype=torch.bool, device=part.image.device)
                               for part in parts])
        return TeacherEmbeddings(torch.cat([p.image for p in parts]), torch.cat([p.text for p in parts]), masks)


def teacher_kwargs(embeddings: TeacherEmbeddings | None) -> dict:
    return embeddings.as_kwargs() if embeddings is not None else {}


def pair_indices(batch: dict) -> torch.Tensor:
    if batch.get("pair_index") is None:
        raise ValueError("the previous_epoch teacher needs each batch's pair_index, the dataset index of every pair "
                         "(modeling_psdclip.data.ImageTextCollator adds it)")
    return batch["pair_index"]


class Teacher:
    """What every teacher has, with the behaviour of one that holds no state and records nothing.

    Subclasses set `name` and implement `build` and `embeddings`; they override the rest only where they differ.
    Every method is collective under several processes: every process calls it.
    """

    name: ClassVar[str]
    extra_forward_passes: ClassVar[int] = 0  # no-grad forwards a step costs, for the FLOPs estimate
    card_settings: ClassVar[tuple[str, ...]] = ()  # config settings of its own that a model card lists
    first_taught_epoch: ClassVar[int] = 0
    # Whether each epoch's end needs a checkpoint: true when a resume must never go back across one.
    needs_checkpoint_at_epoch_end: ClassVar[bool] = False

    @classmethod
    def build(cls, config: PSDCLIPConfig, model, accelerator: Accelerator, *, bank_folder: Path | None,
              num_pairs: int | None, resume: bool) -> "Teacher":
        """The teacher for `model` (as the loop holds it); ValueError with a one-line reason when it cannot work
        here. `bank_folder`, `num_pairs` (None for streamed data) and `resume` describe the run."""
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        pass

    def embeddings(self, batch: dict) -> TeacherEmbeddings | None:
        raise NotImplementedError

    def record(self, batch: dict, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        pass

    def after_optimizer_step(self, model) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the teacher, as tensors."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


TEACHERS: dict[str, type[Teacher]] = {}


def register_teacher(teacher: type[Teacher]) -> type[Teacher]:
    """Class decorator: make `teacher` the one `distill_teacher: <teacher.name>` builds."""
    TEACHERS[teacher.name] = teacher
    return teacher


@register_teacher
class PreviousEpochTeacher(Teacher):
    """Embeddings of every pair from the previous epoch, in memory-mapped fp16 banks in the run directory.

    While epoch e trains, each pair's normalised image and caption embeddings are written at its dataset index into
    bank e mod 2, with e in a per-row tag; epoch e reads bank (e-1) mod 2 and uses only rows tagged e-1 (a pair that
    epoch e-1 did not see, such as one dropped with the last partial batch, has no teacher). A resumed run that
    replays steps rewrites the same rows with the same values. Memory: 2 banks x 2 towers x pairs x dim x 2 bytes.

    Memory-mapped files let a dataset larger than RAM work and let the processes of one machine share pages. Every
    process takes part in `record` (it gathers the global batch); the first process of each machine writes it, so
    every process reads the same contents whether or not machines share the run directory.
    """

    name = "previous_epoch"
    FILES = ("image", "text", "epoch")
    first_taught_epoch = 1  # the first epoch has no previous one
    # The next epoch overwrites the bank an earlier checkpoint's epoch reads: a resume must never go back across an
    # epoch's end, so each one is checkpointed.
    needs_checkpoint_at_epoch_end = True

    @classmethod
    def build(cls, config, model, accelerator, *, bank_folder, num_pairs, resume):
        if num_pairs is None:
            raise ValueError("the previous_epoch teacher stores embeddings by pair index, which streamed data does "
                             "not have: use the ema teacher")
        if bank_folder is None:
            raise ValueError("the previous_epoch teacher needs a folder for its bank of embeddings")
        return cls(bank_folder, num_pairs, config.projection_dim, accelerator, resume=resume)

    def __init__(self, folder: str | Path, num_pairs: int, dim: int, accelerator: Accelerator, resume: bool):
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.epoch = 0
        shapes = {"image": ((2, num_pairs, dim), np.float16), "text": ((2, num_pairs, dim), np.float16),
                  "epoch": ((2, num_pairs), np.int32)}
        if accelerator.is_local_main_process and not (resume and self._matches(shapes)):
            self._create(shapes)
        accelerator.wait_for_everyone()
        mode = "r+" if accelerator.is_local_main_process else "r"
        self.banks = {name: np.load(self.folder / f"{name}.npy", mmap_mode=mode) for name in self.FILES}

    def _matches(self, shapes: dict) -> bool:
        try:
            banks = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in self.FILES}
        except (OSError, ValueError):
            return False
        return all(banks[name].shape == shape and banks[name].dtype == dtype for name, (shape, dtype) in shapes.items())

    def _create(self, shapes: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, (shape, dtype) in shapes.items():
            # Staged under a name of this machine's own and renamed, so machines sharing the folder never see a
            # half-made file.
            staging = self.folder / f".{name}.{socket.gethostname()}.{os.getpid()}.npy"
            bank = np.lib.format.open_memmap(staging, mode="w+", dtype=dtype, shape=shape)
            if name == "epoch":
                bank[:] = -1  # no row stored yet
            bank.flush()
            del bank
            os.replace(staging, self.folder / f"{name}.npy")

    def start_epoch(self, epoch: int) -> None:
        """Collective. The barrier makes every write of the epoch before visible to every reader of this one."""
        if self.accelerator.is_local_main_process:
            for bank in self.banks.values():
                bank.flush()
        self.accelerator.wait_for_everyone()
        self.epoch = epoch

    def embeddings(self, batch: dict) -> TeacherEmbeddings | None:
        if self.epoch == 0:
            return None
        device = batch["input_ids"].device
        rows = pair_indices(batch).cpu().numpy()
        read = (self.epoch - 1) % 2
        return TeacherEmbeddings(
            image=torch.from_numpy(self.banks["image"][read, rows]).to(device),
            text=torch.from_numpy(self.banks["text"][read, rows]).to(device),
            mask=torch.from_numpy(self.banks["epoch"][read, rows] == self.epoch - 1).to(device),
        )

    @torch.no_grad()
    def record(self, batch: dict, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        """Collective: store the global batch's embeddings of this epoch."""
        rows = self.accelerator.gather(pair_indices(batch).to(image_embeds.device)).cpu().numpy()
        images = self.accelerator.gather(image_embeds.detach().half().contiguous()).cpu().numpy()
        texts = self.accelerator.gather(text_embeds.detach().half().contiguous()).cpu().numpy()
        if self.accelerator.is_local_main_process:
            write = self.epoch % 2
            self.banks["image"][write, rows] = images
            self.banks["text"][write, rows] = texts
            self.banks["epoch"][write, rows] = self.epoch
    # Its state_dict is empty: the banks live in the run directory, and the epoch comes from the loop's own state.


@register_teacher
class EMATeacher(Teacher):
    """A momentum copy of the towers and projections: `ema = decay * ema + (1 - decay) * student` every step.

    It starts equal to the student (so the first steps distil nothing, and alpha starts at 0 anyway) and runs in
    eval mode without gradient, under the loop's autocast. Every process keeps the same copy: the student's
    parameters are the same everywhere after each DDP step.
    """

    name = "ema"
    extra_forward_passes = 1
    card_settings = ("distill_ema_decay",)

    def __init__(self, model: PSDCLIPModel, decay: float, accelerator: Accelerator | None = None):
        accelerator = accelerator or Accelerator()  # a plain loop: one process, no mixed precision
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError(f"the {self.name} teacher needs the full weights on every process, which FSDP and "
                             "DeepSpeed shard: use the previous_epoch teacher there")
        self.model = copy.deepcopy(accelerator.unwrap_model(model)).eval().requires_grad_(False)
        self.decay = decay
        self.accelerator = accelerator

    @classmethod
    def build(cls, config, model, accelerator, *, bank_folder, num_pairs, resume):
        return cls(model, config.distill_ema_decay, accelerator)

    @torch.no_grad()
    def embeddings(self, batch: dict) -> TeacherEmbeddings:
        with self.accelerator.autocast():
            output = self.model(**model_inputs(batch), return_loss=False)
        return TeacherEmbeddings(output.image_embeds, output.text_embeds)

    @torch.no_grad()
    def after_optimizer_step(self, model) -> None:
        student = dict(self.accelerator.unwrap_model(model).named_parameters())
        names = [name for name, _ in self.model.named_parameters()]
        torch._foreach_lerp_([self.model.get_parameter(name) for name in names],
                             [student[name].detach() for name in names], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach().contiguous() for name, parameter in self.model.named_parameters()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = self.model.load_state_dict(state, strict=False).missing_keys
        parameters = {name for name, _ in self.model.named_parameters()}
        if parameters & set(missing):
            raise ValueError(f"the checkpoint's ema teacher lacks {sorted(parameters & set(missing))[0]}")


@register_teacher
class StartTeacher(EMATeacher):
    """The model as training started, never moved (an EMA teacher with decay 1): distilling from it only keeps the
    student near its start, which is what PSD must beat. Its weights are in checkpoints, so a resumed run keeps the
    start it began from."""

    name = "start"
    card_settings = ()

    @classmethod
    def build(cls, config, model, accelerator, *, bank_folder, num_pairs, resume):
        return cls(model, 1.0, accelerator)

    def after_optimizer_step(self, model) -> None:
        pass


@register_teacher
class UniformTeacher(Teacher):
    """Label smoothing in a teacher's place: zero embeddings give equal teacher logits, so `softmax(T / tau)` is
    uniform over the global batch and a drawn row's target is `(1 - a) onehot + a / N`, with the alpha schedule and
    row draw of PSD. No extra compute and no state."""

    name = "uniform"

    def __init__(self, dim: int):
        self.dim = dim

    @classmethod
    def build(cls, config, model, accelerator, *, bank_folder, num_pairs, resume):
        return cls(config.projection_dim)

    def embeddings(self, batch: dict) -> TeacherEmbeddings:
        zeros = batch["input_ids"].new_zeros((len(batch["input_ids"]), self.dim), dtype=torch.float32)
        return TeacherEmbeddings(zeros, zeros)


def build_teacher(config: PSDCLIPConfig, model, accelerator: Accelerator, bank_folder: str | Path | None,
                  num_pairs: int | None, resume: bool = False) -> Teacher | None:
    """The teacher `config.distill_teacher` names, or None for plain CLIP (`distill_alpha_max == 0`).

    `num_pairs` is the size of map-style training data (None when streamed: the previous-epoch bank needs stable
    pair indices). Raises ValueError with a one-line reason when the teacher cannot work here.
    """
    if config.distill_alpha_max == 0:
        return None
    return teacher_class(config.distill_teacher).build(
        config, model, accelerator, bank_folder=Path(bank_folder) if bank_folder is not None else None,
        num_pairs=num_pairs, resume=resume)


def teacher_class(name: str) -> type[Teacher]:
    if name not in TEACHERS:
        raise ValueError(f"no teacher is registered as {name!r} (registered: {', '.join(TEACHERS)})")
    return TEACHERS[name]


def active_teacher_class(config: PSDCLIPConfig) -> type[Teacher] | None:
    """The class of the teacher a training run with `config` builds (None for plain CLIP), without building it."""
    return teacher_class(config.distill_teacher) if config.distill_alpha_max > 0 else None


__all__ = ["EMATeacher", "PreviousEpochTeacher", "StartTeacher", "TEACHERS", "Teacher", "TeacherEmbeddings",
           "UniformTeacher", "active_teacher_class", "build_teacher", "register_teacher", "teacher_class",
           "teacher_kwargs"]
