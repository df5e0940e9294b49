"""The PSD objective against CLIP's loss, a hand computation, and its gradient."""

import math

import pytest
import torch
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from modeling_psdclip import PSDCLIPModel, PSDContrastiveLoss
from tests.helpers import micro_config, random_batch


@pytest.mark.parametrize("overrides", [{"distill_alpha_max": 0.0}, {"distill_fraction": 0.0}])
def test_equals_clip_loss_without_distillation(overrides):
    torch.manual_seed(0)
    config = micro_config(distill_schedule="constant", **overrides)
    model = PSDCLIPModel(config)
    clip = CLIPModel(config)
    clip.load_state_dict(model.state_dict())
    batch = random_batch(config, 8)

    ours = model(**batch, return_loss=True)
    theirs = clip(**batch, return_loss=True)

    torch.testing.assert_close(ours.loss, theirs.loss)
    torch.testing.assert_close(ours.loss, image_text_contrastive_loss(theirs.logits_per_text))
    assert ours.loss_soft.item() == 0.0


def test_soft_target_loss_by_hand():
    # Three orthonormal images; captions chosen so the logits are not symmetric.
    images = torch.eye(3)
    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [0.3, 0.0, 1.0]]), dim=-1)
    scale, alpha, tau = 2.0, 0.4, 0.5
    loss_fn = PSDContrastiveLoss(micro_config(distill_alpha_max=alpha, distill_fraction=1.0,
                                              distill_schedule="constant", distill_temperature=tau))
    out = loss_fn(images, texts, torch.tensor(scale))

    logits = [[scale * sum(images[i][k].item() * texts[j][k].item() for k in range(3)) for j in range(3)]
              for i in range(3)]

    def soft_ce(row, own):
        log_norm = math.log(sum(math.exp(z) for z in row))
        teacher_norm = sum(math.exp(z / tau) for z in row)
        target = [(1 - alpha) * (k == own) + alpha * math.exp(z / tau) / teacher_norm for k, z in enumerate(row)]
        return -sum(t * (z - log_norm) for t, z in zip(target, row))

    columns = [[logits[i][j] for i in range(3)] for j in range(3)]
    expected = 0.5 * (sum(soft_ce(logits[i], i) for i in range(3)) / 3 + sum(soft_ce(columns[j], j) for j in range(3)) / 3)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert (out.loss_hard + out.loss_soft).item() == pytest.approx(expected, rel=1e-6)
    assert out.distill_alpha.item() == pytest.approx(alpha)


def test_no_gradient_reaches_the_teacher():
    # d/dz CE(z, y) = softmax(z) - y exactly when the target y is a constant.
    loss_fn = PSDContrastiveLoss(micro_config(distill_temperature=0.7))
    logits = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(5)
    weights = torch.tensor([0.3, 0.0, 0.3, 0.3, 0.0], dtype=torch.float64)
    loss_hard, loss_soft, _, _ = loss_fn.one_direction(logits, labels, weights)
    (loss_hard + loss_soft).backward()

    with torch.no_grad():
        teacher = torch.softmax(logits / 0.7, dim=-1)
        target = (1 - weights[:, None]) * torch.eye(5, dtype=torch.float64) + weights[:, None] * teacher
        expected = (torch.softmax(logits, dim=-1) - target) / 5
    torch.testing.assert_close(logits.grad, expected)


def test_progressive_alpha_and_reproducible_draw():
    loss_fn = PSDContrastiveLoss(micro_config(distill_alpha_max=0.6, distill_fraction=0.25))
    loss_fn.set_progress(step=0, total_steps=100)
    assert loss_fn.alpha == 0.0
    loss_fn.set_progress(step=50, total_steps=100)
    assert loss_fn.alpha == pytest.approx(0.3)
    loss_fn.set_progress(step=150, total_steps=100)
    assert loss_fn.alpha == pytest.approx(0.6)

    loss_fn.set_progress(step=7, total_steps=100)
    images, texts = loss_fn.draw_distilled_rows(40, torch.device("cpu"))
    assert images.sum() == texts.sum() == 10
    assert not torch.equal(images, texts)
    again = loss_fn.draw_distilled_rows(40, torch.device("cpu"))
    assert torch.equal(images, again[0]) and torch.equal(texts, again[1])
    loss_fn.set_progress(step=8, total_steps=100)
    assert not torch.equal(images, loss_fn.draw_distilled_rows(40, torch.device("cpu"))[0])


def test_constant_schedule_and_diagnostics():
    loss_fn = PSDContrastiveLoss(micro_config(distill_alpha_max=0.2, distill_schedule="constant"))
    assert loss_fn.alpha == 0.2
    # Identical embeddings: every teacher row is uniform over the batch.
    embeds = torch.nn.functional.normalize(torch.ones(6, 4), dim=-1)
    out = loss_fn(embeds, embeds, torch.tensor(10.0))
    assert out.teacher_entropy.item() == pytest.approx(math.log(6), rel=1e-5)
    assert out.paired_probability.item() == pytest.approx(1 / 6, rel=1e-5)
    assert out.logit_scale.item() == 10.0 and not out.logit_scale.requires_grad
