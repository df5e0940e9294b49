"""What the tests share (this module has no tests of its own): the one micro model size, random batches, fake
encoders, tiny saved model folders, and small on-disk data (an image folder, OpenMoji SVGs)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.model_folder import save_model_folder
from modeling_psdclip.processing import build_processor

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


def micro_config(config_class=PSDCLIPConfig, *, vocab_size: int | None = 100,
                 special_ids: tuple[int, int] | None = None, **overrides):
    """The tests' one model size: two layers 32 wide, 16 px images in 8 px patches, a 16-token context and 16-d
    embeddings; big enough to exercise every path, fast on CPU.

    `vocab_size`: 100 (what `random_batch` draws from), a small tokenizer's size, or None for CLIP's own vocabulary,
    which the shipped tokenizer (`build_processor`) fits. `special_ids`: the start and end (and padding) tokens,
    by default the last two ids. `config_class`: PSDCLIPConfig, or transformers' CLIPConfig for a stock model;
    `overrides` go to it (e.g. the distillation settings).
    """
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**tower, "max_position_embeddings": 16}
    if vocab_size is not None:
        bos, eos = special_ids or (vocab_size - 2, vocab_size - 1)
        text.update(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return config_class(text_config=text, vision_config={**tower, "image_size": 16, "patch_size": 8},
                        projection_dim=16, **overrides)


def random_batch(config, batch_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    text, vision = config.text_config, config.vision_config
    input_ids = torch.randint(0, text.vocab_size - 2, (batch_size, text.max_position_embeddings), generator=generator)
    input_ids[:, 0] = text.bos_token_id
    input_ids[:, -1] = text.eos_token_id
    pixel_values = torch.randn(batch_size, 3, vision.image_size, vision.image_size, generator=generator)
    return {"input_ids": input_ids, "pixel_values": pixel_values}


def save_micro_folder(folder: Path, seed: int = 0) -> Path:
    """A random micro PSD-CLIP model with CLIP's vocabulary and the shipped processor, saved as runs start from it."""
    torch.manual_seed(seed)
    PSDCLIPModel(micro_config(vocab_size=None)).save_pretrained(folder)
    build_processor(image_size=16, context_length=16).save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path, seed=0) -> Path:
    """A random micro stock transformers CLIPModel with a small trained tokenizer, saved like any checkpoint."""
    torch.manual_seed(seed)
    processor = tiny_processor()
    CLIPModel(micro_config(CLIPConfig, vocab_size=len(processor.tokenizer), special_ids=(0, 1))).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_psdclip(folder: Path, seed=0) -> Path:
    """The same, as a PSD-CLIP model folder: weights, processor, card and the remote code files."""
    torch.manual_seed(seed)
    processor = tiny_processor()
    model = PSDCLIPModel(micro_config(vocab_size=len(processor.tokenizer), special_ids=(0, 1)))
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


EMOJI_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600 ; fully-qualified # 😀 E1.0 grinning face
263A FE0F ; fully-qualified # ☺️ E0.6 smiling face
263A ; unqualified # ☺ E0.6 smiling face
# group: People & Body
# subgroup: hand-fingers-open
1F44B ; fully-qualified # 👋 E0.6 waving hand
1F44B 1F3FB ; fully-qualified # 👋🏻 E1.0 waving hand: light skin tone
# group: Animals & Nature
# subgroup: animal-mammal
1F436 ; fully-qualified # 🐶 E0.6 dog face
1F431 ; fully-qualified # 🐱 E0.6 cat face
1F42D ; fully-qualified # 🐭 E0.6 mouse face
"""
SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="{r}" fill="{fill}"/></svg>'
FILES = {"1F600": ("#fcea2b", 30), "263A": ("#f4aa41", 20), "1F44B": ("#a57939", 25), "1F436": ("#6a462f", 33),
         "1F431": ("#9b9b9a", 15), "1F42D": ("#d0cfce", 10)}  # 263A without the variation selector, as OpenMoji does


def write_svgs(folder):
    """The six emoji of EMOJI_TEST as coloured discs, into `folder` (the `svg_dir` of build_openmoji)."""
    for hexcode, (fill, radius) in FILES.items():
        (folder / f"{hexcode}.svg").write_text(SVG.format(fill=fill, r=radius))
    return folder


class _RefusedByTheRestrictedUnpickler:
    def __reduce__(self):
        return (print, ("this must never run",))


def copy_with_refused_pickle(folder: Path, copy: Path) -> Path:
    """A copy of a saved model folder whose weights are only a pytorch_model.bin holding more than tensors, which
    torch's restricted unpickler refuses."""
    shutil.copytree(folder, copy)
    torch.save({**load_file(copy / "model.safetensors"), "extra": _RefusedByTheRestrictedUnpickler()},
               copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    return copy
