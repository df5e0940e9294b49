"""Batched reads: what the DataLoader fetches in one call equals the records read one by one, and the built-in
scenes' raw images read as one array equal Pillow's decoding of each."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_psdclip.data import EpochSampler, ImageTextCollator, SampleKey, load_image_text_dataset
from modeling_psdclip.data.raw_images import encode_ppm, same_size_ppm_pixels
from modeling_psdclip.data.render import render_scene
from modeling_psdclip.data.scenes import SceneStyle, sample_scene
from support import tiny_processor


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return load_image_text_dataset("synthetic:train", num_samples=20, image_size=16, p_mismatch=0.3, p_generic=0.2,
                                   cache_dir=tmp_path_factory.mktemp("synthetic"))


def assert_same_records(got: list[dict], expected: list[dict]):
    assert len(got) == len(expected)
    for record, other in zip(got, expected):
        assert np.array_equal(np.asarray(record.pop("image")), np.asarray(other.pop("image")))
        assert record == other


def ppm(pixels: np.ndarray) -> bytes:
    return encode_ppm(Image.fromarray(pixels))


def test_same_size_ppms_read_as_one_array_equal_to_pillows_decoding():
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    blobs = [ppm(image) for image in images]
    pixels = same_size_ppm_pixels(blobs)
    assert pixels.shape == (4, 5, 7, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.stack([np.asarray(Image.open(io.BytesIO(blob))) for blob in blobs]))


@pytest.mark.parametrize("odd_one", [
    ppm(np.zeros((7, 5, 3), np.uint8)),  # the same number of pixels in another shape
    ppm(np.zeros((5, 6, 3), np.uint8)),
    b"P6\n# a comment\n7 5\n255\n" + bytes(105),
    b"P6\n7 5\n65535\n" + bytes(210),
    b"\x89PNG" + bytes(113),
    None,
])
def test_anything_but_same_size_8_bit_ppms_is_left_to_pillow(odd_one):
    assert same_size_ppm_pixels([ppm(np.zeros((5, 7, 3), np.uint8)), odd_one]) is None


def test_built_in_scenes_are_stored_as_ppm_and_read_as_one_array(scenes):
    rng = np.random.default_rng([0, 0, 3])  # the generator of train image 3 with seed 0
    scene = render_scene(sample_scene(rng, SceneStyle()), 16, rng)
    rows = [scenes.source[index] for index in range(4)]
    assert rows[3]["image"]["bytes"] == encode_ppm(scene)
    decoded = scenes.columns.with_batch_decoded_images(rows)
    assert all(isinstance(row["image"], np.ndarray) for row in decoded)
    assert np.array_equal(decoded[3]["image"], np.asarray(scene))


def test_a_batch_read_equals_reading_row_by_row(scenes):
    keys = [SampleKey(1, index) for index in (5, 0, 19, 5, 12)]
    assert_same_records(scenes.__getitems__(keys), [scenes[key] for key in keys])
    assert_same_records(scenes.__getitems__([3, 4]), [scenes[3], scenes[4]])
    with pytest.raises(IndexError):
        scenes.__getitems__([SampleKey(0, 1), SampleKey(0, 20)])


def bad_rows_csv(folder) -> str:
    (folder / "good.png").write_bytes(encode_png("red"))
    (folder / "blue.png").write_bytes(encode_png("blue"))
    (folder / "bad.png").write_bytes(b"not an image")
    rows = ["good.png,a red one", "bad.png,broken", "none.png,gone", "blue.png,a blue one", "good.png,", "blue.png,b"]
    (folder / "pairs.csv").write_text("filepath,caption\n" + "\n".join(rows) + "\n")
    return str(folder / "pairs.csv")


def encode_png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_rows_are_replaced_and_counted_alike_in_a_batch_read(tmp_path):
    dataset = load_image_text_dataset(bad_rows_csv(tmp_path))
    keys = [SampleKey(2, index) for index in range(len(dataset))] + [SampleKey(2, 1)]
    records = dataset.__getitems__(keys)
    assert_same_records(records, [dataset[key] for key in keys])
    assert [record["skipped"] for record in records[:3]] == [{}, {"corrupt_image": 1}, {"missing_image": 1}]


class FailsOnBatches:
    """A source whose batch read fails, as a batch with one row that cannot be converted to Python does."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        if isinstance(index, list):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return self.source[index]


class CountsReads:
    """A source that counts its batch reads and its row reads."""

    def __init__(self, source):
        self.source, self.reads = source, {"batch": 0, "row": 0}

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.reads["batch" if isinstance(index, list) else "row"] += 1
        return self.source[index]


def test_a_batch_that_cannot_be_read_at_once_is_read_row_by_row(scenes):
    keys = [SampleKey(0, index) for index in range(6)]
    scenes.source, source = CountsReads(scenes.source), scenes.source
    try:  # the fallback is for a failing batch only: a readable one is one read, however many rows it has
        expected = scenes.__getitems__(keys)
        assert scenes.source.reads == {"batch": 1, "row": 0}
    finally:
        scenes.source = source
    scenes.source, source = FailsOnBatches(scenes.source), scenes.source
    try:
        assert_same_records(scenes.__getitems__(keys), expected)
    finally:
        scenes.source = source


def test_loader_batches_equal_the_records_collated_one_by_one(scenes):
    collator = ImageTextCollator(tiny_processor(12), seed=5, crop_scale=(0.5, 1.0), context_length=8)
    sampler = EpochSampler(len(scenes), seed=5)
    sampler.set_epoch(1)
    loader = torch.utils.data.DataLoader(scenes, batch_size=8, sampler=sampler, collate_fn=collator)
    for batch, keys in zip(loader, torch.utils.data.BatchSampler(sampler, 8, drop_last=False)):
        expected = collator([scenes[key] for key in keys])
        assert batch.keys() == expected.keys()
        assert all(torch.equal(batch[name], expected[name]) for name in batch)
