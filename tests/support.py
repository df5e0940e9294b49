"""Fakes and tiny on-disk fixtures shared by the eval tests (this module has no tests of its own)."""

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


class KeywordEncoder:
    """Perfectly aligned by construction: an image is given as its keyword, a text embeds to the keyword it
    contains (as a whole word), and both get that keyword's one-hot vector."""

    name = "aligned"
    logit_multiplier = 100.0

    def __init__(self, keywords):
        self.index = {keyword: i for i, keyword in enumerate(keywords)}

    def _one_hot(self, keys):
        return torch.nn.functional.one_hot(torch.tensor([self.index[k] for k in keys]), len(self.index)).float()

    def encode_images(self, images):
        return self._one_hot(list(images))

    def encode_texts(self, texts):
        words = [re.findall(r"[\w-]+", text.lower()) for text in texts]
        return self._one_hot([next(w for w in text_words if w in self.index) for text_words in words])


class RandomEncoder:
    """Embeddings unrelated to content: every call draws fresh random unit vectors."""

    name = "random"
    logit_multiplier = 100.0

    def __init__(self, seed=0, dim=32):
        self.generator, self.dim = torch.Generator().manual_seed(seed), dim

    def _draw(self, count):
        return torch.nn.functional.normalize(torch.randn(count, self.dim, generator=self.generator), dim=-1)

    def encode_images(self, images):
        return self._draw(len(images))

    def encode_texts(self, texts):
        return self._draw(len(texts))


class ConstantEncoder(RandomEncoder):
    """Everything embeds to the same vector: every score ties."""

    name = "constant"

    def _draw(self, count):
        return torch.nn.functional.normalize(torch.ones(count, self.dim), dim=-1)


def colour_image(colour, size=16, seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def tiny_processor(image_size=16) -> CLIPProcessor:
    corpus = [f"a photo of a {colour} square" for colour in COLOURS] + ["a drawing of the blue thing"]
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>"))
    model = json.loads(tokenizer.to_str())["model"]
    clip_tokenizer = CLIPTokenizer(vocab=model["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split())
                                                                 for m in model["merges"]])
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer)


def tiny_clip_config(config_class=CLIPConfig, vocab_size=120):
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    return config_class(
        text_config={**tower, "max_position_embeddings": 16, "vocab_size": vocab_size,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tower, "image_size": 16, "patch_size": 8}, projection_dim=16)


def save_tiny_clip(folder: Path, seed=0) -> Path:
    """A random two-layer stock transformers CLIPModel with its processor, saved like any checkpoint."""
    torch.manual_seed(seed)
    processor = tiny_processor()
    CLIPModel(tiny_clip_config(vocab_size=len(processor.tokenizer))).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_psdclip(folder: Path, seed=0) -> Path:
    """The same, as a PSD-CLIP model folder: weights, processor, card and the remote code files."""
    from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
    from modeling_psdclip.model_folder import save_model_folder

    torch.manual_seed(seed)
    processor = tiny_processor()
    model = PSDCLIPModel(tiny_clip_config(PSDCLIPConfig, vocab_size=len(processor.tokenizer)))
    return save_model_folder(model, processor, folder)


def write_imagefolder(root: Path, per_class=3, metadata=False) -> Path:
    """root/<colour>/<i>.png; with `metadata`, a metadata.jsonl giving each image two captions."""
    rows = []
    for colour in COLOURS:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_image(colour, seed=i).save(root / colour / f"{i}.png")
            rows.append({"file_name": f"{colour}/{i}.png", "label": colour, "captions": [f"a {colour} square", f"{colour} number {i}"],
                         "noise": "clean"})
    if metadata:
        (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root
