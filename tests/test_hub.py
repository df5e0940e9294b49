"""Saving and loading model folders: round trip, remote code without the package, CLIP checkpoints, bad folders."""

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, CLIPConfig, CLIPModel
from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from modeling_psdclip import PSDCLIPConfig, PSDCLIPModel
from modeling_psdclip.card import model_title
from modeling_psdclip.model_folder import MODEL_FOLDER_FILES, ModelFolderError, save_model_folder
from modeling_psdclip.processing import build_processor
from modeling_psdclip.tokenization import load_clip_tokenizer
from modeling_psdclip.training.card_fields import downloaded_model_id, training_card_fields
from modeling_psdclip.training.options import parse_options

README = Path(__file__).resolve().parents[1] / "README.md"
CAPTIONS = ["a red circle", "a blue square", "a green triangle"]
LONG_CAPTION = "a red circle next to a blue square " * 8  # longer than the 32-token context


def small_tiny_config() -> PSDCLIPConfig:
    one_layer = {"num_hidden_layers": 1}
    return PSDCLIPConfig.from_preset("tiny", text_config=one_layer, vision_config=one_layer)


def tiny_processor():
    """The processor that fits the tiny preset's input size and context."""
    config = small_tiny_config()
    return build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)


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
    with torch.no_grad():
        model.logit_scale.fill_(math.log(model.config.logit_scale_max) + 0.5)  # where a long run can push it
    model.clamp_logit_scale_()  # what training does after every optimizer step
    processor = tiny_processor()
    # As training's collator does: the fast tokenizer keeps this call's padding and truncation.
    processor.tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=32)
    folder = save_model_folder(model, processor, tmp_path_factory.mktemp("hub") / "model",
                               metrics={"val/recall@1": 0.25})
    return model, processor, folder


def test_folder_contents(saved):
    _, _, folder = saved
    # Readable by every user who may load it.
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()} == \
        {path.name: 0o644 for path in folder.iterdir()}
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
    # The weights come back bit for bit; the forward of weights read from the file may take another CPU kernel path
    # than the same values built in memory (seen with transformers 5.25: 2e-8 apart), so the embeddings are compared
    # to float32 rounding.
    reloaded = loaded.state_dict()
    assert all(torch.equal(tensor, reloaded[name]) for name, tensor in model.state_dict().items())
    expected, actual = embeddings(model, processor), embeddings(loaded, AutoProcessor.from_pretrained(folder))
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-7)


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


def model_inputs(processor) -> dict:
    return processor(text=CAPTIONS, images=[red_circle()], return_tensors="pt", padding=True)


def test_stock_clip_model_gives_the_same_logits(saved):
    model, processor, folder = saved
    clip, loading = CLIPModel.from_pretrained(folder, output_loading_info=True)
    assert not any(loading.values()), loading
    inputs = model_inputs(processor)
    with torch.inference_mode():
        torch.testing.assert_close(clip.eval()(**inputs).logits_per_image, model(**inputs).logits_per_image)


@pytest.mark.parametrize(("tower_class", "input_names", "output"), [
    (CLIPVisionModelWithProjection, ("pixel_values",), "image_embeds"),
    (CLIPTextModelWithProjection, ("input_ids", "attention_mask"), "text_embeds"),
])
def test_transformers_tower_classes_load_the_folder(saved, tower_class, input_names, output):
    model, processor, folder = saved
    tower, loading = tower_class.from_pretrained(folder, output_loading_info=True)
    # The other tower's weights are unexpected here; nothing of this one may be missing or reshaped.
    assert not loading["missing_keys"] and not loading["mismatched_keys"], loading
    inputs = model_inputs(processor)
    with torch.inference_mode():
        alone = tower.eval()(**{name: inputs[name] for name in input_names})
        whole = model(**inputs)
    torch.testing.assert_close(F.normalize(getattr(alone, output), dim=-1), getattr(whole, output))


