"""Config presets and validation."""

import pytest
from transformers import CLIPConfig

from modeling_psdclip import PRESETS, PSDCLIPConfig


def projection_sizes(config) -> tuple[int, int, int]:
    return config.projection_dim, config.text_config.projection_dim, config.vision_config.projection_dim


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    config = PSDCLIPConfig.from_preset(name, distill_alpha_max=0.3)
    assert config.model_type == "psdclip"
    assert config.distill_alpha_max == 0.3
    assert config.vision_config.hidden_size == PRESETS[name]["vision_config"]["hidden_size"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_carry_one_projection_size(name, tmp_path):
    # transformers' tower classes read the sub-configs' sizes, CLIPModel the top-level one.
    size = PRESETS[name]["projection_dim"]
    PSDCLIPConfig.from_preset(name).save_pretrained(tmp_path)
    assert projection_sizes(PSDCLIPConfig.from_pretrained(tmp_path)) == (size, size, size)
    assert projection_sizes(PSDCLIPConfig.from_preset(name, projection_dim=64)) == (64, 64, 64)


def test_stock_clip_config_gets_one_projection_size(tmp_path):
    CLIPConfig(projection_dim=256).save_pretrained(tmp_path)  # its sub-configs keep their default, 512
    assert projection_sizes(PSDCLIPConfig.from_pretrained(tmp_path)) == (256, 256, 256)


def test_presets_use_openai_dimensions():
    config = PSDCLIPConfig.from_preset("vit-b-16")
    assert (config.vision_config.hidden_size, config.vision_config.patch_size, config.projection_dim) == (768, 16, 512)
    assert config.text_config.vocab_size == 49408


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("distill_alpha_max", 1.5),
        ("distill_alpha_max", -0.1),
        ("distill_fraction", 2.0),
        ("distill_fraction", -1.0),
        ("distill_schedule", "cosine"),
        ("distill_temperature", 0.0),
        ("distill_temperature", -1.0),
        ("logit_scale_max", 0.0),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PSDCLIPConfig(**{field: value})


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        PSDCLIPConfig.from_preset("vit-h-14")


def test_round_trip_keeps_distillation_settings(tmp_path):
    config = PSDCLIPConfig.from_preset("tiny", distill_schedule="constant", distill_temperature=2)
    config.save_pretrained(tmp_path)
    loaded = PSDCLIPConfig.from_pretrained(tmp_path)
    assert (loaded.distill_schedule, loaded.distill_temperature) == ("constant", 2)
