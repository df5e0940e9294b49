"""The contracts transformers' common model tests (`ModelTesterMixin`) hold a model to, checked on a micro
PSDCLIPModel: tuple outputs, loading info, save/load round trip, eager/SDPA switching, gradient checkpointing,
torch.export, init on the meta device, batching equivalence. A transformers release that changes one is caught here.
"""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modeling_psdclip import PSDCLIPModel
from tests.support import micro_config, random_batch


@pytest.fixture
def model() -> PSDCLIPModel:
    torch.manual_seed(0)
    return PSDCLIPModel(micro_config(distill_alpha_max=0.6, distill_schedule="constant")).eval()


def padded_batch(model: PSDCLIPModel, batch_size: int = 3) -> dict:
    """A batch whose second caption is shorter than the others, so the attention mask matters."""
    batch = random_batch(model.config, batch_size)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["attention_mask"][1, 10:] = 0
    batch["input_ids"][1, 9] = model.config.text_config.eos_token_id
    return batch


def teacher(batch_size: int, dim: int, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    embeds = [F.normalize(torch.randn(batch_size, dim, generator=generator), dim=-1) for _ in range(2)]
    return {"teacher_image_embeds": embeds[0], "teacher_text_embeds": embeds[1],
            "teacher_mask": torch.tensor([True, False, True][:batch_size])}


def assert_same(actual, expected, atol=0.0, rtol=0.0, where="output"):
    """Nested tuples of tensors (what `to_tuple` gives) equal element by element."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, atol, rtol, f"{where}[{index}]")
    else:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=where)


@pytest.mark.parametrize("loss_kwargs", [{}, {"return_loss": True}, "with_teacher"],
                         ids=["no_loss", "loss", "loss_with_teacher"])
def test_return_dict_false_gives_the_outputs_tuple(model, loss_kwargs):
    batch = padded_batch(model)
    if loss_kwargs == "with_teacher":
        loss_kwargs = {"return_loss": True, **teacher(3, model.config.projection_dim)}
    with torch.no_grad():
        as_dict = model(**batch, **loss_kwargs)
        as_tuple = model(**batch, **loss_kwargs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**batch, **loss_kwargs)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    assert_same(as_tuple, as_dict.to_tuple())
    assert_same(from_config, as_dict.to_tuple())
    if "return_loss" in loss_kwargs:
        assert as_tuple[0] is not None and torch.equal(as_tuple[0], as_dict.loss)
        if "teacher_mask" in loss_kwargs:
            assert as_dict.loss_soft > 0
    else:
        assert torch.equal(as_tuple[0], as_dict.logits_per_image)  # the Nones are left out, as in CLIPModel


def test_save_and_load_give_the_same_outputs_and_loading_info(model, tmp_path):
    batch = padded_batch(model)
    model.save_pretrained(tmp_path / "saved")
    loaded, info = PSDCLIPModel.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(loaded.config) is type(model.config) and loaded.config.distill_alpha_max == 0.6
    with torch.no_grad():
        assert_same(loaded.eval()(**batch, return_loss=True).to_tuple(), model(**batch, return_loss=True).to_tuple())

    # A weight gone from the checkpoint: refused, unless the caller asks for the loading info to inspect it.
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, tmp_path / "saved" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing 1 weights of PSDCLIPModel, e.g. visual_projection.weight"):
        PSDCLIPModel.from_pretrained(tmp_path / "saved")
    partial, info = PSDCLIPModel.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert isinstance(partial, PSDCLIPModel) and set(info["missing_keys"]) == {"visual_projection.weight"}


def test_eager_and_sdpa_attention_give_the_same_outputs(model, tmp_path):
    batch = padded_batch(model)
    model.save_pretrained(tmp_path / "saved")
    outputs = {}
    for implementation in ("eager", "sdpa"):
        loaded = PSDCLIPModel.from_pretrained(tmp_path / "saved", attn_implementation=implementation).eval()
        assert loaded.config._attn_implementation == implementation
        assert loaded.vision_model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = loaded(**batch, return_loss=True).to_tuple()
    assert_same(outputs["sdpa"], outputs["eager"], atol=1e-5, rtol=1e-5)
    # Switched on a loaded model, too.
    model.set_attn_implementation("eager")
    assert model.text_model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert_same(model(**batch, return_loss=True).to_tuple(), outputs["eager"], atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("error::FutureWarning")  # a deprecated checkpointing call path fails
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model):
    batch = {**padded_batch(model), "return_loss": True, **teacher(3, model.config.projection_dim)}
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert model.is_activation_checkpointing == checkpointing
        model.train()
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()
                                        if p.grad is not None}))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys() and len(grads) == len(list(model.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-7, rtol=1e-5, msg=name)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing


def test_torch_export_of_the_forward_gives_the_same_outputs(model):
    batch = padded_batch(model)
    with torch.no_grad():
        exported = torch.export.export(model, args=(), kwargs=batch, strict=False)
        expected = model(**batch)
        actual = exported.module()(**batch)
    for name in ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds", "logit_multiplier"):
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_init_on_the_meta_device_allocates_nothing():
    with torch.device("meta"):
        model = PSDCLIPModel(micro_config())
    assert all(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    model.to_empty(device="cpu")
    assert not any(tensor.is_meta for tensor in model.parameters())


def test_a_batch_gives_each_row_what_the_row_alone_gives(model):
    batch = padded_batch(model, 2)
    with torch.no_grad():
        together = model(**batch)
        alone = [model(**{key: value[row:row + 1] for key, value in batch.items()}) for row in range(2)]
    for row, single in enumerate(alone):
        for name in ("image_embeds", "text_embeds"):
            torch.testing.assert_close(getattr(together, name)[row:row + 1], getattr(single, name), atol=1e-6,
                                       rtol=1e-5, msg=f"{name}[{row}]")
        for tower in ("text_model_output", "vision_model_output"):
            for name in ("last_hidden_state", "pooler_output"):
                torch.testing.assert_close(getattr(getattr(together, tower), name)[row:row + 1],
                                           getattr(getattr(single, tower), name), atol=1e-5, rtol=1e-5,
                                           msg=f"{tower}.{name}[{row}]")
        torch.testing.assert_close(together.logits_per_image[row, row], single.logits_per_image[0, 0], atol=1e-5,
                                   rtol=1e-5)