def test_saved_tokenizer_neither_pads_nor_truncates_nor_warns(saved):
    _, _, folder = saved
    reference = load_clip_tokenizer(context_length=32)
    texts = [*CAPTIONS, LONG_CAPTION]
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    # The tokenizers library applies tokenizer.json as saved: no padding, no truncation.
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert [encoding.ids for encoding in backend.encode_batch(texts)] == reference(texts)["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor = AutoProcessor.from_pretrained(folder)
        padded = processor(text=texts, padding=True, return_tensors="pt")
        fixed = processor(text=texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    assert padded["input_ids"].tolist() == reference(texts, padding=True)["input_ids"]
    assert fixed["input_ids"].tolist() == reference(texts, padding="max_length", truncation=True)["input_ids"]


def readme_block(marker: str) -> str:
    """The first Python block after `marker` in the README, as a user would paste it."""
    after_marker = README.read_text().split(marker, 1)[1]
    return after_marker.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_snippet_runs_without_the_package_a_prompt_or_a_warning(saved, tmp_path):
    shutil.copytree(saved[2], tmp_path / "outputs" / "psdclip-tiny")
    red_circle().save(tmp_path / "scene.png")
    (tmp_path / "snippet.py").write_text(readme_block("<!-- tests/test_hub.py runs the block below"))
    # The package is made unimportable; stdin is closed, so a trust_remote_code prompt would show and time out.
    run_without_package = "import runpy, sys; sys.modules['modeling_psdclip'] = None; runpy.run_path('snippet.py')"
    done = subprocess.run([sys.executable, "-c", run_without_package], cwd=tmp_path, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'label': 'a red circle'" in done.stdout and "[y/N]" not in done.stdout
    assert done.stderr == ""


def test_transformers_4_stops_with_one_line(saved):
    # What the remote code sees under transformers 4.x; its version number is all the check reads.
    script = ("import sys; sys.modules['modeling_psdclip'] = None; import transformers; "
              "transformers.__version__ = '4.57.1'; from transformers import AutoModel; "
              "AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)")
    done = subprocess.run([sys.executable, "-c", script, str(saved[2])], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: PSD-CLIP needs transformers>=5, found 4.57.1: pip install --upgrade 'transformers>=5'")


def test_card_metadata_round_trips_without_local_paths(tmp_path):
    val_file = tmp_path / "private" / "val.csv"
    val_file.parent.mkdir()
    val_file.write_text("image,caption\n")
    # Where `hf download openai/clip-vit-base-patch32` puts the model.
    init_from = tmp_path / "hub" / "models--openai--clip-vit-base-patch32" / "snapshots" / "3d74acf9"
    init_from.mkdir(parents=True)
    options = parse_options(["--data", "someone/captions", "--val-data", str(val_file), "--init-from", str(init_from),
                             "--output-dir", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")])
    description = {"training data": options.data, "training records": 1000, "validation data": str(val_file),
                   "validation records": 10}
    metrics = {"steps": 30, "val/loss": 1.5, "val/image_to_text_R@1": 0.25, "val/text_to_image_R@1": 0.5,
               "skipped_records": {"missing_image": 0}}
    model = PSDCLIPModel(small_tiny_config())
    folder = save_model_folder(model, tiny_processor(), tmp_path / "out",
                               **training_card_fields(options, description, metrics))

    card = ModelCard.load(folder / "README.md")
    assert str(tmp_path) not in card.content and "| init_from | openai/clip-vit-base-patch32 |" in card.text
    assert card.text.lstrip().startswith("# PSD-CLIP fine-tuned from openai/clip-vit-base-patch32\n")
    assert "transformers>=5" in card.text
    data = card.data
    assert (data.license, data.datasets, data.base_model) == ("apache-2.0", ["someone/captions"],
                                                              "openai/clip-vit-base-patch32")
    assert data.model_name == "PSD-CLIP fine-tuned from openai/clip-vit-base-patch32"
    assert {(result.dataset_name, result.metric_type): result.metric_value for result in data.eval_results} == {
        ("val.csv", "loss"): 1.5, ("val.csv", "image_to_text_R@1"): 0.25, ("val.csv", "text_to_image_R@1"): 0.5}
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()


def test_card_of_built_in_data_names_no_dataset_and_a_preset_title(tmp_path):
    options = parse_options(["--output-dir", str(tmp_path / "out")])
    fields = training_card_fields(options, {"training data": "built-in synthetic captioned scenes"},
                                  {"val/loss": 2.0})
    assert (fields["datasets"], fields["base_model"], fields["validation_data"]) == ([], None, "synthetic")
    assert downloaded_model_id(tmp_path) is None
    assert "output_dir" not in fields["training"] and "run_dir" not in fields["training"]
    assert model_title(PSDCLIPConfig.from_preset("vit-b-16")) == "PSD-CLIP vit-b-16"
    assert model_title(small_tiny_config()).startswith("PSD-CLIP ViT/8")


def test_clip_checkpoint_loads_into_psdclip(tmp_path):
    config = small_tiny_config()
    clip = CLIPModel(CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                                projection_dim=config.projection_dim)).eval()
    clip.save_pretrained(tmp_path)
    model = PSDCLIPModel.from_pretrained(tmp_path).eval()
    for name, weight in clip.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, rtol=0, atol=0, msg=name)
    processor = tiny_processor()
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

    with pytest.raises(ValueError, match=r"^checkpoint weight visual_projection.weight has shape \(8, 128\), where the "
                                         r"config makes it \(128, 128\)$"):
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
    processor = tiny_processor()
    folder = save_model_folder(model, processor, tmp_path / "model", repo_id="someone/psdclip-test")
    assert 'model="someone/psdclip-test"' in (folder / "README.md").read_text()

    class BrokenProcessor:
        def save_pretrained(self, folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullDiskModel(PSDCLIPModel):  # how safetensors words a full disk
        def save_pretrained(self, folder, *args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    before = (folder / "model.safetensors").read_bytes()
    for broken_model, broken_processor, reason in [
            (model, BrokenProcessor(), "No space left on device"),
            (FullDiskModel(small_tiny_config()), processor,
             "Error while serializing: I/O error: No space left on device (os error 28)")]:
        for target in (tmp_path / "other", folder):  # a new folder, and one replaced
            with pytest.raises(ModelFolderError) as error:
                save_model_folder(broken_model, broken_processor, target)
            assert str(error.value) == f"cannot write the model folder {target}: {reason}"
            assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert (folder / "model.safetensors").read_bytes() == before


def test_the_current_folder_or_one_above_it_is_never_a_model_folder_to_replace(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for target in (".", "..", str(tmp_path / "work")):
        with pytest.raises(ModelFolderError, match="is the current folder or one above it"):
            save_model_folder(PSDCLIPModel(small_tiny_config()), tiny_processor(), target)
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["work"]


def test_existing_folder_is_replaced_only_when_this_package_wrote_it(tmp_path):
    model = PSDCLIPModel(small_tiny_config())
    processor = build_processor(image_size=64, context_length=32)
    folder = save_model_folder(model, processor, tmp_path / "model")
    (folder / "metrics.json").write_text("{}")  # train.py adds it
    # A user's folder under the name an earlier version moved the old model folder to, before deleting it.
    (tmp_path / ".model.retired").mkdir()
    (tmp_path / ".model.retired" / "thesis.tex").write_text("mine")
    model.config.distill_alpha_max = 0.25
    save_model_folder(model, processor, folder)
    save_model_folder(model, processor, folder)
    assert json.loads((folder / "config.json").read_text())["distill_alpha_max"] == 0.25
    assert (tmp_path / ".model.retired" / "thesis.tex").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".model.retired", "model"]
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
    (other_model / "README.md").write_text("# someone's CLIP model\n")  # a clip export's card would be tagged psdclip
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    for target, message in [(user_data, "holds 'pairs.csv'"), (notes, "holds 'notes.txt'"),
                            (other_model, "neither a PSD-CLIP config nor a CLIP one with a PSD-CLIP card"), (a_file, "is a file"),
                            (a_file / "model", "Not a directory")]:
        before = sorted(path.name for path in tmp_path.rglob("*"))
        with pytest.raises(ModelFolderError, match=message):
            save_model_folder(model, processor, target)
        assert sorted(path.name for path in tmp_path.rglob("*")) == before, target
    assert (user_data / "pairs.csv").read_text() == "image,caption\n" and (notes / "notes.txt").is_file()


def test_saved_folders_name_only_this_packages_code_whatever_the_folder_loaded_named(tmp_path):
    from modeling_psdclip.export import save_clip_folder
    from tests.support import save_micro_folder

    source = save_micro_folder(tmp_path / "source")
    foreign = {"AutoModel": "their_code.TheirModel", "AutoModelForImageClassification": "their_code.TheirHead"}
    for name in ("config.json", "tokenizer_config.json"):
        config = json.loads((source / name).read_text())
        (source / name).write_text(json.dumps({**config, "auto_map": foreign}))
    model, processor = PSDCLIPModel.from_pretrained(source), AutoProcessor.from_pretrained(source)
    psdclip = save_model_folder(model, processor, tmp_path / "psdclip")
    clip = save_clip_folder(model, processor, tmp_path / "clip")
    assert json.loads((psdclip / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_psdclip.PSDCLIPConfig", "AutoModel": "modeling_psdclip.PSDCLIPModel",
        "AutoModelForZeroShotImageClassification": "modeling_psdclip.PSDCLIPModel"}
    assert "auto_map" not in json.loads((clip / "config.json").read_text())
    for path in [*psdclip.glob("*.json"), *clip.glob("*.json")]:
        assert "their_code" not in path.read_text(), path
