"""The embedding helper: the model's own embeddings, batched, from PIL images, file paths or a datasets column."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.embedding import ImageTextEmbedder
from modeling_psdclip.model_folder import save_model_folder
from modeling_psdclip.processing import build_processor

README = Path(__file__).resolve().parents[1] / "README.md"
CAPTIONS = ["a red circle", "a blue square", "a green triangle " * 20]  # the last is longer than the context


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    one_layer = {"num_hidden_layers": 1}
    config = PSDCLIPConfig.from_preset("tiny", text_config=one_layer, vision_config=one_layer)
    processor = build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)
    return save_model_folder(PSDCLIPModel(config), processor,
                             tmp_path_factory.mktemp("embedding") / "model")


@pytest.fixture(scope="module")
def embedder(folder):
    return ImageTextEmbedder.from_pretrained(folder, batch_size=2, progress=False)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 72, 3), dtype=np.uint8)) for i in range(5)]


def test_rows_are_the_models_embeddings_in_input_order(embedder):
    inputs = embedder.processor(text=CAPTIONS, images=images(), return_tensors="pt", padding=True, truncation=True,
                                max_length=embedder.context_length)
    with torch.inference_mode():
        expected = embedder.model(**inputs)
    image_rows, text_rows = embedder.encode_images(images()), embedder.encode_texts(CAPTIONS)
    assert image_rows.dtype == text_rows.dtype == torch.float32
    torch.testing.assert_close(image_rows, expected.image_embeds)
    torch.testing.assert_close(text_rows, expected.text_embeds)
    torch.testing.assert_close(image_rows.norm(dim=-1), torch.ones(len(image_rows)))
    assert embedder.encode_images([]).shape == (0, embedder.model.config.projection_dim)


def test_file_paths_and_a_datasets_column_give_the_same_rows(embedder, tmp_path):
    paths = []
    for index, image in enumerate(images()):
        paths.append(tmp_path / f"{index}.png")
        image.save(paths[-1])
    column = datasets.Dataset.from_dict({"image": [str(path) for path in paths]}).cast_column("image", datasets.Image())
    expected = embedder.encode_images(images())
    torch.testing.assert_close(embedder.encode_images(paths), expected)
    torch.testing.assert_close(embedder.encode_images(column["image"]), expected)


def test_transparency_is_laid_over_white_as_in_training(embedder):
    transparent = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    white = Image.new("RGB", (64, 64), "white")
    torch.testing.assert_close(embedder.encode_images([transparent]), embedder.encode_images([white]))


def test_dtype_casts_the_model_and_keeps_float32_rows(folder, embedder):
    half = ImageTextEmbedder.from_pretrained(folder, dtype=torch.bfloat16, progress=False)
    assert half.model.dtype == torch.bfloat16
    rows = half.encode_images(images())
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows, embedder.encode_images(images()), atol=0.03, rtol=0)


def test_readme_search_example_runs(folder, tmp_path, monkeypatch):
    shutil.copytree(folder, tmp_path / "outputs" / "psdclip-tiny")
    (tmp_path / "photos").mkdir()
    for index, image in enumerate(images()):
        image.save(tmp_path / "photos" / f"{index}.png")
    block = README.read_text().split("### Embed images and texts", 1)[1].split("```python\n", 1)[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    scores = scope["caption_embeds"] @ scope["image_embeds"].T
    assert scope["best"].tolist() == scores.argsort(dim=1, descending=True)[:, :3].tolist()


LOAD_THREE = """
import json, pathlib, sys
from modeling_psdclip.embedding import ImageTextEmbedder
results = {}
for name, kwargs in [("untrusted", {}), ("unknown", {}), ("trusted", {"trust_remote_code": True})]:
    results[f"code ran before {name}"] = pathlib.Path(sys.argv[3]).exists()
    try:
        embedder = ImageTextEmbedder.from_pretrained(sys.argv[1 if name != "unknown" else 2], progress=False, **kwargs)
        results[name] = type(embedder.model).__name__
    except ValueError as error:
        results[name] = [type(error).__name__, str(error)]
print(json.dumps(results))
"""


def test_a_model_defined_by_its_folders_code_loads_only_when_trusted_and_never_prompts(folder, tmp_path):
    fork, unknown = tmp_path / "fork", tmp_path / "unknown"
    shutil.copytree(folder, fork)
    proof = tmp_path / "code-ran"
    for name in ("configuration_psdclip.py", "modeling_psdclip.py"):
        code = (fork / name).read_text()
        (fork / name).write_text(f"import pathlib; pathlib.Path({str(proof)!r}).write_text('ran')\n{code}")
    config = json.loads((fork / "config.json").read_text())
    (fork / "config.json").write_text(json.dumps({**config, "model_type": "psdclip-fork"}))
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    # stdin closed: a prompt would print its question and read nothing.
    done = subprocess.run([sys.executable, "-c", LOAD_THREE, str(fork), str(unknown), str(proof)], cwd=README.parent,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[y/N]" not in done.stdout + done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["untrusted"] == ["UntrustedCodeError", (
        f"the model in {fork} is defined by its own Python code, which runs only with trust_remote_code=True: pass "
        "it for models you trust")]
    kind, message = results["unknown"]
    assert kind == "ValueError" and "mystery" in message and "\n" not in message
    assert not results["code ran before trusted"]
    assert results["trusted"] == "PSDCLIPModel" and proof.read_text() == "ran"


def test_a_single_text_image_or_path_is_refused_rather_than_embedded_piece_by_piece(embedder, tmp_path):
    with pytest.raises(TypeError, match=r"encode_texts takes a list of texts, not a single str: pass \[text\]"):
        embedder.encode_texts("a red square")  # once 12 rows, one per character
    path = tmp_path / "one.png"
    images()[0].save(path)
    for single in (images()[0], str(path), path, np.zeros((8, 8, 3), np.uint8)):
        with pytest.raises(TypeError, match=r"encode_images takes a list of images, not a single"):
            embedder.encode_images(single)


def test_numpy_arrays_are_embedded_as_their_images_and_other_inputs_refused_in_one_line(embedder):
    arrays = [np.asarray(image) for image in images()]
    torch.testing.assert_close(embedder.encode_images(arrays), embedder.encode_images(images()))
    for bad, message in [(np.zeros((0, 0, 3), np.uint8), r"numpy array of shape \(0, 0, 3\) and dtype uint8"),
                         (np.full((8, 8, 3), np.nan), r"numpy array of shape \(8, 8, 3\) and dtype float64"),
                         (42, r"cannot embed a int: encode_images takes a list of PIL images, file paths")]:
        with pytest.raises(TypeError, match=message):
            embedder.encode_images([bad])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_a_batch_size_below_one_is_refused_at_construction(folder, batch_size):
    # 0 once failed at the first encode ("range() arg 3 must not be zero"); -1 embedded two texts as zero rows.
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer, got {batch_size!r}$"):
        ImageTextEmbedder.from_pretrained(folder, batch_size=batch_size, progress=False)


def test_a_local_path_with_no_model_is_a_one_line_value_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for path in (tmp_path / "nonexist", str(tmp_path / "nonexist"), "./nonexist", "outputs/nonexist"):
        with pytest.raises(ValueError, match=rf"^no model folder at {path}$"):  # not "Repo id must be in the form"
            ImageTextEmbedder.from_pretrained(path, progress=False)
