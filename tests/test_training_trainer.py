"""transformers' Trainer: a plain one trains PSD-CLIP as CLIP with the logit-scale callback, and PSDTrainer with a
teacher through its TrainingStep, its progress read from Trainer's state."""

import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

from modeling_psdclip import PSDCLIPModel
from modeling_psdclip.data import ImageTextCollator, load_image_text_dataset
from modeling_psdclip.processing import build_processor
from modeling_psdclip.training.trainer import LogitScaleCallback, PSDTrainer
from tests.support import micro_config, random_batch


def train(model, output_dir, callbacks, trainer_class=Trainer, loss_outputs=None):
    """Four steps of 8 on random pairs; `loss_outputs` collects PSDTrainer's loss outputs."""
    batch = random_batch(model.config, 32)
    rows = [{"input_ids": batch["input_ids"][i], "pixel_values": batch["pixel_values"][i]} for i in range(32)]

    def collate(items):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]} | {"return_loss": True}

    args = TrainingArguments(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=8,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = trainer_class(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=callbacks)
    if loss_outputs is not None:
        original = trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = original(model, inputs, return_outputs=True)
            loss_outputs.append(outputs)
            return loss

        trainer.compute_loss = compute_loss
    return trainer.train()


def test_trainer_advances_alpha(tmp_path):
    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config(distill_alpha_max=0.8, distill_teacher="ema"))
    outputs = []
    result = train(model, tmp_path, [], trainer_class=PSDTrainer, loss_outputs=outputs)

    torch.testing.assert_close(torch.tensor([out.distill_alpha.item() for out in outputs]),
                               torch.tensor([0.0, 0.2, 0.4, 0.6]))
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_trainer_bounds_the_logit_scale_parameter(tmp_path):
    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config())
    with torch.no_grad():
        # Past the bound the forward's clamp stops the gradient: only the callback brings the parameter back.
        model.logit_scale.fill_(math.log(model.config.logit_scale_max) + 1)
    train(model, tmp_path, [LogitScaleCallback()])
    assert model.logit_scale.item() <= math.log(model.config.logit_scale_max) + 1e-6


@pytest.mark.parametrize("teacher", ["previous_epoch", "ema", "uniform"])
def test_trainer_trains_with_a_teacher(tmp_path, monkeypatch, teacher):
    # The user's path: the package's dataset and collator, whose records Trainer must pass on whole.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.manual_seed(0)
    config = micro_config(vocab_size=None)
    config.distill_alpha_max, config.distill_teacher, config.distill_ema_decay = 0.8, teacher, 0.5
    model = PSDCLIPModel(config)
    data = load_image_text_dataset("synthetic:train", num_samples=24, image_size=16, p_mismatch=0.3)
    collator = ImageTextCollator(build_processor(image_size=16, context_length=16), train=True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=3, per_device_train_batch_size=8,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
                             learning_rate=1e-3)
    soft_losses = []
    trainer = PSDTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
    original = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = original(model, inputs, return_outputs=True)
        soft_losses.append(outputs.loss_soft.item())
        return loss

    trainer.compute_loss = compute_loss
    trainer.train()
    # 3 steps per epoch; the bank teaches from the second epoch, the EMA teacher from the second step (alpha > 0).
    first_distilled = 3 if teacher == "previous_epoch" else 1
    assert soft_losses[:first_distilled] == [0.0] * first_distilled
    assert all(loss > 0 for loss in soft_losses[first_distilled:])
    assert len(soft_losses) == 9
