"""Small models and inputs shared by the tests."""

import torch

from modeling_psdclip import PSDCLIPConfig


def micro_config(**overrides) -> PSDCLIPConfig:
    """A two-layer, 32-wide model on 16 px images: big enough to exercise every path, fast on CPU."""
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    return PSDCLIPConfig(
        text_config={**tower, "max_position_embeddings": 16, "vocab_size": 100, "bos_token_id": 98,
                     "eos_token_id": 99, "pad_token_id": 99},
        vision_config={**tower, "image_size": 16, "patch_size": 8},
        projection_dim=16,
        **overrides,
    )


def random_batch(config: PSDCLIPConfig, batch_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    text, vision = config.text_config, config.vision_config
    input_ids = torch.randint(0, text.vocab_size - 2, (batch_size, text.max_position_embeddings), generator=generator)
    input_ids[:, 0] = text.bos_token_id
    input_ids[:, -1] = text.eos_token_id
    pixel_values = torch.randn(batch_size, 3, vision.image_size, vision.image_size, generator=generator)
    return {"input_ids": input_ids, "pixel_values": pixel_values}
