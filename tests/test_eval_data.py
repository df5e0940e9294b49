"""Each data layout loads from a tiny fixture into the same EvalData shape; bad data is a one-line error."""

import csv
import io
import json
import tarfile

import datasets
import pytest
from tests.support import COLOURS, colour_image, write_imagefolder

from eval import EvalInputError, load_eval_data

CLASS_NAMES = sorted(COLOURS)


def test_imagefolder_classes_come_from_folder_names(tmp_path):
    data = load_eval_data(str(write_imagefolder(tmp_path / "folder")))
    assert data.class_names == CLASS_NAMES
    assert len(data) == 12 and sorted(data.labels.tolist()) == sorted([0, 1, 2, 3] * 3)
    assert data.images[0].size == (16, 16)
    assert data.captions is None


def test_truncated_image_in_a_folder_is_skipped_with_a_note(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "folder")
    first = sorted((root / next(iter(COLOURS))).glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:60])  # a cut-off download
    data = load_eval_data(str(root))
    assert len(data) == 3 * len(COLOURS) - 1 and len(data.labels) == len(data)
    [image.convert("RGB") for image in data.images]  # every image left decodes
    assert "skipped 1 of" in capsys.readouterr().err


def test_imagefolder_with_metadata_has_captions_and_noise(tmp_path):
    data = load_eval_data(str(write_imagefolder(tmp_path / "folder", metadata=True)))
    assert data.class_names == CLASS_NAMES  # from the metadata's "label" strings
    assert data.captions[0] == [f"a {CLASS_NAMES[data.labels[0]]} square", data.captions[0][1]]
    assert len(data.captions[0]) == 2
    assert data.noise == ["clean"] * 12


def test_imagefolder_with_metadata_csv_keeps_caption_lists(tmp_path):
    folder = write_imagefolder(tmp_path / "folder", metadata=True)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").unlink()
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "captions": json.dumps(row["captions"])} for row in rows)
    data = load_eval_data(str(folder))
    assert data.captions == [row["captions"] for row in rows]


def write_clip_benchmark_export(root, task="classification", bad_member=None):
    """CLIP_benchmark's webdataset export: classnames.txt and templates (classification) or dataset_type.txt
    (retrieval), and split/*.tar shards whose images keep their own formats."""
    (root / "test").mkdir(parents=True)
    if task == "classification":
        (root / "classnames.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c} thing.\n")
    else:
        (root / "dataset_type.txt").write_text("retrieval\n")
    with tarfile.open(root / "test" / "0.tar", "w") as shard:
        for i, colour in enumerate(CLASS_NAMES * 2):
            image = io.BytesIO()
            image_format = ("jpg", "JPEG") if i % 2 else ("png", "PNG")
            colour_image(colour, seed=i).save(image, format=image_format[1])
            text = str(CLASS_NAMES.index(colour)) if task == "classification" else f"a {colour} square\n{colour}"
            payload = bad_member if bad_member is not None and i == 3 else text.encode()
            for suffix, payload in ((image_format[0], image.getvalue()),
                                    ("cls" if task == "classification" else "txt", payload)):
                info = tarfile.TarInfo(f"s{i:07d}.{suffix}")
                info.size = len(payload)
                shard.addfile(info, io.BytesIO(payload))
    return root


def test_clip_benchmark_webdataset_classification(tmp_path):
    data = load_eval_data(str(write_clip_benchmark_export(tmp_path / "wds_colours")))
    assert data.class_names == CLASS_NAMES
    assert data.labels.tolist() == [0, 1, 2, 3] * 2
    assert data.templates == ["a photo of a {c}.", "a {c} thing."]
    assert data.name == "wds_colours:test"


def test_clip_benchmark_webdataset_retrieval_captions_one_a_line(tmp_path):
    data = load_eval_data(f"{write_clip_benchmark_export(tmp_path / 'wds', 'retrieval')}:test")
    assert data.captions[1] == [f"a {CLASS_NAMES[1]} square", CLASS_NAMES[1]]
    assert data.class_names is None and data.labels is None and len(data) == 8
    assert [data.images[i].size for i in (0, 1)] == [(16, 16)] * 2  # png and jpg samples side by side


def test_clip_benchmark_webdataset_bad_members_are_one_line_errors(tmp_path):
    with pytest.raises(EvalInputError, match="not UTF-8"):
        load_eval_data(str(write_clip_benchmark_export(tmp_path / "latin1", "retrieval",
                                                       bad_member="é".encode("latin-1"))))
    with pytest.raises(EvalInputError, match="not a class index"):
        load_eval_data(str(write_clip_benchmark_export(tmp_path / "cls", bad_member=b"cat")))


