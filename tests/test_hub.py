"""Saving and loading model folders: round trip, remote code without the package, CLIP checkpoints, bad folders."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, CLIPConfig, CLIPModel

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.hub import MODEL_FOLDER_FILES, ModelFolderError, save_model_folder
from modeling_psdclip.processing import build_processor

CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


def small_tiny_config() -> PSDCLIPConfig:
    one_layer = {"num_hidden_layers": 1}
    return PSDCLIPConfig.from_preset("tiny", text_config=one_layer, vision_config=one_layer)


def red_circle() -> Image.Image:
    canvas = np.full((64, 64, 3), 255, dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    canvas[(yy - 32) ** 2 + (xx - 32) ** 2 < 200] = (220, 20, 20)
    return Image.fromarray(canvas)


def embeddings(model, processor) -> dict:
    inputs = processor(text=CAPTIONS, images=[red_circle()], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model(**inputs)
    return {"image": out.image_embeds.numpy(), "text": out.text_embeds.numpy()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = PSDCLIPModel(small_tiny_config()).eval()
    processor = build_processor(image_size=64, context_length=32)
    folder = save_model_folder(model, processor, tmp_path_factory.mktemp("hub") / "model",
                               metrics={"val/recall@1": 0.25})
    return model, processor, folder


def test_folder_contents(saved):
    _, _, folder = saved
    assert folder.stat().st_mode & 0o777 == 0o755  # readable by every user who may load it
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "psdclip"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"}
    for name in ("model.safetensors", "configuration_psdclip.py", "modeling_psdclip.py", "README.md"):
        assert (folder / name).is_file(), name
    # What a saved folder holds is what a later save recognises as its own and may replace.
    assert all(MODEL_FOLDER_FILES.fullmatch(path.name) for path in folder.iterdir())
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in card and "val/recall@1" in card


def test_round_trip_with_package_installed(saved):
    model, processor, folder = saved
    assert isinstance(AutoConfig.from_pretrained(folder), PSDCLIPConfig)
    loaded = AutoModel.from_pretrained(folder).eval()  # no trust_remote_code: the package registers "psdclip"
    assert type(loaded) is PSDCLIPModel
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(folder)) is PSDCLIPModel
    expected, actual = embeddings(model, processor), embeddings(loaded, AutoProcessor.from_pretrained(folder))
    for key in expected:
        np.testing.assert_array_equal(expected[key], actual[key])


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_psdclip"] = None  # the package must not be importable here
    import json, numpy as np, torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, image_path, out_path = sys.argv[1:]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(text=%r, images=[Image.open(image_path)], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model(**inputs)
    classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    ranked = classifier(image_path, candidate_labels=%r, hypothesis_template="{}")
    json.dump({"module": type(model).__module__, "image": out.image_embeds.tolist(),
               "text": out.text_embeds.tolist(), "ranked": ranked}, open(out_path, "w"))
    """
) % (CAPTIONS, CAPTIONS)


def test_remote_code_load_and_pipeline_without_the_package(saved, tmp_path):
    model, processor, folder = saved
    image_path, out_path = tmp_path / "circle.png", tmp_path / "out.json"
    red_circle().save(image_path)
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    subprocess.run([sys.executable, str(script), str(folder), str(image_path), str(out_path)],
                   cwd=tmp_path, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    result = json.loads(out_path.read_text())

    assert result["module"].startswith("transformers_modules.")
    expected = embeddings(model, processor)
    np.testing.assert_allclose(result["image"], expected["image"], atol=1e-6)
    np.testing.assert_allclose(result["text"], expected["text"], atol=1e-6)
    scores = {item["label"]: item["score"] for item in result["ranked"]}
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    logits = expected["image"] @ expected["text"].T
    assert max(scores, key=scores.get) == CAPTIONS[int(logits.argmax())]


def test_clip_checkpoint_loads_into_psdclip(tmp_path):
    config = small_tiny_config()
    clip = CLIPModel(CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                                projection_dim=config.projection_dim)).eval()
    clip.save_pretrained(tmp_path)
    model = PSDCLIPModel.from_pretrained(tmp_path).eval()
    for name, weight in clip.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, rtol=0, atol=0, msg=name)
    processor = build_processor(image_size=64, context_length=32)
    inputs = processor(text=CAPTIONS, images=[red_circle()], return_tensors="pt", padding=True)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits_per_image, clip(**inputs).logits_per_image)


