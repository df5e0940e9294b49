"""The clip export: a folder that transformers loads as its own CLIPModel, without this package, remote code, a
prompt or a warning, with PSD-CLIP's weights, processor and card."""

import json
import logging
import math
import shutil
import subprocess
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import CLIPModel
from transformers.utils import logging as transformers_logging

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.card import update_model_card
from modeling_psdclip.embedding import ImageTextEmbedder
from modeling_psdclip.export import export_clip_folder, main
from modeling_psdclip.model_folder import ModelFolderError, save_model_folder
from modeling_psdclip.training.options import parse_options
from tests.test_hub import CAPTIONS, embeddings, red_circle, small_tiny_config, tiny_processor

REPO = Path(__file__).resolve().parents[1]
# What `python -m eval` adds to a folder's card; the export must keep it.
EVAL_RESULT = {"task_type": "zero-shot-image-classification", "task_name": "Zero-shot colour",
               "dataset_name": "synthetic:test", "metrics": {"accuracy": 0.75}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A PSD-CLIP folder as train.py and python -m eval leave it, and its clip export."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = small_tiny_config()
    config.distill_teacher, config.distill_alpha_max = "previous_epoch", 0.3  # not the defaults a load would give
    model = PSDCLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(model.config.logit_scale_max) + 0.5)
    model.clamp_logit_scale_()
    psd = save_model_folder(model, tiny_processor(), root / "psdclip", metrics={"val/loss": 1.5},
                            data={"training data": "built-in synthetic captioned scenes", "p_mismatch": 0.4},
                            training={"max_steps": 30}, validation_data="synthetic")
    (psd / "metrics.json").write_text(json.dumps({"steps": 30}))
    update_model_card(psd, **EVAL_RESULT)
    return model, psd, export_clip_folder(psd, root / "psdclip-clip")


