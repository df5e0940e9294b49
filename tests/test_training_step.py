"""The training step in-process: feature caching, what follows an optimizer step, what the loop asks of a teacher."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from modeling_psdclip import PSDCLIPModel
from modeling_psdclip.data import ImageTextCollator, load_image_text_dataset
from modeling_psdclip.processing import build_processor
from modeling_psdclip.training.run import optimizer_step
from modeling_psdclip.training.run_state import TrainState
from modeling_psdclip.training.step import TrainingStep
from modeling_psdclip.training.teachers import EMATeacher
from tests.support import micro_config, random_batch


def test_feature_caching_gives_the_full_batch_loss_and_gradients():
    config = micro_config(vocab_size=None)
    config.distill_alpha_max = 0.7
    batch = random_batch(config, 8)
    torch.manual_seed(1)
    teacher = EMATeacher(PSDCLIPModel(config), decay=0.9, accelerator=Accelerator(cpu=True))  # unlike the student
    results = []
    for accum_steps in (1, 4):
        torch.manual_seed(0)
        model = PSDCLIPModel(config)
        micro_batches = [{k: v.chunk(accum_steps)[i] for k, v in batch.items()} for i in range(accum_steps)]
        losses, _ = TrainingStep(model, teacher, Accelerator(cpu=True)).forward_backward(micro_batches, (5, 10))
        results.append((losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full, full_grads), (cached, cached_grads) = results
    assert full.loss_soft.item() > 0
    for part in ("loss", "loss_hard", "loss_soft", "teacher_entropy", "paired_probability", "teacher_agreement"):
        torch.testing.assert_close(getattr(cached, part), getattr(full, part))
    assert full_grads.keys() == cached_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_optimizer_step_bounds_the_logit_scale_parameter():
    model = PSDCLIPModel(micro_config(vocab_size=None))
    bound = math.log(model.config.logit_scale_max)
    with torch.no_grad():
        model.logit_scale.fill_(bound + 1)  # past the bound the forward's clamp gives it no gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    accelerator = Accelerator(cpu=True)
    session = SimpleNamespace(state=TrainState(), options=SimpleNamespace(max_grad_norm=0), model=model,
                              accelerator=accelerator, optimizer=optimizer, step=TrainingStep(model, None, accelerator),
                              scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    model(**random_batch(model.config, 4), return_loss=True).loss.backward()
    optimizer_step(session, loss_is_finite=True)
    assert model.logit_scale.item() == pytest.approx(bound)


def test_readme_plain_loop_trains_with_the_step(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- tests/test_training_step.py runs the block below -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    data = load_image_text_dataset("synthetic:train", num_samples=8, image_size=48)
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=ImageTextCollator(
        build_processor(image_size=48, context_length=24)))
    namespace = {"torch": torch, "loader": loader, "total_steps": 2}
    exec(compile(code, "README.md", "exec"), namespace)
    step, parts = namespace["step"], namespace["parts"]
    assert isinstance(step.teacher, EMATeacher) and math.isfinite(parts["loss"])
    assert namespace["model"].logit_scale.item() <= math.log(namespace["model"].config.logit_scale_max)


def test_a_loop_asks_the_step_what_its_teacher_needs(tmp_path):
    accelerator = Accelerator(cpu=True)
    clip = TrainingStep.build(PSDCLIPModel(micro_config(distill_alpha_max=0.0)), accelerator)
    ema = TrainingStep.build(PSDCLIPModel(micro_config(distill_teacher="ema")), accelerator)
    bank = TrainingStep.build(PSDCLIPModel(micro_config(distill_teacher="previous_epoch")), accelerator,
                              bank_folder=tmp_path, num_pairs=8)
    assert [step.needs_checkpoint_at_epoch_end for step in (clip, ema, bank)] == [False, False, True]
    assert [step.first_taught_epoch for step in (clip, ema, bank)] == [None, 0, 1]
    with pytest.raises(ValueError, match="needs a folder"):
        TrainingStep.build(PSDCLIPModel(micro_config(distill_teacher="previous_epoch")), accelerator, num_pairs=8)