def corrupt_copy(saved, tmp_path, edit):
    folder = tmp_path / "bad"
    shutil.copytree(saved[2], folder)
    edit(folder / "model.safetensors")
    return folder


def test_truncated_weights_fail_clearly(saved, tmp_path):
    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    with pytest.raises(Exception, match="deserializ|incomplete|truncat"):
        PSDCLIPModel.from_pretrained(corrupt_copy(saved, tmp_path, truncate))


def test_mismatched_shapes_fail_clearly(saved, tmp_path):
    def reshape(path):
        weights = load_file(path)
        weights["visual_projection.weight"] = torch.zeros(8, weights["visual_projection.weight"].shape[1])
        save_file(weights, path, metadata={"format": "pt"})

    with pytest.raises(RuntimeError, match="mismatched|size"):
        PSDCLIPModel.from_pretrained(corrupt_copy(saved, tmp_path, reshape))


def test_missing_weights_fail_instead_of_random_init(saved, tmp_path):
    def drop(path):
        weights = load_file(path)
        del weights["text_projection.weight"]
        save_file(weights, path, metadata={"format": "pt"})

    with pytest.raises(ValueError, match="missing 1 weights.*text_projection.weight"):
        PSDCLIPModel.from_pretrained(corrupt_copy(saved, tmp_path, drop))


def test_card_names_the_hub_repository_and_a_failed_save_leaves_nothing(tmp_path):
    model = PSDCLIPModel(small_tiny_config())
    processor = build_processor(image_size=64, context_length=32)
    folder = save_model_folder(model, processor, tmp_path / "model", repo_id="someone/psdclip-test")
    assert 'model="someone/psdclip-test"' in (folder / "README.md").read_text()

    class BrokenProcessor:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_folder(model, BrokenProcessor(), tmp_path / "other")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_existing_folder_is_replaced_only_when_this_package_wrote_it(tmp_path):
    model = PSDCLIPModel(small_tiny_config())
    processor = build_processor(image_size=64, context_length=32)
    folder = save_model_folder(model, processor, tmp_path / "model")
    (folder / "metrics.json").write_text("{}")  # train.py adds it
    model.config.distill_alpha_max = 0.25
    save_model_folder(model, processor, folder)
    assert json.loads((folder / "config.json").read_text())["distill_alpha_max"] == 0.25
    (tmp_path / "empty").mkdir()
    save_model_folder(model, processor, tmp_path / "empty")

    user_data = tmp_path / "data"
    user_data.mkdir()
    (user_data / "pairs.csv").write_text("image,caption\n")
    notes = tmp_path / "notes"
    shutil.copytree(folder, notes)
    (notes / "notes.txt").write_text("mine")
    other_model = tmp_path / "other"
    shutil.copytree(folder, other_model)
    (other_model / "config.json").write_text(json.dumps({"model_type": "clip"}))
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    for target, message in [(user_data, "holds 'pairs.csv'"), (notes, "holds 'notes.txt'"),
                            (other_model, "not a PSD-CLIP config"), (a_file, "is a file"),
                            (a_file / "model", "Not a directory")]:
        before = sorted(path.name for path in tmp_path.rglob("*"))
        with pytest.raises(ModelFolderError, match=message):
            save_model_folder(model, processor, target)
        assert sorted(path.name for path in tmp_path.rglob("*")) == before, target
    assert (user_data / "pairs.csv").read_text() == "image,caption\n" and (notes / "notes.txt").is_file()
