"""transformers' Trainer trains PSD-CLIP through the callback, with no PSD code of its own."""

import math

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_psdclip import PSDCLIPModel
from modeling_psdclip.training.trainer import PSDProgressCallback
from tests.support import micro_config, random_batch


class RecordAlpha(TrainerCallback):
    def __init__(self):
        self.alphas = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.alphas.append(model.psd_loss.alpha)


def train(model, output_dir, callbacks):
    batch = random_batch(model.config, 32)
    rows = [{"input_ids": batch["input_ids"][i], "pixel_values": batch["pixel_values"][i]} for i in range(32)]

    def collate(items):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]} | {"return_loss": True}

    args = TrainingArguments(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=8,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=callbacks)
    return trainer.train()


def test_trainer_advances_alpha(tmp_path):
    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config(distill_alpha_max=0.8))
    recorder = RecordAlpha()
    result = train(model, tmp_path, [PSDProgressCallback(), recorder])

    torch.testing.assert_close(torch.tensor(recorder.alphas), torch.tensor([0.0, 0.2, 0.4, 0.6]))
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_trainer_bounds_the_logit_scale_parameter(tmp_path):
    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config())
    with torch.no_grad():
        # Past the bound the forward's clamp stops the gradient: only the callback brings the parameter back.
        model.logit_scale.fill_(math.log(model.config.logit_scale_max) + 1)
    train(model, tmp_path, [PSDProgressCallback()])
    assert model.logit_scale.item() <= math.log(model.config.logit_scale_max) + 1e-6