def test_clip_benchmark_webdataset_with_a_truncated_shard_keeps_what_it_can_read(tmp_path, capsys):
    root = write_clip_benchmark_export(tmp_path / "wds_colours")
    shard = next((root / "test").glob("*.tar"))
    whole = load_eval_data(str(root))
    shard.write_bytes(shard.read_bytes()[:6000])  # cut inside a later sample
    data = load_eval_data(str(root))
    assert 0 < len(data) < len(whole) and data.labels.tolist() == whole.labels.tolist()[:len(data)]
    assert "skipped 1 damaged shard part(s)" in capsys.readouterr().err


def test_negative_integer_labels_are_a_one_line_error(tmp_path):
    datasets.Dataset.from_dict({"image": [colour_image("red")] * 2, "label": [0, -1]}) \
        .cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "negative"))
    with pytest.raises(EvalInputError, match="negative labels"):
        load_eval_data(str(tmp_path / "negative"))


def test_save_to_disk_folder_with_splits(tmp_path):
    dataset = datasets.Dataset.from_dict({
        "image": [colour_image(colour) for colour in CLASS_NAMES],
        "caption": [f"a {colour} square" for colour in CLASS_NAMES],
        "label": list(range(4)),
    }).cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=CLASS_NAMES))
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0, 1])}).save_to_disk(str(tmp_path / "saved"))
    data = load_eval_data(str(tmp_path / "saved"))
    assert len(data) == 2 and data.class_names == CLASS_NAMES and data.captions == [["a blue square"], ["a green square"]]
    assert len(load_eval_data(f"{tmp_path / 'saved'}:train")) == 4
    with pytest.raises(EvalInputError, match="no split 'val'"):
        load_eval_data(f"{tmp_path / 'saved'}:val")


def test_a_table_of_image_paths_reads_as_training_reads_it(tmp_path):
    (tmp_path / "images").mkdir()
    for colour in CLASS_NAMES:
        colour_image(colour).save(tmp_path / "images" / f"{colour}.png")
    (tmp_path / "pairs.csv").write_text("filepath,caption,label\n" + "".join(
        f"images/{colour}.png,a {colour} square,{colour}\n" for colour in CLASS_NAMES))
    data = load_eval_data(str(tmp_path / "pairs.csv"))
    assert len(data) == 4 and data.captions[0] == ["a blue square"] and data.class_names == sorted(CLASS_NAMES)
    assert data.images[0].size == (16, 16)


def test_synthetic_source_is_a_thin_adapter():
    pytest.importorskip("modeling_psdclip.data", exc_type=ImportError)
    from modeling_psdclip import data as library_data

    if not hasattr(library_data, "build_synthetic_dataset"):
        pytest.skip("modeling_psdclip.data has no build_synthetic_dataset yet")
    data = load_eval_data("synthetic:test", num_samples=16)
    assert len(data) == 16 and data.labels is not None and len(data.class_names) >= 2
    assert data.captions is not None and data.noise is not None


@pytest.mark.parametrize("source, message", [
    ("/no/such/folder", "no such file or directory: /no/such/folder"),
    ("synthetic:no_such_split", "synthetic"),
])
def test_bad_sources_raise_one_line_errors(source, message):
    with pytest.raises(EvalInputError, match=message) as error:
        load_eval_data(source, num_samples=4)
    assert "\n" not in str(error.value)


def test_missing_columns_and_too_few_classes(tmp_path):
    dataset = datasets.Dataset.from_dict({"text": ["a", "b"]})
    dataset.save_to_disk(str(tmp_path / "no_images"))
    with pytest.raises(EvalInputError, match="no image column"):
        load_eval_data(str(tmp_path / "no_images"))
    (tmp_path / "one_class" / "red").mkdir(parents=True)
    (tmp_path / "flat").mkdir()
    for index in range(2):
        colour_image("red", seed=index).save(tmp_path / "one_class" / "red" / f"{index}.png")
        colour_image("red", seed=index).save(tmp_path / "flat" / f"{index}.png")
    data = load_eval_data(str(tmp_path / "one_class"))
    assert data.class_names == ["red"] and data.labels.tolist() == [0, 0]
    with pytest.raises(EvalInputError, match="zero-shot classification needs at least two classes; data 'one_class' "
                                             "has 1"):
        data.require("zero-shot classification", "labels", "class_names")
    with pytest.raises(EvalInputError, match="needs captions"):
        data.require("retrieval", "captions")
    # Images not in a class folder of their own have no class at all.
    with pytest.raises(EvalInputError, match="needs labels and class_names"):
        load_eval_data(str(tmp_path / "flat")).require("zero-shot classification", "labels", "class_names")
    (tmp_path / "split" / "test").mkdir(parents=True)
    colour_image("red").save(tmp_path / "split" / "test" / "0.png")
    assert load_eval_data(str(tmp_path / "split")).class_names is None