def test_export_is_a_clip_folder_with_the_same_weights_processor_and_card(folders):
    _, psd, clip = folders
    config = json.loads((clip / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("clip", ["CLIPModel"])
    assert "auto_map" not in config and not any(key.startswith("distill_") for key in config)
    assert not list(clip.glob("*.py"))
    assert sorted(path.name for path in clip.iterdir()) == [
        "README.md", "config.json", "metrics.json", "model.safetensors", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json"]
    exported, original = load_file(clip / "model.safetensors"), load_file(psd / "model.safetensors")
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json"):
        assert (clip / name).read_bytes() == (psd / name).read_bytes(), name

    card = ModelCard.load(clip / "README.md")
    assert card.data.psdclip["distill_teacher"] == "previous_epoch" and card.data.psdclip["distill_alpha_max"] == 0.3
    assert card.data.psdclip["objective"].startswith("progressive self-distillation")
    assert card.data.psdclip["data"]["p_mismatch"] == 0.4
    assert {(result.task_name, result.metric_type) for result in card.data.eval_results} == {
        ("Validation", "loss"), ("Zero-shot colour", "accuracy")}
    for table in ("| distill_teacher | previous_epoch |", "| p_mismatch | 0.4 |", "| max_steps | 30 |",
                  "| val/loss | 1.5 |", "## Evaluation results", "| Zero-shot colour | synthetic:test | accuracy |"):
        assert table in card.text, table
    assert "trust_remote_code" not in card.text.replace("without `trust_remote_code`", "")
    assert 'pipeline("zero-shot-image-classification", model="psdclip-clip")' in card.text
    # The PSD-CLIP folder's card keeps its own usage.
    assert 'model="psdclip", trust_remote_code=True' in (psd / "README.md").read_text()


WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_psdclip"] = None  # the package must not be importable here
    import json, logging
    import torch
    from PIL import Image
    from transformers import (AutoModel, AutoProcessor, CLIPTextModelWithProjection, CLIPVisionModelWithProjection,
                              pipeline)
    from transformers.utils import logging as transformers_logging

    folder, image_path, out_path = sys.argv[1:]
    captions = %r
    records, stage = [], None

    class Record(logging.Handler):
        def emit(self, record):
            records.append({"stage": stage, "level": record.levelname, "message": record.getMessage()})

    transformers_logging.disable_default_handler()
    transformers_logging.add_handler(Record())
    stage = "auto"
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=captions, images=[Image.open(image_path)], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model(**inputs)
    stage = "pipeline"
    classifier = pipeline("zero-shot-image-classification", model=folder)
    ranked = classifier(image_path, candidate_labels=captions, hypothesis_template="{}")
    stage = "towers"
    vision, vision_info = CLIPVisionModelWithProjection.from_pretrained(folder, output_loading_info=True)
    text, text_info = CLIPTextModelWithProjection.from_pretrained(folder, output_loading_info=True)
    with torch.inference_mode():
        vision_embeds = vision.eval()(pixel_values=inputs["pixel_values"]).image_embeds
        text_embeds = text.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).text_embeds
    json.dump({"classes": [type(model).__module__ + "." + type(model).__name__, type(processor).__name__,
                           type(classifier.model).__name__],
               "image": out.image_embeds.tolist(), "text": out.text_embeds.tolist(), "ranked": ranked,
               "vision": vision_embeds.tolist(), "text_tower": text_embeds.tolist(),
               "loading": {"vision": {key: sorted(map(str, value)) for key, value in vision_info.items()},
                           "text": {key: sorted(map(str, value)) for key, value in text_info.items()}},
               "records": records}, open(out_path, "w"))
    """
) % (CAPTIONS,)


def test_transformers_loads_the_export_without_the_package_a_prompt_or_a_warning(folders, tmp_path):
    model, psd, clip = folders
    image_path, out_path, script = tmp_path / "circle.png", tmp_path / "out.json", tmp_path / "load.py"
    red_circle().save(image_path)
    script.write_text(WITHOUT_PACKAGE)
    # stdin closed: a trust_remote_code prompt would fail instead of waiting.
    done = subprocess.run([sys.executable, str(script), str(clip), str(image_path), str(out_path)], cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "" and "[y/N]" not in done.stdout
    result = json.loads(out_path.read_text())
    assert result["classes"] == ["transformers.models.clip.modeling_clip.CLIPModel", "CLIPProcessor", "CLIPModel"]

    expected = embeddings(model, tiny_processor())
    for key, actual in [("image", result["image"]), ("text", result["text"]),
                        ("image", F.normalize(torch.tensor(result["vision"]), dim=-1)),
                        ("text", F.normalize(torch.tensor(result["text_tower"]), dim=-1))]:
        np.testing.assert_allclose(actual, expected[key], atol=1e-6, rtol=0)
    scores = {item["label"]: item["score"] for item in result["ranked"]}
    with torch.no_grad():
        logits = model.logit_multiplier() * torch.tensor(expected["image"] @ expected["text"].T)
    np.testing.assert_allclose([scores[caption] for caption in CAPTIONS], logits.softmax(-1)[0], atol=1e-6)

    # Nothing is logged but transformers' load report of each tower, which lists the other tower's weights as unused
    # for every two-tower CLIP checkpoint, OpenAI's included; nothing of the tower itself is missing or reshaped.
    towers = {"vision": ("CLIPVisionModelWithProjection", ("vision_model.", "visual_projection.")),
              "text": ("CLIPTextModelWithProjection", ("text_model.", "text_projection."))}
    assert [(record["stage"], record["level"]) for record in result["records"]] == [("towers", "WARNING")] * 2
    for record, (tower, (class_name, own_prefixes)) in zip(result["records"], towers.items()):
        assert f"{class_name} LOAD REPORT" in record["message"]
        loading = result["loading"][tower]
        assert not loading["missing_keys"] and not loading["mismatched_keys"], loading
        assert loading["unexpected_keys"] == sorted(name for name in model.state_dict()
                                                    if not name.startswith(own_prefixes))


@contextmanager
def no_warnings():
    """Fail on any warning: Python's, or logged by transformers (which does not propagate to the root logger)."""
    records = []

    class Record(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Record(level=logging.WARNING)
    transformers_logging.add_handler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    finally:
        transformers_logging.remove_handler(handler)
    assert records == []


def test_image_text_embedder_loads_the_export(folders):
    _, psd, clip = folders
    with no_warnings():
        exported = ImageTextEmbedder.from_pretrained(clip, batch_size=2, device="cpu", progress=False)
    original = ImageTextEmbedder.from_pretrained(psd, batch_size=2, device="cpu", progress=False)
    assert type(exported.model) is CLIPModel
    images = [red_circle(), red_circle().rotate(90)]
    torch.testing.assert_close(exported.encode_images(images), original.encode_images(images), atol=1e-6, rtol=0)
    torch.testing.assert_close(exported.encode_texts(CAPTIONS), original.encode_texts(CAPTIONS), atol=1e-6, rtol=0)
    assert exported.logit_multiplier == pytest.approx(original.logit_multiplier, rel=1e-6)  # exp of a float32


def test_psdclip_model_loads_the_export_for_further_training(folders):
    model, _, clip = folders
    loaded = PSDCLIPModel.from_pretrained(clip)
    assert isinstance(loaded.config, PSDCLIPConfig)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    inputs = tiny_processor()(text=CAPTIONS, images=[red_circle()] * 3, return_tensors="pt", padding=True)
    loss = loaded.train()(**inputs, return_loss=True).loss
    loss.backward()
    assert torch.isfinite(loss) and loaded.logit_scale.grad is not None


def test_command_line_export_names_the_repository_and_replaces_only_its_own_folders(folders, tmp_path):
    _, psd, clip = folders
    target = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "modeling_psdclip.export", str(psd), str(target), "--repo-id",
                           "someone/psdclip-tiny"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"exported {psd} to {target}"
    assert 'model="someone/psdclip-tiny")' in (target / "README.md").read_text()
    # An earlier export is this package's to replace, and so is a PSD-CLIP folder saved over it.
    export_clip_folder(psd, target)
    save_model_folder(PSDCLIPModel.from_pretrained(psd), tiny_processor(), target)
    assert json.loads((target / "config.json").read_text())["model_type"] == "psdclip"

    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match="holds 'notes.txt'"):
        export_clip_folder(psd, user_folder)
    assert [path.name for path in user_folder.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(("src", "dst", "options", "message"), [
    ("clip", "other", [], "holds a 'clip' model, not a PSD-CLIP one (a CLIP folder loads without code already)"),
    ("psd", "psd", [], "is the folder being exported"),
    ("missing", "other", [], "missing is not a model folder: it has no config.json"),
    ("listed", "other", [], "listed is not a model folder: its config.json holds a JSON list, not an object"),
    ("truncated", "other", [], "cannot load the model in"),
    ("psd", ".", [], ". is the current folder or one above it"),
    ("psd", "..", [], ".. is the current folder or one above it"),
    ("psd", "psd/sub", [], "sub is inside"),
    ("psd", "psd's folder", [], "psdclip is inside"),
    ("psd", "other", ["--repo-id", "bad id!!"], "repository id 'bad id!!': Repo id must use alphanumeric chars"),
])
def test_command_line_errors_are_one_line(folders, tmp_path, capsys, monkeypatch, src, dst, options, message):
    named = {"psd": folders[1], "clip": folders[2], "missing": tmp_path / "missing", "other": tmp_path / "other",
             "psd/sub": folders[1] / "sub", "psd's folder": folders[1].parent, ".": ".", "..": "..",
             "listed": tmp_path / "listed", "truncated": tmp_path / "truncated"}
    if src == "listed":
        (tmp_path / "listed").mkdir()
        (tmp_path / "listed" / "config.json").write_text("[1, 2, 3]")
    if src == "truncated":
        weights = shutil.copytree(folders[1], tmp_path / "truncated") / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # an export to it used to fail after writing, leaving hidden folders there
    before = sorted(folders[1].iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main([str(named[src]), str(named[dst]), *options])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("python -m modeling_psdclip.export: error: ")
    assert message in error
    assert not (tmp_path / "other").exists() and sorted(folders[1].iterdir()) == before
    assert not any((tmp_path / "cwd").iterdir()) and not any(path.name.startswith(".") for path in tmp_path.iterdir())


def test_push_to_hub_exports_the_clip_folder_unless_told_otherwise(tmp_path):
    def export_format(*args):
        return parse_options(["--output-dir", str(tmp_path / "out"), *args]).export_format

    assert export_format() == "psdclip"
    assert export_format("--push-to-hub", "someone/psdclip-tiny") == "clip"
    assert export_format("--push-to-hub", "someone/psdclip-tiny", "--export-format", "psdclip") == "psdclip"
    assert export_format("--export-format", "clip") == "clip"
