"""User data through `load_image_text_dataset`: every format, column detection, bad records and one-line errors.

Every fixture is written into tmp_path by the test that uses it.
"""

import collections
import contextlib
import io
import itertools
import json
import os
import signal
import struct
import tarfile
import warnings
import zlib

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling_psdclip.data import DataError, ImageTextDataset, ImageTextStream, SampleKey, load_image_text_dataset
from modeling_psdclip.data.records import BadRecord, decode_caption
from modeling_psdclip.data.sources import split_source


def encoded(colour="red", mode="RGB", fmt="PNG", size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, fmt)
    return buffer.getvalue()


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(encoded(fmt="JPEG" if name.endswith(".jpg") else "PNG"))


def records(dataset) -> list[dict]:
    if isinstance(dataset, ImageTextStream):
        return list(dataset)
    return [dataset[index] for index in range(len(dataset))]


def assert_loads(dataset, captions):
    loaded = records(dataset)
    assert sorted(record["caption"] for record in loaded) == sorted(captions)
    assert all(record["image"].mode == "RGB" and record["image"].size == (12, 10) for record in loaded)
    assert all(record["skipped"] == {} for record in loaded)


def test_imagefolder_with_metadata_jsonl(tmp_path):
    write_images(tmp_path, ["a.png", "b.jpg"])
    lines = [{"file_name": "a.png", "text": "a red image"}, {"file_name": "b.jpg", "text": "another one"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    assert_loads(load_image_text_dataset(str(tmp_path)), ["a red image", "another one"])


def test_imagefolder_with_metadata_csv(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "metadata.csv").write_text("file_name,caption\na.png,first\nb.png,second\n")
    assert_loads(load_image_text_dataset(str(tmp_path)), ["first", "second"])


def test_csv_of_paths_relative_to_its_folder(tmp_path):
    write_images(tmp_path / "images", ["0.jpg", "1.jpg"])
    (tmp_path / "pairs.csv").write_text("filepath,caption\nimages/0.jpg,a cat\nimages/1.jpg,\"a dog, running\"\n")
    assert_loads(load_image_text_dataset(str(tmp_path / "pairs.csv")), ["a cat", "a dog, running"])


def test_tsv_with_other_column_names(tmp_path):
    write_images(tmp_path / "images", ["0.png"])
    (tmp_path / "pairs.tsv").write_text("image_path\ttitle\nimages/0.png\ta title, with a comma\n")
    assert_loads(load_image_text_dataset(str(tmp_path / "pairs.tsv")), ["a title, with a comma"])


def image_table(n: int, **columns) -> datasets.Dataset:
    table = datasets.Dataset.from_dict({"image": [{"bytes": encoded(), "path": None}] * n, **columns})
    return table.cast_column("image", datasets.Image())


def test_parquet_file_and_folder(tmp_path):
    image_table(2, text=["one", "two"]).to_parquet(str(tmp_path / "part-0.parquet"))
    assert_loads(load_image_text_dataset(str(tmp_path / "part-0.parquet")), ["one", "two"])
    assert_loads(load_image_text_dataset(str(tmp_path)), ["one", "two"])


def test_folders_with_splits_keep_them_apart(tmp_path):
    image_table(2, text=["train one", "train two"]).to_parquet(str(tmp_path / "table" / "train-0.parquet"))
    image_table(1, text=["test one"]).to_parquet(str(tmp_path / "table" / "test-0.parquet"))
    assert_loads(load_image_text_dataset(str(tmp_path / "table")), ["train one", "train two"])
    assert_loads(load_image_text_dataset(str(tmp_path / "table"), split="test"), ["test one"])

    for split in ("train", "test"):
        (tmp_path / "shards" / split).mkdir(parents=True)
        with tarfile.open(tmp_path / "shards" / split / "0.tar", "w") as tar:
            add_member(tar, "s0.png", encoded())
            add_member(tar, "s0.txt", f"a {split} picture".encode())
    assert_loads(load_image_text_dataset(str(tmp_path / "shards")), ["a train picture"])
    assert_loads(load_image_text_dataset(str(tmp_path / "shards"), split="test"), ["a test picture"])
    # The same split syntax as evaluation's: SOURCE:SPLIT.
    assert_loads(load_image_text_dataset(f"{tmp_path / 'table'}:test"), ["test one"])
    assert_loads(load_image_text_dataset(f"{tmp_path / 'shards'}:test"), ["a test picture"])


def test_split_syntax_and_the_split_read_when_none_is_named(tmp_path):
    (tmp_path / "a:b").mkdir()  # a name with a colon in it is a name, not a split
    assert split_source(str(tmp_path / "a:b")) == (str(tmp_path / "a:b"), None)
    assert split_source(f"{tmp_path}:validation") == (str(tmp_path), "validation")
    assert split_source("synthetic:val") == ("synthetic", "val")
    assert split_source("someone/pairs:test") == ("someone/pairs", "test")
    assert split_source("./missing:test") == ("./missing:test", None)
    # Unnamed: the reader's default split, or the only split there is.
    datasets.DatasetDict({"validation": image_table(1, caption=["only"])}).save_to_disk(str(tmp_path / "one"))
    assert_loads(load_image_text_dataset(str(tmp_path / "one")), ["only"])
    with pytest.raises(DataError, match="has no split 'train'; it has validation"):
        load_image_text_dataset(f"{tmp_path / 'one'}:train")


def test_save_to_disk_folder_and_named_columns(tmp_path):
    image_table(2, picture_caption=["x", "y"]).rename_column("image", "photo").save_to_disk(str(tmp_path / "saved"))
    dataset = load_image_text_dataset(str(tmp_path / "saved"), image_column="photo", caption_column="picture_caption")
    assert_loads(dataset, ["x", "y"])


def add_member(tar: tarfile.TarFile, name: str, data: bytes):
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def write_shards(folder):
    folder.mkdir()
    with tarfile.open(folder / "shard-000.tar", "w") as tar:
        add_member(tar, "s0.jpg", encoded(fmt="JPEG"))
        add_member(tar, "s0.txt", b"a jpg with a txt")
    with tarfile.open(folder / "shard-001.tar", "w") as tar:
        add_member(tar, "s1.png", encoded())
        add_member(tar, "s1.json", json.dumps({"caption": "a png with a json", "url": "x"}).encode())
    return folder


def test_webdataset_shards_with_jpg_txt_and_png_json(tmp_path):
    shards = write_shards(tmp_path / "shards")
    assert_loads(load_image_text_dataset(str(shards)), ["a jpg with a txt", "a png with a json"])
    assert_loads(load_image_text_dataset(str(shards / "shard-001.tar")), ["a png with a json"])


def test_rewritten_shard_is_read_again_and_an_unreadable_one_alone_is_a_data_error(tmp_path):
    shard = tmp_path / "shard.tar"
    for caption in ("first caption", "a longer second caption"):
        with tarfile.open(shard, "w") as tar:
            add_member(tar, "s0.png", encoded())
            add_member(tar, "s0.txt", caption.encode())
        assert_loads(load_image_text_dataset(str(shard)), [caption])
    shard.write_bytes(b"not a tar archive" * 50)
    assert one_line_error(str(shard)) == f"{str(shard)!r} has no usable record among its first 1 (1 unreadable_record)"


@pytest.mark.parametrize("streaming", [False, True])
def test_damaged_shards_give_their_readable_samples_and_count_the_rest(tmp_path, streaming):
    folder = tmp_path / "shards"
    folder.mkdir()
    for index in range(3):
        with tarfile.open(folder / f"shard-{index}.tar", "w") as tar:
            for sample in range(4):
                add_member(tar, f"s{index}-{sample}.png", encoded())
                add_member(tar, f"s{index}-{sample}.txt", f"shard {index} sample {sample}".encode())
    # Each sample is four 512-byte blocks. Shard 1 is cut inside the third sample's image (tarfile raises), shard 2
    # inside its header (tarfile stops without a word); shard 3 is not a tar at all.
    sample_bytes = 4 * tarfile.BLOCKSIZE
    for index, cut in ((1, 2 * sample_bytes + tarfile.BLOCKSIZE + 30), (2, 2 * sample_bytes + 200)):
        shard = folder / f"shard-{index}.tar"
        shard.write_bytes(shard.read_bytes()[:cut])
    (folder / "shard-3.tar").write_bytes(b"<html>502 Bad Gateway</html>")
    loaded = records(load_image_text_dataset(str(folder), streaming=streaming, shuffle_buffer=None))
    # A map-style dataset puts the next usable record in a bad row's place; a stream drops it.
    assert len(loaded) == 8 + (0 if streaming else 3)
    assert {record["caption"] for record in loaded} == {f"shard 0 sample {sample}" for sample in range(4)} | {
        f"shard {index} sample {sample}" for index in (1, 2) for sample in range(2)}
    counts = collections.Counter()
    for record in loaded:
        counts.update(record["skipped"])
    assert counts == {"unreadable_record": 3}


def test_streaming_yields_the_same_records(tmp_path):
    shards = write_shards(tmp_path / "shards")
    stream = load_image_text_dataset(str(shards), streaming=True, shuffle_buffer=4)
    assert isinstance(stream, ImageTextStream)
    assert_loads(stream, ["a jpg with a txt", "a png with a json"])


def test_synthetic_source(tmp_path):
    dataset = load_image_text_dataset("synthetic:val", num_samples=6, image_size=16, cache_dir=str(tmp_path))
    assert isinstance(dataset, ImageTextDataset) and len(dataset) == 6
    captions = {dataset[SampleKey(epoch, 0)]["caption"] for epoch in range(20)}
    assert len(captions) > 1  # a held-out image has several captions, one drawn per epoch


def test_several_captions_per_image_are_drawn_by_seed_and_key(tmp_path):
    options = ["first caption", "second caption", "third caption"]
    image_table(1, captions=[options]).save_to_disk(str(tmp_path / "saved"))
    dataset = load_image_text_dataset(str(tmp_path / "saved"), seed=1)
    drawn = [dataset[SampleKey(epoch, 0)]["caption"] for epoch in range(30)]
    assert set(drawn) == set(options)
    assert drawn == [dataset[SampleKey(epoch, 0)]["caption"] for epoch in range(30)]
    reseeded = load_image_text_dataset(str(tmp_path / "saved"), seed=2)
    assert drawn != [reseeded[SampleKey(epoch, 0)]["caption"] for epoch in range(30)]


def bad_and_awkward_csv(folder):
    """A CSV with one record of each kind of fault, and images in every mode that must be converted."""
    images = folder / "images"
    images.mkdir(parents=True)
    files = {
        "good.jpg": encoded(fmt="JPEG"),
        "cmyk.jpg": encoded((255, 0, 0, 0), mode="CMYK", fmt="JPEG"),  # pure cyan ink
        "grey.png": encoded(128, mode="L"),
        "rgba.png": encoded((255, 0, 0, 0), mode="RGBA"),
        "palette.png": encoded(3, mode="P"),
        "corrupt.jpg": b"these bytes are not an image",
        "truncated.jpg": encoded(fmt="JPEG", size=(64, 64))[:300],
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    rows = [
        b"images/good.jpg,a good one",
        b"images/cmyk.jpg,a cmyk one",
        b"images/grey.png,a grey one",
        b"images/rgba.png,a transparent one",
        b"images/palette.png,a palette one",
        b"images/good.jpg," + b"very long " * 1000,
        b"images/missing.jpg,a missing one",
        b"images/corrupt.jpg,a corrupt one",
        b"images/truncated.jpg,a truncated one",
        b"images/good.jpg,",
        b'images/good.jpg,"   "',
        b"images/good.jpg,caf\xe9 in latin-1",
    ]
    (folder / "pairs.csv").write_bytes(b"filepath,caption\n" + b"\n".join(rows) + b"\n")
    return folder / "pairs.csv"


EXPECTED_SKIPS = {"missing_image": 1, "corrupt_image": 2, "empty_caption": 2, "undecodable_caption": 1}


def test_bad_records_are_skipped_and_counted_once_per_epoch(tmp_path):
    dataset = load_image_text_dataset(str(bad_and_awkward_csv(tmp_path)))
    loaded = records(dataset)
    assert len(loaded) == len(dataset) == 12  # each bad row is replaced by the next usable one
    counts = collections.Counter()
    for record in loaded:
        counts.update(record["skipped"])
    assert counts == EXPECTED_SKIPS
    assert {record["caption"] for record in loaded if not record["skipped"]} >= {"a cmyk one", "a palette one"}
    assert len(loaded[5]["caption"]) == len(("very long " * 1000).strip())


def test_streaming_skips_bad_records_with_the_same_counts(tmp_path):
    stream = load_image_text_dataset(str(bad_and_awkward_csv(tmp_path)), streaming=True, shuffle_buffer=None)
    loaded = records(stream)
    assert len(loaded) == 12 - sum(EXPECTED_SKIPS.values())
    counts = collections.Counter()
    for record in loaded:
        counts.update(record["skipped"])
    assert counts == EXPECTED_SKIPS


def test_every_image_mode_is_converted_to_rgb(tmp_path):
    dataset = load_image_text_dataset(str(bad_and_awkward_csv(tmp_path)))
    by_caption = {record["caption"]: record["image"] for record in records(dataset)}
    assert all(image.mode == "RGB" for image in by_caption.values())
    assert by_caption["a grey one"].getpixel((0, 0)) == (128, 128, 128)
    assert by_caption["a transparent one"].getpixel((0, 0)) == (255, 255, 255)  # transparent lies over white
    cyan = np.asarray(by_caption["a cmyk one"])[0, 0]
    assert cyan[0] < 60 and cyan[1] > 200 and cyan[2] > 200


def test_16_bit_greyscale_keeps_its_content(tmp_path):
    ramp = np.linspace(0, 65535, 12 * 10).reshape(10, 12).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # what a 16-bit PNG opens as
    (tmp_path / "pairs.csv").write_text("image,caption\ndeep.png,a grey ramp\n")
    image = np.asarray(records(load_image_text_dataset(str(tmp_path / "pairs.csv")))[0]["image"])
    expected = np.round(ramp / 257).astype(np.uint8)
    assert all(np.array_equal(image[..., channel], expected) for channel in range(3))


def test_undecodable_webdataset_caption_is_skipped(tmp_path):
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "0.tar", "w") as tar:
        add_member(tar, "good.png", encoded())
        add_member(tar, "good.txt", b"fine")
        add_member(tar, "bad.png", encoded())
        add_member(tar, "bad.txt", b"\xff\xfe not utf-8")
        add_member(tar, "badjson.png", encoded())
        add_member(tar, "badjson.json", b"{not json")
        # JSON escapes of an emoji decode to a surrogate pair, which is joined; a lone surrogate cannot be.
        add_member(tar, "emoji.png", encoded())
        add_member(tar, "emoji.json", b'{"caption": "a smile \\ud83d\\ude00"}')
        add_member(tar, "lone.png", encoded())
        add_member(tar, "lone.json", b'{"caption": "half a smile \\ud83d"}')
    loaded = records(load_image_text_dataset(str(tmp_path / "shards")))
    counts = collections.Counter()
    for record in loaded:
        counts.update(record["skipped"])
    assert counts == {"undecodable_caption": 3}
    assert {record["caption"] for record in loaded} == {"fine", "a smile \U0001F600"}


@pytest.mark.parametrize("streaming", [False, True])
def test_a_row_that_cannot_be_read_is_skipped_and_counted(tmp_path, streaming):
    # The JSON reader keeps bytes that are not UTF-8; turning the row into Python fails, for this row only.
    write_images(tmp_path, ["0.png", "1.png", "2.png"])
    lines = [json.dumps({"image": f"{index}.png", "caption": f"picture {index}"}).encode() for index in range(3)]
    lines.insert(1, b'{"image": "0.png", "caption": "bad \xff\xfe caption"}')
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    loaded = records(load_image_text_dataset(str(tmp_path / "pairs.jsonl"), streaming=streaming, shuffle_buffer=None))
    counts = collections.Counter()
    for record in loaded:
        counts.update(record["skipped"])
    assert counts == {"unreadable_record": 1}
    assert {record["caption"] for record in loaded} == {"picture 0", "picture 1", "picture 2"}


def test_captions_that_are_not_text_are_counted_as_such(tmp_path):
    write_images(tmp_path, ["0.png"])
    for name, captions, summary in [("numbers", [1.5, None, 2.5], "(2 caption_not_text, 1 empty_caption)"),
                                    ("lists", [[7], [], [None], [3]], "(2 caption_not_text, 2 empty_caption)")]:
        datasets.Dataset.from_dict({"image": ["0.png"] * len(captions), "caption": captions}) \
            .to_parquet(str(tmp_path / f"{name}.parquet"))
        assert one_line_error(str(tmp_path / f"{name}.parquet")).endswith(summary)
    rng = np.random.default_rng(0)
    assert decode_caption([7, "a picture"], rng) == "a picture"
    with pytest.raises(BadRecord, match="caption_not_text"):
        decode_caption({"caption": 7}, rng)


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(DataError) as error:
        load_image_text_dataset(source, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_user_mistakes_are_one_line_data_errors(tmp_path):
    assert "no such file" in one_line_error(str(tmp_path / "absent.csv"))
    assert "no such file" in one_line_error("./absent-folder/")
    assert "cannot load" in one_line_error("someone/not-a-dataset-anywhere")
    write_images(tmp_path / "unlabelled" / "cats", ["0.png"])
    assert "no caption column" in one_line_error(str(tmp_path / "unlabelled"))
    (tmp_path / "pairs.csv").write_text("filepath,caption\nnowhere.jpg,a caption\nalso-nowhere.jpg,another\n")
    assert "no usable record" in one_line_error(str(tmp_path / "pairs.csv"))
    assert "no image column 'photo'" in one_line_error(str(tmp_path / "pairs.csv"), image_column="photo")
    (tmp_path / "empty.csv").write_text("filepath,caption\n")
    assert "empty.csv" in one_line_error(str(tmp_path / "empty.csv"))
    (tmp_path / "notes.txt").write_text("hello")
    assert "cannot read" in one_line_error(str(tmp_path / "notes.txt"))


def test_malformed_jsonl_line_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "pairs.jsonl").write_text('{"image": "a.png", "caption": "a square"}\n{"image": "a.png", caption\n')
    with pytest.raises(DataError, match=r"pairs.jsonl': line 2 is not a JSON object"):
        load_image_text_dataset(str(tmp_path / "pairs.jsonl"))


class Hung(BaseException):
    """Not an Exception: the record reader must not take it for a bad record and go on."""


@contextlib.contextmanager
def within(seconds: int):
    """Turn a hang (a blocking open of a FIFO) into a failure."""
    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def skip_counts(loaded) -> collections.Counter:
    counts = collections.Counter()
    for record in loaded:
        counts.update(record["skipped"])
    return counts


def test_image_paths_naming_no_regular_file_are_skipped_unopened(tmp_path):
    write_images(tmp_path, ["good.png"])
    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading blocks until a writer comes
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "link.png").symlink_to(tmp_path / "fifo.png")
    paths = ["fifo.png", "link.png", "folder.png", "/dev/zero", "good.png"]
    lines = [json.dumps({"image": path, "caption": f"caption {index}"}) for index, path in enumerate(paths)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"{path},caption {index}\n"
                                                                    for index, path in enumerate(paths)))
    with within(60):
        for table in ("pairs.jsonl", "pairs.csv"):
            for streaming in (False, True):
                loaded = records(load_image_text_dataset(str(tmp_path / table), streaming=streaming,
                                                         shuffle_buffer=None))
                assert skip_counts(loaded) == {"missing_image": 4}
                assert {record["caption"] for record in loaded} == {"caption 4"}


