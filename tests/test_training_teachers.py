"""The teachers: the previous-epoch bank, the EMA copy, the frozen start, the registry that builds them, and a new
teacher added as one registered class."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from modeling_psdclip import PSDCLIPModel, configuration_psdclip
from modeling_psdclip.card import training_metadata
from modeling_psdclip.training import options
from modeling_psdclip.training.optim import training_flops_per_sample
from modeling_psdclip.training.step import TrainingStep
from modeling_psdclip.training.teachers import (
    TEACHERS, EMATeacher, PreviousEpochTeacher, StartTeacher, Teacher, TeacherEmbeddings, UniformTeacher,
    active_teacher_class, build_teacher, register_teacher,
)
from tests.support import micro_config, random_batch


def batch_of(config, pairs: list[int], seed: int = 0) -> dict:
    return {**random_batch(config, len(pairs), seed=seed), "pair_index": torch.tensor(pairs)}


def test_bank_distils_from_the_second_epoch_with_the_first_epochs_embeddings(tmp_path):
    torch.manual_seed(0)
    config = micro_config(distill_alpha_max=0.5, distill_schedule="constant", distill_fraction=1.0)
    model = PSDCLIPModel(config)
    bank = PreviousEpochTeacher(tmp_path, num_pairs=10, dim=config.projection_dim, accelerator=Accelerator(cpu=True),
                                resume=False)
    first = batch_of(config, [7, 2, 5, 0])
    second = batch_of(config, [3, 9, 1, 4], seed=1)

    bank.start_epoch(0)
    assert bank.embeddings(first) is None  # nothing stored yet: epoch 0 trains as CLIP
    with pytest.raises(ValueError, match="pair_index"):
        bank.record({}, torch.zeros(1, 16), torch.zeros(1, 16))
    recorded = {}
    for batch in (first, second):
        out = model(**{k: v for k, v in batch.items() if k != "pair_index"}, return_loss=True)
        bank.record(batch, out.image_embeds, out.text_embeds)
        recorded.update({int(pair): (out.image_embeds[row].detach(), out.text_embeds[row].detach())
                         for row, pair in enumerate(batch["pair_index"])})

    bank.start_epoch(1)
    mixed = batch_of(config, [5, 3, 8, 7], seed=2)  # pair 8 was not seen in epoch 0
    teacher = bank.embeddings(mixed)
    assert teacher.mask.tolist() == [True, True, False, True]
    for row, pair in enumerate([5, 3, 7]):
        position = [5, 3, 8, 7].index(pair)
        torch.testing.assert_close(teacher.image[position].float(), recorded[pair][0], atol=1e-3, rtol=0)
        assert torch.equal(teacher.image[position], recorded[pair][0].half())
        assert torch.equal(teacher.text[position], recorded[pair][1].half())

    # The loss's teacher logits are those of the stored first-epoch embeddings: the same loss as passing them by hand.
    inputs = {k: v for k, v in mixed.items() if k != "pair_index"}
    by_hand = {"teacher_image_embeds": torch.stack([recorded.get(p, (torch.zeros(16), None))[0].half()
                                                    for p in [5, 3, 8, 7]]),
               "teacher_text_embeds": torch.stack([recorded[p][1].half() if p in recorded else torch.zeros(16).half()
                                                   for p in [5, 3, 8, 7]]),
               "teacher_mask": torch.tensor([True, True, False, True])}
    from_bank = model(**inputs, return_loss=True, **teacher.as_kwargs())
    expected = model(**inputs, return_loss=True, **by_hand)
    assert from_bank.loss_soft.item() > 0
    torch.testing.assert_close(from_bank.loss, expected.loss, rtol=0, atol=0)
    assert from_bank.teacher_share.item() == 0.75

    # Epoch 2 reads what epoch 1 wrote, and never a row left from epoch 0 in the other bank.
    bank.record(mixed, *(torch.randn(4, 16) for _ in range(2)))
    bank.start_epoch(2)
    assert bank.embeddings(batch_of(config, [5, 0, 8])).mask.tolist() == [True, False, True]


def test_bank_survives_a_resume_and_is_reset_by_a_new_run(tmp_path):
    accelerator = Accelerator(cpu=True)
    bank = PreviousEpochTeacher(tmp_path, num_pairs=4, dim=3, accelerator=accelerator, resume=False)
    bank.record({"pair_index": torch.tensor([1])}, torch.ones(1, 3), torch.ones(1, 3))
    bank.start_epoch(1)
    again = PreviousEpochTeacher(tmp_path, num_pairs=4, dim=3, accelerator=accelerator, resume=True)
    again.start_epoch(1)
    assert again.embeddings({"pair_index": torch.tensor([1, 2]), "input_ids": torch.zeros(2)}).mask.tolist() == \
        [True, False]
    fresh = PreviousEpochTeacher(tmp_path, num_pairs=4, dim=3, accelerator=accelerator, resume=False)
    fresh.start_epoch(1)
    assert not fresh.embeddings({"pair_index": torch.tensor([1]), "input_ids": torch.zeros(1)}).mask.any()
    # 1M pairs at d=512: two banks of fp16 image and caption embeddings.
    assert 2 * 2 * 1_000_000 * 512 * np.dtype(np.float16).itemsize == 4_096_000_000


def test_ema_teacher_averages_the_weights_and_runs_without_gradient():
    torch.manual_seed(0)
    config = micro_config()
    accelerator = Accelerator(cpu=True)
    model = PSDCLIPModel(config)
    teacher = EMATeacher(model, decay=0.75, accelerator=accelerator)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    teacher.after_optimizer_step(model)
    for name, parameter in teacher.model.named_parameters():
        torch.testing.assert_close(parameter, 0.75 * start[name] + 0.25 * (start[name] + 1.0))
        assert not parameter.requires_grad
    embeddings = teacher.embeddings(random_batch(config, 3))
    assert embeddings.mask is None and not embeddings.image.requires_grad
    torch.testing.assert_close(embeddings.image.norm(dim=-1), torch.ones(3))
    # The state round-trips, and holds nothing but the model's parameters.
    other = EMATeacher(PSDCLIPModel(config), decay=0.75, accelerator=accelerator)
    other.load_state_dict(teacher.state_dict())
    assert set(teacher.state_dict()) == {name for name, _ in model.named_parameters()}
    for name, tensor in other.state_dict().items():
        assert torch.equal(tensor, teacher.state_dict()[name])


def test_teacher_choice_and_its_one_line_refusals(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = PSDCLIPModel(micro_config(distill_alpha_max=0.0))
    assert build_teacher(model.config, model, accelerator, tmp_path, num_pairs=8) is None  # CLIP: no teacher
    model.config.distill_alpha_max = 0.5
    model.config.distill_teacher = "previous_epoch"
    with pytest.raises(ValueError, match="streamed data"):
        build_teacher(model.config, model, accelerator, tmp_path, num_pairs=None)
    model.config.distill_teacher = "ema"
    assert isinstance(build_teacher(model.config, model, accelerator, tmp_path, num_pairs=None), EMATeacher)
    model.config.distill_teacher = "uniform"
    assert isinstance(build_teacher(model.config, model, accelerator, tmp_path, num_pairs=None), UniformTeacher)
    model.config.distill_teacher = "start"
    assert isinstance(build_teacher(model.config, model, accelerator, tmp_path, num_pairs=None), StartTeacher)
    with pytest.raises(ValueError, match="distill_teacher"):
        micro_config(distill_teacher="same_step")


def test_micro_batch_teachers_concatenate():
    a = TeacherEmbeddings(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([True, False]))
    b = TeacherEmbeddings(torch.ones(1, 3), torch.ones(1, 3))
    joined = TeacherEmbeddings.concatenate([a, b])
    assert joined.image.shape == (3, 3) and joined.mask.tolist() == [True, False, True]
    assert TeacherEmbeddings.concatenate([a, None]) is None


def test_the_registry_builds_exactly_the_teachers_the_config_and_the_options_offer():
    assert sorted(TEACHERS) == sorted(configuration_psdclip.DISTILL_TEACHERS) == sorted(options.DISTILL_TEACHERS)
    for name, teacher in TEACHERS.items():
        assert issubclass(teacher, Teacher) and teacher.name == name
        config = micro_config(distill_teacher=name)
        assert active_teacher_class(config) is teacher
        assert set(teacher.card_settings) <= set(training_metadata(config))
    assert active_teacher_class(micro_config(distill_teacher="ema", distill_alpha_max=0.0)) is None


def test_start_teacher_stays_the_starting_model_and_keeps_it_across_a_resume():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = PSDCLIPModel(micro_config(distill_teacher="start"))
    teacher = build_teacher(model.config, model, accelerator, None, num_pairs=None)
    start = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    teacher.after_optimizer_step(model)
    assert all(torch.equal(parameter, start[name]) for name, parameter in teacher.model.named_parameters())
    resumed = build_teacher(model.config, model, accelerator, None, num_pairs=None)  # built from the moved student
    resumed.load_state_dict(teacher.state_dict())
    assert all(torch.equal(parameter, start[name]) for name, parameter in resumed.model.named_parameters())
    assert active_teacher_class(model.config).extra_forward_passes == 1


def test_a_new_teacher_is_one_registered_class_and_trains(monkeypatch):
    """What adding a teacher takes: a class registered here (and its name among the config's choices, which remote
    code reads). The loop, the FLOPs estimate and the card learn what they need from the class."""
    calls = []

    class FixedTeacher(Teacher):
        """Embeddings of a fixed random model of the pairs, drawn once: a teacher that knows nothing."""
        name = "fixed"
        extra_forward_passes = 2
        card_settings = ("distill_temperature",)

        def __init__(self, dim):
            self.image, self.text = (torch.nn.functional.normalize(torch.randn(4, dim), dim=-1) for _ in range(2))

        @classmethod
        def build(cls, config, model, accelerator, *, bank_folder, num_pairs, resume):
            return cls(config.projection_dim)

        def embeddings(self, batch):
            return TeacherEmbeddings(self.image, self.text)

        def after_optimizer_step(self, model):
            calls.append("step")

    monkeypatch.setattr(configuration_psdclip, "DISTILL_TEACHERS", (*configuration_psdclip.DISTILL_TEACHERS, "fixed"))
    monkeypatch.setitem(TEACHERS, "fixed", FixedTeacher)
    register_teacher(FixedTeacher)
    torch.manual_seed(0)
    config = micro_config(distill_teacher="fixed", distill_schedule="constant", distill_fraction=1.0)
    model = PSDCLIPModel(config)
    step = TrainingStep.build(model, Accelerator(cpu=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for number in range(2):
        _, parts = step.forward_backward([random_batch(config, 4, seed=number)], (number, 2))
        optimizer.step()
        optimizer.zero_grad()
        step.after_optimizer_step()
        assert parts["teacher_share"] == 1.0 and parts["loss_soft"] > 0
    assert calls == ["step", "step"]
    clip_flops = training_flops_per_sample(model, feature_caching=False, teacher_forward_passes=0)
    assert training_flops_per_sample(model, False, active_teacher_class(config).extra_forward_passes) == \
        clip_flops * 5 / 3
    assert training_metadata(config)["distill_temperature"] == config.distill_temperature
