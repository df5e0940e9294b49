"""`python -m eval` end to end on a saved stock CLIPModel folder, exit code 2 on bad input, and the card."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from tests.support import COLOURS, colour_image, save_tiny_clip, save_tiny_psdclip, write_imagefolder

from eval.__main__ import main
from modeling_psdclip.card import update_model_card


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"model": save_tiny_clip(root / "clip-a", seed=0), "other": save_tiny_clip(root / "clip-b", seed=1),
            "data": write_imagefolder(root / "colours", metadata=True), "root": root}


def run(workspace, *arguments):
    return main([*arguments, "--output", str(workspace["root"] / "out"), "--batch-size", "5"])


@pytest.mark.parametrize("task, extra", [
    ("zeroshot", ["--templates", "simple"]),
    ("retrieval", []),
    ("noisy-pairs", ["--pool-size", "4"]),
])
def test_tasks_write_json_markdown_and_the_card(workspace, task, extra):
    assert run(workspace, task, "--model", str(workspace["model"]), "--data", str(workspace["data"]), *extra) == 0
    results = json.loads((workspace["root"] / "out" / f"{task}.json").read_text())
    assert "clip-a" in results
    assert (workspace["root"] / "out" / f"{task}.md").read_text().startswith(f"# {task}\n\n| model | data |")
    assert "model-index" in (workspace["model"] / "README.md").read_text()


def test_noisy_pairs_writes_the_suspects_csv_and_curve(workspace):
    assert run(workspace, "noisy-pairs", "--model", str(workspace["model"]), "--data", str(workspace["data"])) == 0
    out = workspace["root"] / "out"
    assert (out / "noisy-pairs-clip-a.csv").read_text().startswith("rank,index,paired_probability,caption,noise")
    assert (out / "noisy-pairs-clip-a.png").stat().st_size > 0


def test_robustness_over_two_models_and_linear_probe(workspace):
    data = str(workspace["data"])
    assert run(workspace, "robustness", "--model", str(workspace["model"]), "--model", str(workspace["other"]),
               "--data", data, "--shifted", data, "--templates", "simple", "--no-card") == 0
    results = json.loads((workspace["root"] / "out" / "robustness.json").read_text())
    assert [entry["model"] for entry in results["models"]] == ["clip-a", "clip-b"]
    assert (workspace["root"] / "out" / "robustness.png").is_file()
    assert run(workspace, "linear-probe", "--model", str(workspace["model"]), "--data", data, "--test-data", data,
               "--val-data", data, "--no-card") == 0


def test_classnames_file_names_integer_labels(workspace, tmp_path):
    colours = sorted(COLOURS)
    datasets.Dataset.from_dict({"image": [colour_image(colour) for colour in colours], "label": [0, 1, 2, 3]}) \
        .cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "integer-labels"))
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(colours) + "\n")
    data = ["--data", str(tmp_path / "integer-labels"), "--templates", "simple", "--no-card"]
    assert run(workspace, "zeroshot", "--model", str(workspace["model"]), *data, "--classnames", str(names)) == 0
    assert run(workspace, "zeroshot", "--model", str(workspace["model"]), *data) == 2  # no names at all
    names.write_text("red\ngreen\n")
    assert run(workspace, "zeroshot", "--model", str(workspace["model"]), *data, "--classnames", str(names)) == 2


@pytest.mark.parametrize("arguments", [
    ["no-such-task"],
    ["zeroshot", "--data", "synthetic:test"],  # no --model
    ["zeroshot", "--model", "/no/such/model", "--data", "synthetic:test"],
    ["zeroshot", "--model", "{model}", "--data", "/no/such/data"],
    ["retrieval", "--model", "{model}", "--data", "{root}/plain"],  # no captions
    ["zeroshot", "--model", "{model}", "--data", "{data}", "--templates", "/no/such/templates.txt"],
])
def test_bad_input_exits_2_with_one_line(workspace, arguments, capsys):
    if not (workspace["root"] / "plain").exists():
        write_imagefolder(workspace["root"] / "plain")
    arguments = [argument.format(**workspace) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(arguments))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    # The last line, after any progress bars; argparse names the task in its own errors.
    assert re.match(r"python -m eval( [a-z-]+)?: error: ", stderr.strip().splitlines()[-1])
    assert "Traceback" not in stderr


REPO = Path(__file__).resolve().parents[1]
# Prepended to a folder's Python files: leaves a file behind when the folder's code runs.
PROOF_CODE = "import os, pathlib; pathlib.Path(os.environ['PROOF']).write_text('ran')\n"


def run_eval(tmp_path, *arguments):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROOF": str(tmp_path / "code-ran"),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    return subprocess.run([sys.executable, "-m", "eval", *arguments, "--templates", "simple", "--no-card",
                           "--output", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True)


def test_model_folder_code_runs_only_with_trust_remote_code(workspace, tmp_path):
    folder = save_tiny_psdclip(tmp_path / "psdclip")
    for name in ("configuration_psdclip.py", "modeling_psdclip.py"):
        (folder / name).write_text(PROOF_CODE + (folder / name).read_text())
    data = ["--data", str(workspace["data"])]
    # A PSD-CLIP folder loads through the installed package.
    done = run_eval(tmp_path, "zeroshot", "--model", str(folder), *data)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "code-ran").exists()

    # A folder of unknown type whose config points at its own code: refused, then run only when asked for.
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "psdclip-fork"}))
    done = run_eval(tmp_path, "zeroshot", "--model", str(folder), *data)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"python -m eval: error: cannot load model folder {folder}")
    assert "--trust-remote-code" in last
    assert not (tmp_path / "code-ran").exists()
    done = run_eval(tmp_path, "zeroshot", "--model", str(folder), *data, "--trust-remote-code")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "code-ran").exists()


def test_bad_devices_sizes_outputs_and_weights_exit_2_with_one_line(workspace, tmp_path, capsys):
    truncated = tmp_path / "truncated"
    shutil.copytree(workspace["model"], truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:1000])
    (tmp_path / "a-file").write_text("mine")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes([0xB6, 0xFF, 0x00, 0x81]) * 100)
    listed = tmp_path / "listed"
    shutil.copytree(workspace["model"], listed)
    (listed / "config.json").write_text("[1, 2]")
    common = ["zeroshot", "--data", str(workspace["data"]), "--no-card"]
    model, output = ["--model", str(workspace["model"])], ["--output", str(tmp_path / "out")]
    for arguments, message in [
        ([*model, *output, "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
        ([*model, *output, "--batch-size", "-1"], "argument --batch-size: must be a positive integer, got -1"),
        ([*model, *output, "--device", "bogus"], "cannot use the device 'bogus': "),
        (["--model", str(truncated), *output], f"cannot load model folder {truncated}: "),
        ([*model, "--output", str(tmp_path / "a-file")], f"--output {tmp_path / 'a-file'}: cannot create"),
        ([*model, "--output", str(tmp_path / "a-file" / "out")], f"--output {tmp_path / 'a-file' / 'out'}: cannot"),
        ([*model, *output, "--classnames", str(binary)], f"class name file {binary} is not UTF-8 text (byte 0: "),
        ([*model, *output, "--templates", str(binary)], f"template file {binary} is not UTF-8 text (byte 0: "),
        (["--model", str(listed), *output], f"cannot load model folder {listed}: {listed / 'config.json'} is not a "
                                            "model config (a JSON object with a vision_config object)"),
        ([*model, *output, "--num-samples", "-3"], "argument --num-samples: must be a positive integer, got -3"),
        ([*model, *output, "--image-size", "0"], "argument --image-size: must be a positive integer, got 0"),
    ]:
        templates = [] if "--templates" in arguments else ["--templates", "simple"]
        with pytest.raises(SystemExit) as exit_info:
            sys.exit(main([*common, *templates, *arguments]))
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in stderr
        assert re.match(r"python -m eval( zeroshot)?: error: " + re.escape(message), stderr.strip().splitlines()[-1])
    assert (tmp_path / "a-file").read_text() == "mine"


def test_pickled_weights_load_with_the_restricted_unpickler_and_say_so(workspace, tmp_path, capsys):
    from safetensors.torch import load_file

    from eval import EmbeddingModel

    pickled = tmp_path / "pickled"
    shutil.copytree(workspace["model"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    images = [colour_image("red")]
    torch.testing.assert_close(EmbeddingModel.from_pretrained(pickled, progress=False).encode_images(images),
                               EmbeddingModel.from_pretrained(workspace["model"], progress=False).encode_images(images))
    assert capsys.readouterr().err.strip().splitlines()[0] == (
        f"note: {pickled} holds its weights only as pytorch_model.bin, a pickle: loading them with torch's restricted "
        "unpickler (weights_only=True), which loads tensors and refuses anything else")


def test_results_are_written_when_the_card_cannot_be(workspace, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(workspace["model"], folder)
    (folder / "README.md").unlink(missing_ok=True)
    (folder / "README.md").mkdir()  # a card path nothing can be written to, whoever runs the test
    code = main(["retrieval", "--model", str(folder), "--data", str(workspace["data"]), "--output",
                 str(tmp_path / "out"), "--batch-size", "5"])
    assert code == 1
    assert "model" in json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m eval: error: the results are in {tmp_path / 'out' / 'retrieval.json'}, but the card in {folder} "
        "could not be updated: Is a directory (pass --no-card to leave cards alone)")


def test_module_entry_point_exit_code():
    completed = subprocess.run([sys.executable, "-m", "eval", "zeroshot", "--model", "/no/such/model", "--data", "x"],
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip() == "python -m eval: error: model folder /no/such/model not found or has no config.json"


@pytest.mark.parametrize("size", ["-1", "x"])
def test_a_negative_pool_size_is_refused(workspace, size, capsys):
    # -1 was once taken as one pool of all pairs and reported as pool size -1.
    with pytest.raises(SystemExit) as exit_info:
        run(workspace, "noisy-pairs", "--model", str(workspace["model"]), "--data", str(workspace["data"]),
            "--pool-size", size)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m eval noisy-pairs: error: argument --pool-size: must be 0 (all pairs) or a positive integer, "
        f"got {size}")


def test_card_update_keeps_front_matter_and_replaces_same_results(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A model\n\nIntro.\n")
    update_model_card(tmp_path, "zero-shot-image-classification", "Zero-shot", "synthetic:test",
                      {"top1_accuracy": 0.5, "top5_accuracy": 0.9})
    update_model_card(tmp_path, "zero-shot-image-classification", "Zero-shot", "synthetic:test",
                      {"top1_accuracy": 0.75})
    update_model_card(tmp_path, "image-text-retrieval", "Retrieval", "openmoji:test", {"text_to_image_recall@1": 0.25})
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "apache-2.0"
    values = {(result.dataset_name, result.metric_type): result.metric_value for result in card.data.eval_results}
    assert values == {("synthetic:test", "top1_accuracy"): 0.75, ("synthetic:test", "top5_accuracy"): 0.9,
                      ("openmoji:test", "text_to_image_recall@1"): 0.25}
    assert card.text.startswith("# A model\n\nIntro.\n")
    assert card.text.count("## Evaluation results") == 1 and "| Retrieval | openmoji:test |" in card.text


def test_embedding_model_batches_without_changing_results(workspace):
    from tests.support import colour_image

    from eval import EmbeddingModel

    model = EmbeddingModel.from_pretrained(workspace["model"], batch_size=2, progress=False)
    images = [colour_image(colour, seed=i) for i, colour in enumerate(["red", "blue", "green", "red", "yellow"])]
    small_batches = model.encode_images(images)
    model.batch_size = 64
    assert torch.allclose(small_batches, model.encode_images(images), atol=1e-5)
    assert torch.allclose(small_batches.norm(dim=1), torch.ones(5))
    texts = model.encode_texts(["a red square", "a photo of a blue square"])
    assert texts.shape == (2, 16) and model.logit_multiplier == pytest.approx(torch.tensor(2.6592).exp().item(), rel=1e-4)


def test_16_bit_greyscale_images_are_encoded_as_their_8_bit_content(workspace, tmp_path):
    from eval import EmbeddingModel

    model = EmbeddingModel.from_pretrained(workspace["model"], progress=False)
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    eight_bit = Image.fromarray(np.round(ramp / 257).astype(np.uint8)).convert("RGB")
    torch.testing.assert_close(model.encode_images([Image.open(tmp_path / "deep.png")]),
                               model.encode_images([eight_bit]))


def test_an_image_folder_of_one_class_says_zero_shot_needs_two(workspace, capsys):
    folder = workspace["root"] / "one-colour" / "red"
    folder.mkdir(parents=True)
    for index in range(3):
        colour_image("red", seed=index).save(folder / f"{index}.png")
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(run(workspace, "zeroshot", "--model", str(workspace["model"]), "--data", str(folder.parent)))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m eval: error: zero-shot classification needs at least two classes; data 'one-colour' has 1")