def test_imagefolder_metadata_and_shards_naming_no_regular_file_are_skipped_unopened(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, ["good.png"])
    os.mkfifo(folder / "fifo.png")
    rows = [{"file_name": "fifo.png", "text": "a pipe"}, {"file_name": "good.png", "text": "a picture"}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    shards = write_shards(tmp_path / "shards")
    os.mkfifo(shards / "shard-002.tar")
    with within(60):
        loaded = records(load_image_text_dataset(str(folder)))
        assert skip_counts(loaded) == {"missing_image": 1} and {r["caption"] for r in loaded} == {"a picture"}
        loaded = records(load_image_text_dataset(str(shards)))
        assert skip_counts(loaded) == {"unreadable_record": 1}
        assert "is neither a regular file nor a folder" in one_line_error(str(shards / "shard-002.tar"))


def png_bomb(side: int) -> bytes:
    """A greyscale PNG of side x side black pixels: a few hundred KB of file for side**2 bytes decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    compressor, row = zlib.compressobj(9), bytes(side + 1)  # each row: filter type 0, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_images_decoding_to_too_many_pixels_are_skipped_without_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb(12000))  # 144 megapixels, under Pillow's error limit
    assert (tmp_path / "bomb.png").stat().st_size < 300_000
    write_images(tmp_path, ["good.png"])
    Image.new("RGB", (300, 200), "blue").save(tmp_path / "wide.png")
    (tmp_path / "pairs.csv").write_text("image,caption\nbomb.png,a bomb\nwide.png,a wide one\ngood.png,a good one\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        loaded = records(load_image_text_dataset(str(tmp_path / "pairs.csv")))  # the default bound
        assert skip_counts(loaded) == {"image_too_large": 1}
        loaded = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), max_image_pixels=50_000))
        assert skip_counts(loaded) == {"image_too_large": 2}
        assert {record["caption"] for record in loaded} == {"a good one"}


def with_frame_size(jpeg: bytes, side: int) -> bytes:
    """`jpeg` (baseline) with the size in its frame header replaced by side x side; its data left as it was."""
    frame = jpeg.index(b"\xff\xc0")
    return jpeg[:frame + 5] + struct.pack(">HH", side, side) + jpeg[frame + 9:]


def flat_grey_jpeg(side: int) -> bytes:
    """A valid greyscale baseline JPEG of side x side mid-grey pixels (side a multiple of 16), without encoding it:
    every block is the same 6 bits in the standard Huffman tables libjpeg writes, a DC difference of 0 ("00") and
    the end of the block ("1010"), so four blocks are the three bytes 0x28 0xa2 0x8a."""
    header = with_frame_size(encoded("grey", mode="L", fmt="JPEG", size=(16, 16)), side)
    scan = header.index(b"\xff\xda")
    header = header[:scan + 2 + int.from_bytes(header[scan + 2:scan + 4], "big")]
    return header + b"\x28\xa2\x8a" * ((side // 8) ** 2 // 4) + b"\xff\xd9"


def test_a_jpeg_whose_data_is_too_short_for_the_size_it_claims_is_a_corrupt_image(tmp_path):
    small = encoded(fmt="JPEG", size=(16, 16))
    (tmp_path / "claims-9000.jpg").write_bytes(with_frame_size(small, 9000))  # a few hundred bytes
    (tmp_path / "small.jpg").write_bytes(small)
    (tmp_path / "pairs.csv").write_text("image,caption\nclaims-9000.jpg,a grey lie\nsmall.jpg,a small one\n")
    for input_size in (None, 224):  # decoded whole, and reduced
        loaded = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), input_size=input_size))
        assert skip_counts(loaded) == {"corrupt_image": 1}
        assert {record["caption"] for record in loaded} == {"a small one"}


def test_a_jpeg_past_pillows_bomb_limit_decodes_reduced_when_the_reduced_size_is_within_the_bound(tmp_path):
    (tmp_path / "huge.jpg").write_bytes(flat_grey_jpeg(20000))  # 400 megapixels, over twice Pillow's limit
    write_images(tmp_path, ["small.jpg"])
    (tmp_path / "pairs.csv").write_text("image,caption\nhuge.jpg,a huge one\nsmall.jpg,a small one\n")
    reduced = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), input_size=224))[0]
    assert reduced["skipped"] == {} and reduced["image"].size == (2500, 2500)
    assert reduced["image"].getextrema() == ((128, 128),) * 3
    for options in ({}, {"input_size": 224, "max_image_pixels": 6_000_000}):
        loaded = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), **options))
        assert skip_counts(loaded) == {"image_too_large": 1}


def test_large_jpegs_decode_at_the_largest_reduction_every_training_crop_allows(tmp_path):
    Image.new("RGB", (2000, 1600), "red").save(tmp_path / "large.jpg", quality=90)
    (tmp_path / "pairs.csv").write_text("image,caption\nlarge.jpg,a large one\n")
    assert records(load_image_text_dataset(str(tmp_path / "pairs.csv")))[0]["image"].size == (2000, 1600)
    # 1/8 for 100 px: every crop of 250 x 200 pixels keeps at least 223 x 179.
    drafted = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), input_size=100))[0]["image"]
    assert drafted.size == (250, 200) and drafted.mode == "RGB"
    assert drafted.getpixel((125, 100))[0] > 240
    # 1/2 for 600 px (a crop of 1000 x 800 keeps at least 898 x 719), none for 800 (1/2 would keep 719 rows).
    for input_size, size in ((600, (1000, 800)), (800, (2000, 1600))):
        loaded = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), input_size=input_size))
        assert loaded[0]["image"].size == size
    # The bound applies to what is decoded: 3.2 megapixels at full scale, 50,000 pixels drafted.
    loaded = records(load_image_text_dataset(str(tmp_path / "pairs.csv"), input_size=100, max_image_pixels=60_000))
    assert loaded[0]["skipped"] == {}


def test_captions_of_control_and_format_characters_only_are_empty(tmp_path):
    rng = np.random.default_rng(0)
    for caption in ("\x00\x00", "\u200b", "\ufeff \u200b\t\n", "\x07\u2066\u2069", ["\x00", "\u200b"]):
        with pytest.raises(BadRecord, match="empty_caption"):
            decode_caption(caption, rng)
    # Text is kept as written: the tokenizer's cleanup handles the rest (a zero-width joiner is part of an emoji).
    for caption in ("a dog\u200b on grass", "a family \U0001F468\u200d\U0001F469\u200d\U0001F467", "caf\u00e9"):
        assert decode_caption(caption, rng) == caption
    assert decode_caption(["\x00\x00", "a cat"], rng) == "a cat"
    write_images(tmp_path, ["0.png"])
    captions = ["\u0000\u0000", "\u200b\u200b", "\ufeff", "a real one"]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": "0.png", "caption": caption}) + "\n"
                                                  for caption in captions))
    assert skip_counts(records(load_image_text_dataset(str(tmp_path / "pairs.jsonl")))) == {"empty_caption": 3}


def test_iterating_a_map_style_dataset_ends_after_its_last_record(tmp_path):
    write_images(tmp_path, ["0.png", "1.png"])
    (tmp_path / "pairs.csv").write_text("image,caption\n0.png,first\n1.png,second\nmissing.png,a lost one\n")
    dataset = load_image_text_dataset(str(tmp_path / "pairs.csv"))
    loaded = list(itertools.islice(dataset, len(dataset) + 5))
    assert len(loaded) == len(dataset) == 3
    # The last row is bad: the next usable one, from the start, takes its place.
    assert loaded[2]["caption"] == "first" and loaded[2]["skipped"] == {"missing_image": 1}
    for key in (3, -1, SampleKey(1, 3)):
        with pytest.raises(IndexError):
            dataset[key]
