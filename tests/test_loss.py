"""The PSD objective: CLIP's loss without a teacher, a hand computation with one, and its gradient.

For soft targets y that do not depend on the student, d CE(z, y) / dz = softmax(z) - y. The tests check that
gradient against the teacher's targets, and keep the degenerate case (a teacher equal to the student at tau = 1,
whose soft part has zero gradient) as a test so it cannot come back unnoticed.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from modeling_psdclip import PSDCLIPModel, PSDContrastiveLoss
from modeling_psdclip.modeling_psdclip import TrainingProgress, direction_loss, draw_distilled_rows
from modeling_psdclip.training.teachers import UniformTeacher
from tests.support import micro_config, random_batch


def unit(rows) -> torch.Tensor:
    return F.normalize(torch.as_tensor(rows, dtype=torch.float64), dim=-1)


def constant_loss(alpha: float, fraction: float = 1.0, tau: float = 1.0) -> PSDContrastiveLoss:
    return PSDContrastiveLoss(micro_config(distill_alpha_max=alpha, distill_fraction=fraction,
                                           distill_schedule="constant", distill_temperature=tau))


@pytest.mark.parametrize("overrides, with_teacher", [
    ({"distill_alpha_max": 0.0}, True), ({"distill_fraction": 0.0}, True), ({"distill_alpha_max": 0.9}, False)])
def test_equals_clip_loss_without_distillation(overrides, with_teacher):
    torch.manual_seed(0)
    config = micro_config(distill_schedule="constant", **overrides)
    model = PSDCLIPModel(config)
    clip = CLIPModel(config)
    clip.load_state_dict(model.state_dict())
    batch = random_batch(config, 8)
    teacher = {"teacher_image_embeds": unit(torch.randn(8, 16)).float(),
               "teacher_text_embeds": unit(torch.randn(8, 16)).float()} if with_teacher else {}

    ours = model(**batch, return_loss=True, **teacher)
    theirs = clip(**batch, return_loss=True)

    torch.testing.assert_close(ours.loss, theirs.loss)
    torch.testing.assert_close(ours.loss, image_text_contrastive_loss(theirs.logits_per_text))
    assert ours.loss_soft.item() == 0.0


IMAGES = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
TEXTS = [[1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [0.3, 0.0, 1.0]]
TEACHER_IMAGES = [[1.0, 0.2, 0.1], [0.4, 1.0, 0.0], [0.0, 0.6, 1.0]]
TEACHER_TEXTS = [[0.9, 0.0, 0.5], [0.2, 1.0, 0.3], [0.0, 0.3, 1.0]]


def soft_ce_by_hand(row, own, teacher_row, alpha, tau):
    log_norm = math.log(sum(math.exp(z) for z in row))
    teacher_norm = sum(math.exp(t / tau) for t in teacher_row)
    target = [(1 - alpha) * (k == own) + alpha * math.exp(t / tau) / teacher_norm for k, t in enumerate(teacher_row)]
    return -sum(y * (z - log_norm) for y, z in zip(target, row))


def test_soft_target_loss_with_a_teacher_by_hand():
    scale, alpha, tau = 2.0, 0.4, 0.5
    images, texts = unit(IMAGES).tolist(), unit(TEXTS).tolist()
    teacher_images, teacher_texts = unit(TEACHER_IMAGES).tolist(), unit(TEACHER_TEXTS).tolist()
    out = constant_loss(alpha, tau=tau)(unit(IMAGES), unit(TEXTS), torch.tensor(scale, dtype=torch.float64),
                                        unit(TEACHER_IMAGES), unit(TEACHER_TEXTS))

    def logits(a, b):
        return [[scale * sum(x * y for x, y in zip(a[i], b[j])) for j in range(3)] for i in range(3)]

    student, teacher = logits(images, texts), logits(teacher_images, teacher_texts)
    column = lambda matrix, j: [matrix[i][j] for i in range(3)]  # noqa: E731
    image_side = sum(soft_ce_by_hand(student[i], i, teacher[i], alpha, tau) for i in range(3)) / 3
    text_side = sum(soft_ce_by_hand(column(student, j), j, column(teacher, j), alpha, tau) for j in range(3)) / 3
    expected = (image_side + text_side) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert (out.loss_hard + out.loss_soft).item() == pytest.approx(expected, rel=1e-6)
    assert out.distill_alpha.item() == pytest.approx(alpha)
    assert out.teacher_share.item() == 1.0


def test_gradient_is_softmax_minus_the_teacher_targets():
    torch.manual_seed(0)
    logits = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(5, 5, dtype=torch.float64)
    labels = torch.arange(5)
    weights = torch.tensor([0.3, 0.0, 0.3, 0.3, 0.0], dtype=torch.float64)
    everywhere = torch.ones(5, dtype=torch.bool)
    tau = 0.7
    part = direction_loss(logits, teacher_logits, labels, weights, everywhere, everywhere, tau)
    (part.hard + part.soft).backward()

    with torch.no_grad():
        target = (1 - weights[:, None]) * torch.eye(5, dtype=torch.float64) + \
            weights[:, None] * torch.softmax(teacher_logits / tau, dim=-1)
        expected = (torch.softmax(logits, dim=-1) - target) / 5
    torch.testing.assert_close(logits.grad, expected)

    # The soft part alone pulls the student toward the teacher: w * (softmax(z) - softmax(T / tau)), not zero.
    logits.grad = None
    direction_loss(logits, teacher_logits, labels, weights, everywhere, everywhere, tau).soft.backward()
    with torch.no_grad():
        soft_expected = weights[:, None] * (torch.softmax(logits, -1) - torch.softmax(teacher_logits / tau, -1)) / 5
    torch.testing.assert_close(logits.grad, soft_expected)
    assert logits.grad[weights > 0].abs().max() > 1e-2


def test_uniform_teacher_is_label_smoothing_with_its_gradient():
    """The control arm: with every row drawn, the uniform teacher's loss is CLIP's loss with label smoothing alpha
    (torch's own), and its gradient wrt the logits is softmax(z) - ((1 - a) onehot + a / N)."""
    torch.manual_seed(3)
    n, alpha = 6, 0.4
    images, texts = unit(torch.randn(n, 8)), unit(torch.randn(n, 8))
    scale = torch.tensor(7.0, dtype=torch.float64)
    zeros = UniformTeacher(dim=8).embeddings({"input_ids": torch.zeros(n, 3, dtype=torch.long)})
    images_ = images.clone().requires_grad_()
    loss = constant_loss(alpha)(images_, texts, scale, zeros.image.double(), zeros.text.double()).loss
    loss.backward()
    reference_images = images.clone().requires_grad_()
    logits = scale * reference_images @ texts.t()
    labels = torch.arange(n)
    smoothed = 0.5 * (F.cross_entropy(logits, labels, label_smoothing=alpha) +
                      F.cross_entropy(logits.t(), labels, label_smoothing=alpha))
    smoothed.backward()
    # The loss is computed in fp32 (its softmax always is), the reference in fp64.
    torch.testing.assert_close(loss.double(), smoothed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(images_.grad, reference_images.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # d loss / d Z = (softmax(Z) - Y) / (2N) per direction, Y = (1 - a) I + a / N
        target = (1 - alpha) * torch.eye(n, dtype=torch.float64) + alpha / n
        by_hand = ((torch.softmax(logits, 1) - target) + (torch.softmax(logits.t(), 1) - target).t()) / (2 * n)
    torch.testing.assert_close(images_.grad, scale * by_hand @ texts, rtol=1e-4, atol=1e-6)


def embedding_gradients(loss_fn, images, texts, scale, *teacher, part="loss"):
    """Gradients of `part` with respect to the embeddings; `teacher` may end with the training progress."""
    images, texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    getattr(loss_fn(images, texts, scale, *teacher), part).backward()
    return images.grad, texts.grad


def test_a_teacher_equal_to_the_student_distils_nothing():
    # The withdrawn same-step teacher: at tau = 1 the soft part has zero gradient, and the whole gradient is
    # CLIP's scaled by (1 - a) (every row drawn). A lagging teacher gives the soft part a real gradient.
    torch.manual_seed(0)
    images, texts = unit(torch.randn(6, 4)), unit(torch.randn(6, 4))
    scale, alpha = torch.tensor(5.0, dtype=torch.float64), 0.4
    psd, clip = constant_loss(alpha), constant_loss(0.0)

    same = (images, texts)
    soft_grads = embedding_gradients(psd, images, texts, scale, *same, part="loss_soft")
    # The loss is computed in fp32: zero up to rounding.
    assert max(grad.abs().max().item() for grad in soft_grads) < 1e-6
    for ours, theirs in zip(embedding_gradients(psd, images, texts, scale, *same),
                            embedding_gradients(clip, images, texts, scale)):
        torch.testing.assert_close(ours, (1 - alpha) * theirs, atol=1e-6, rtol=1e-5)

    lagging = (unit(images + 0.5 * torch.randn(6, 4)), unit(texts + 0.5 * torch.randn(6, 4)))
    soft_grads = embedding_gradients(psd, images, texts, scale, *lagging, part="loss_soft")
    assert max(grad.abs().max().item() for grad in soft_grads) > 1e-2


def test_pairs_without_a_teacher_keep_one_hot_targets_and_get_no_teacher_mass():
    alpha, tau = 0.5, 1.0
    images, texts = unit(IMAGES), unit(TEXTS)
    teacher_images, teacher_texts = unit(TEACHER_IMAGES), unit(TEACHER_TEXTS)
    scale = torch.tensor(3.0, dtype=torch.float64)
    mask = torch.tensor([True, False, True])
    out = constant_loss(alpha, tau=tau)(images, texts, scale, teacher_images, teacher_texts, mask)

    student = scale * images @ texts.t()
    teacher = (scale * teacher_images @ teacher_texts.t()).masked_fill(~mask, float("-inf"))
    expected = 0
    for logits, teacher_logits in ((student, teacher), (student.t(), teacher.t().masked_fill(~mask, float("-inf")))):
        for row in range(3):
            target = torch.eye(3, dtype=torch.float64)[row]
            if mask[row]:
                target = (1 - alpha) * target + alpha * torch.softmax(teacher_logits[row] / tau, -1)
                assert target[1] == 0  # the pair without a teacher gets no teacher probability
            expected += -(target * torch.log_softmax(logits[row], -1)).sum() / 6
    torch.testing.assert_close(out.loss, expected.float(), atol=1e-6, rtol=1e-6)
    assert out.teacher_share.item() == pytest.approx(2 / 3)

    # No pair with a teacher (the previous-epoch teacher's first epoch): CLIP's loss, finite, diagnostics undefined.
    none = constant_loss(alpha)(images, texts, scale, teacher_images, teacher_texts, torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(none.loss, constant_loss(0.0)(images, texts, scale).loss)
    assert none.teacher_share.item() == 0 and math.isnan(none.teacher_entropy.item())


def test_progressive_alpha_and_reproducible_draw():
    loss_fn = PSDContrastiveLoss(micro_config(distill_alpha_max=0.6, distill_fraction=0.25))
    assert loss_fn.alpha(TrainingProgress(step=0, total_steps=100)) == 0.0
    assert loss_fn.alpha(TrainingProgress(step=50, total_steps=100)) == pytest.approx(0.3)
    assert loss_fn.alpha(TrainingProgress(step=150, total_steps=100)) == pytest.approx(0.6)

    images, texts = draw_distilled_rows(seed=0, step=7, fraction=0.25, num_rows=40, device=torch.device("cpu"))
    assert images.sum() == texts.sum() == 10
    assert not torch.equal(images, texts)
    again = draw_distilled_rows(0, 7, 0.25, 40, torch.device("cpu"))
    assert torch.equal(images, again[0]) and torch.equal(texts, again[1])
    assert not torch.equal(images, draw_distilled_rows(0, 8, 0.25, 40, torch.device("cpu"))[0])


def test_diagnostics():
    loss_fn = constant_loss(0.2, fraction=0.5)
    embeds = unit(torch.randn(6, 4))
    # A teacher whose embeddings are all equal: every teacher row is uniform over the batch.
    flat = unit(torch.ones(6, 4))
    out = loss_fn(embeds, embeds, torch.tensor(10.0), flat, flat)
    assert out.teacher_entropy.item() == pytest.approx(math.log(6), rel=1e-5)
    assert out.paired_probability.item() == pytest.approx(1 / 6, rel=1e-5)
    assert out.logit_multiplier.item() == 10.0 and not out.logit_multiplier.requires_grad
    # The teacher equal to the student agrees on every row's first choice.
    out = loss_fn(embeds, embeds, torch.tensor(10.0), embeds, embeds)
    assert out.teacher_agreement.item() == 1.0


def test_mix_by_doubt_follows_the_teacher_where_it_doubts_the_pair_by_hand_and_in_its_gradient():
    """With `distill_target: mix_by_doubt`, row r's weight is a (1 - q_r), q_r the teacher's probability of r's own pair:
    a pair the teacher is sure of keeps its one-hot target, one it doubts follows the teacher. q_r is part of the
    target (no gradient), so d loss / d z_r is still softmax(z_r) - y_r."""
    scale, alpha, tau = 2.0, 0.6, 0.5
    loss_fn = PSDContrastiveLoss(micro_config(distill_alpha_max=alpha, distill_fraction=1.0, distill_temperature=tau,
                                              distill_schedule="constant", distill_target="mix_by_doubt"))
    images, texts = unit(IMAGES), unit(TEXTS)
    teacher = scale * unit(TEACHER_IMAGES) @ unit(TEACHER_TEXTS).t()
    student = scale * images @ texts.t()
    out = loss_fn(images, texts, torch.tensor(scale, dtype=torch.float64), unit(TEACHER_IMAGES), unit(TEACHER_TEXTS))
    expected = 0.0
    for z, t in ((student, teacher), (student.t(), teacher.t())):
        for row in range(3):
            teacher_row = [math.exp(value / tau) for value in t[row].tolist()]
            doubt = 1 - teacher_row[row] / sum(teacher_row)
            expected += soft_ce_by_hand(z[row].tolist(), row, t[row].tolist(), alpha * doubt, tau) / 6
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    plain = constant_loss(alpha, tau=tau)(images, texts, torch.tensor(scale, dtype=torch.float64), unit(TEACHER_IMAGES),
                                          unit(TEACHER_TEXTS))
    assert out.loss_soft.item() < plain.loss_soft.item()  # every pair's own probability is above 0

    torch.manual_seed(1)
    logits = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    teacher_logits = 3 * torch.randn(5, 5, dtype=torch.float64)
    weights = torch.full((5,), alpha, dtype=torch.float64)
    everywhere = torch.ones(5, dtype=torch.bool)
    part = direction_loss(logits, teacher_logits, torch.arange(5), weights, everywhere, everywhere, tau,
                          "mix_by_doubt")
    (part.hard + part.soft).backward()
    with torch.no_grad():
        teacher_probs = torch.softmax(teacher_logits / tau, dim=-1)
        row_weights = alpha * (1 - teacher_probs.diagonal())
        target = (1 - row_weights[:, None]) * torch.eye(5, dtype=torch.float64) + row_weights[:, None] * teacher_probs
        expected_grad = (torch.softmax(logits, dim=-1) - target) / 5
    torch.testing.assert_close(logits.grad, expected_grad)
    assert row_weights.min() < 0.9 * alpha  # the draw gave some pair enough teacher confidence to matter


def test_reweight_weights_the_one_hot_loss_by_the_teachers_belief_in_the_pair_and_its_gradient():
    """`distill_target: reweight` (NCR/NPC's per-pair weights): no soft target, row r's one-hot loss weighted by
    1 - w_r + w_r q_r, so d loss / d z_r = (1 - w_r + w_r q_r) (softmax(z_r) - onehot(r)); a pair the teacher
    doubts (q near 0) loses a share w_r of its pull, and rows not drawn keep CLIP's."""
    torch.manual_seed(2)
    tau = 0.8
    logits = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    teacher_logits = 3 * torch.randn(5, 5, dtype=torch.float64)
    weights = torch.tensor([0.7, 0.0, 0.7, 0.7, 0.0], dtype=torch.float64)
    everywhere = torch.ones(5, dtype=torch.bool)
    part = direction_loss(logits, teacher_logits, torch.arange(5), weights, everywhere, everywhere, tau, "reweight")
    assert part.soft.item() == 0.0
    (part.hard + part.soft).backward()
    with torch.no_grad():
        belief = torch.softmax(teacher_logits / tau, dim=-1).diagonal()
        row_weights = 1 - weights + weights * belief
        expected = row_weights[:, None] * (torch.softmax(logits, dim=-1) - torch.eye(5, dtype=torch.float64)) / 5
        by_hand = (row_weights * -torch.log_softmax(logits, -1).diagonal()).mean()
    torch.testing.assert_close(part.hard, by_hand)
    torch.testing.assert_close(logits.grad, expected)
    assert row_weights[1] == 1 and row_weights[0] < 1  # undrawn rows are CLIP's; drawn ones lose weight


@pytest.mark.parametrize("target", ["mix", "mix_by_doubt", "reweight"])
def test_the_one_cross_entropy_on_the_built_target_is_the_sum_of_its_parts_in_value_and_gradient(target):
    """The loss takes one soft cross-entropy on the target built as in the formula; its parts, weighted one-hot and
    teacher cross-entropies (how the loss was computed before the target was built), give the same value and the
    same gradient, the teacher's mask and the row draw included."""
    torch.manual_seed(4)
    config = micro_config(distill_alpha_max=0.7, distill_fraction=0.5, distill_target=target)
    images, texts = unit(torch.randn(8, 6)), unit(torch.randn(8, 6))
    teacher = (unit(torch.randn(8, 6)), unit(torch.randn(8, 6)), torch.tensor([True] * 6 + [False] * 2))
    scale = torch.tensor(4.0, dtype=torch.float64)
    loss_fn = PSDContrastiveLoss(config)
    whole = embedding_gradients(loss_fn, images, texts, scale, *teacher, TrainingProgress(6, 10))
    out = loss_fn(images, texts, scale, *teacher, progress=(6, 10))
    torch.testing.assert_close(out.loss, out.loss_hard + out.loss_soft)
    images_, texts_ = images.clone().requires_grad_(), texts.clone().requires_grad_()
    parts = loss_fn(images_, texts_, scale, *teacher, progress=(6, 10))
    (parts.loss_hard + parts.loss_soft).backward()
    for ours, reference in zip(whole, (images_.grad, texts_.grad)):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert out.distill_alpha.item() == pytest.approx(0.42)  # 0.7 * 6 / 10


def test_the_loss_holds_no_progress_and_compiles_without_being_excluded():
    """Progress comes with each call, so one module serves every step, and torch.compile traces it (no
    compiler.disable); compiled and eager agree at two steps."""
    torch.manual_seed(5)
    loss_fn = PSDContrastiveLoss(micro_config(distill_alpha_max=0.6, distill_fraction=0.5))
    images, texts, teacher_images, teacher_texts = (unit(torch.randn(8, 6)).float() for _ in range(4))
    compiled = torch.compile(loss_fn, backend="aot_eager")
    for progress in ((2, 10), (9, 10)):
        eager = loss_fn(images, texts, torch.tensor(3.0), teacher_images, teacher_texts, progress=progress)
        traced = compiled(images, texts, torch.tensor(3.0), teacher_images, teacher_texts, progress=progress)
        torch.testing.assert_close(traced.loss, eager.loss)
        assert traced.distill_alpha.item() == pytest.approx(0.6 * progress[0] / 10)
    assert not hasattr(loss_fn, "step") and not hasattr(loss_fn, "total_steps")
