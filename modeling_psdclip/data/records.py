"""Turning one raw row of a dataset into an RGB image and a caption, or into the reason it cannot be used."""

import io
import json
import os
import stat
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from .raw_images import same_size_ppm_pixels
from .transforms import jpeg_reduction

# Why a record was skipped; every batch reports a count for each of these.
SKIP_REASONS = ("missing_image", "corrupt_image", "empty_caption", "undecodable_caption", "caption_not_text",
                "unreadable_record", "image_too_large")
CAPTION_KEYS = ("caption", "captions", "text", "txt", "title", "sentences")  # looked up in JSON captions
JSON_COLUMNS = ("json",)  # columns whose text is a JSON object holding the caption(s)
# A row a reader puts where it could not read the data (the damaged rest of a tar shard): counted, never used.
UNREADABLE = "_psdclip_unreadable"  # a name no user column has
WHITE = (255, 255, 255, 255)
# What text readers put in place of bytes they could not decode (CSV files are read with errors replaced).
REPLACEMENT_CHARACTER = "\ufffd"
# Unicode's control (Cc) and format (Cf) characters: NUL, zero-width space, byte-order mark, bidi marks...
INVISIBLE_CATEGORIES = ("Cc", "Cf")
# The largest image decoded by default, after JPEG draft scaling: 50 megapixels, 150 MB in RGB. Pillow's own bomb
# limit only warns below 179 megapixels, and a 140 KB file can decode to more than a gigabyte.
MAX_IMAGE_PIXELS = 50_000_000
JPEG_START = b"\xff\xd8\xff"  # what Pillow's JPEG plugin accepts
# The start-of-frame markers of Huffman-coded JPEGs (baseline, extended, progressive, lossless), and of a scan.
HUFFMAN_FRAMES, START_OF_SCAN = (0xC0, 0xC1, 0xC2, 0xC3), 0xDA


class BadRecord(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RecordColumns:
    """Where a dataset keeps its images and captions.

    Each role may name several columns; a row uses the first that holds a value (WebDataset shards mix `jpg`
    and `png` samples, or `txt` and `json` ones).
    """

    image: tuple[str, ...]
    caption: tuple[str, ...]
    base_dir: str | None = None  # what relative image paths are relative to
    input_size: int | None = None  # the model's input side in pixels: larger JPEGs decode at a reduced scale
    max_image_pixels: int | None = MAX_IMAGE_PIXELS  # larger images are skipped as image_too_large

    def read(self, load_row: Callable[[], dict], rng: np.random.Generator) -> tuple[Image.Image, str]:
        """`decode(load_row())`, where any failure to read or decode the row is a `BadRecord`.

        Format readers let through what Python then fails on (a JSON reader keeps bytes that are not UTF-8, and
        converting the row raises UnicodeDecodeError); whatever it is, it concerns this row alone.
        """
        try:
            return self.decode(load_row(), rng)
        except BadRecord:
            raise
        except Exception:
            raise BadRecord("unreadable_record") from None

    def decode(self, row: dict, rng: np.random.Generator) -> tuple[Image.Image, str]:
        """The row's image in RGB and one of its captions (drawn with `rng` when it has several).

        Raises `BadRecord` naming the first problem found; the caption is checked first, being the cheaper.
        """
        if row.get(UNREADABLE):
            raise BadRecord("unreadable_record")
        caption_column, caption = _first_present(row, self.caption)
        caption = decode_caption(caption, rng, as_json=caption_column in JSON_COLUMNS)
        _, image = _first_present(row, self.image)
        return decode_image(image, self.base_dir, input_size=self.input_size,
                            max_pixels=self.max_image_pixels), caption

    def with_batch_decoded_images(self, rows: list[dict]) -> list[dict]:
        """`rows` with their images as uint8 arrays when all of them are same-size PPMs (the built-in scenes), read
        as one array by `same_size_ppm_pixels` instead of by Pillow one at a time; otherwise `rows` unchanged.

        `decode` gives the same record from either.
        """
        found = [_first_present(row, self.image) for row in rows]
        pixels = same_size_ppm_pixels([value.get("bytes") if isinstance(value, dict) else value
                                       for _, value in found])
        if pixels is None or (self.max_image_pixels and pixels.shape[1] * pixels.shape[2] > self.max_image_pixels):
            return rows
        return [{**row, column: image} for row, (column, _), image in zip(rows, found, pixels)]


def _first_present(row: dict, columns: tuple[str, ...]):
    for column in columns:
        if row.get(column) is not None:
            return column, row[column]
    return None, None


def decode_caption(value, rng: np.random.Generator, as_json: bool = False) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("undecodable_caption") from None
    if as_json and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRecord("undecodable_caption") from None
    if isinstance(value, dict):
        value = next((value[key] for key in CAPTION_KEYS if value.get(key) is not None), None)
    if isinstance(value, (list, tuple)):
        texts = [text for text in value if isinstance(text, str) and has_text(text)]
        others = [text for text in value if text is not None and not isinstance(text, str)]
        value = texts[rng.integers(len(texts))] if texts else others[0] if others else None
    if value is not None and not isinstance(value, str):  # a number, say: a column that holds no captions
        raise BadRecord("caption_not_text")
    if value is None or not has_text(value):
        raise BadRecord("empty_caption")
    if REPLACEMENT_CHARACTER in value:
        raise BadRecord("undecodable_caption")
    return _join_surrogate_pairs(value).strip()


def has_text(caption: str) -> bool:
    """Whether `caption` holds a character that is neither white space nor a control or format character.

    Those characters are left in a caption that has text: the tokenizer's cleanup handles them as OpenAI's does,
    and some belong to the text (a zero-width joiner inside an emoji sequence).
    """
    return any(not char.isspace() and unicodedata.category(char) not in INVISIBLE_CATEGORIES for char in caption)


def _join_surrogate_pairs(text: str) -> str:
    """Join each surrogate pair (what a JSON escape such as "\\ud83d\\ude00" decodes to) into its character.

    No tokenizer accepts surrogates; a lone one is text that cannot be repaired.
    """
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise BadRecord("undecodable_caption") from None


def decode_image(value, base_dir: str | None = None, *, input_size: int | None = None,
                 max_pixels: int | None = None) -> Image.Image:
    """An image given as a PIL image, a (height, width, 3) uint8 array, encoded bytes, a path, or a `datasets` Image
    dict, in RGB.

    With `input_size`, a JPEG decodes at the largest reduction (1/2, 1/4 or 1/8, Pillow's `draft`) that keeps every
    training crop (`transforms.crop_box` with its default scale and ratio) at least `input_size` pixels each way.
    With `max_pixels`, an image that would still decode to more pixels is a `BadRecord("image_too_large")`. A JPEG
    whose data is too short for its size (`jpeg_data_too_short`) is a `BadRecord("corrupt_image")`.
    """
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value, "RGB")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = (value, None) if isinstance(value, bytes) else (None, value)
    if data is None:
        data = _read_file(path, base_dir)
    try:
        if jpeg_data_too_short(data):
            raise BadRecord("corrupt_image")
        with warnings.catch_warnings():
            # Pillow warns of a decompression bomb on opening; `max_pixels` is the bound that applies here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Image.open refuses a size in the header past twice Pillow's bomb limit, before a JPEG's reduced
            # decode: given a bound, a JPEG is opened by Pillow's JPEG plugin itself, and the bound applies to the
            # size decoded.
            image = JpegImagePlugin.jpeg_factory(io.BytesIO(data)) if max_pixels and data.startswith(JPEG_START) \
                else Image.open(io.BytesIO(data))
        reduction = jpeg_reduction(image.width, image.height, input_size) if input_size else 1
        if reduction > 1:
            # Pillow decodes at the largest reduction that keeps the size asked for.
            image.draft(None, (image.width // reduction, image.height // reduction))
        if max_pixels and image.width * image.height > max_pixels:
            raise BadRecord("image_too_large")
        image.load()
        return to_rgb(image)
    except BadRecord:
        raise
    except Image.DecompressionBombError:  # past twice Pillow's limit, refused before anything is decoded
        raise BadRecord("image_too_large") from None
    # A damaged file can make a decoder raise almost anything (OSError for truncation, SyntaxError, ValueError,
    # struct.error...); all of them mean the same thing here.
    except Exception:
        raise BadRecord("corrupt_image") from None


def jpeg_data_too_short(data: bytes) -> bool:
    """Whether `data` is a Huffman-coded JPEG holding fewer bytes after its first scan header than its frame's size needs.

    Each MCU (8 x 8 pixels times the largest sampling factors) costs at least one bit, its first block's DC code.
    libjpeg fills what a scan ends before with grey and only warns, which Pillow drops: a file whose header claims
    more pixels than its data can hold (a damaged or altered one) would decode to a grey image without a word.
    Arithmetic coding can spend less than a bit on a flat MCU, so it is not judged; nor is anything unexpected.
    """
    if not data.startswith(JPEG_START):
        return False
    position, frame = 2, None
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker in HUFFMAN_FRAMES:
            segment = data[position + 4:position + 2 + length]
            components = segment[7::3]  # each component's horizontal and vertical sampling factors, 4 bits each
            if len(segment) < 6 or not components or min(min(c >> 4, c & 15) for c in components) == 0:
                return False
            frame = (int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"),
                     max(c >> 4 for c in components), max(c & 15 for c in components))
        elif marker == START_OF_SCAN:
            if frame is None:
                return False
            height, width, h_max, v_max = frame
            mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
            return (len(data) - position - 2 - length) * 8 < mcus
        position += 2 + length
    return False


def is_regular_file(path) -> bool:
    """Whether `path` names a regular file (through links), known without opening it.

    Opening a FIFO blocks until a writer comes, and a device such as /dev/zero reads without end.
    """
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _read_file(path, base_dir: str | None) -> bytes:
    if not isinstance(path, str) or not path:
        raise BadRecord("missing_image")
    if base_dir is not None:
        path = os.path.join(base_dir, os.path.expanduser(path))
    if not is_regular_file(path):
        raise BadRecord("missing_image")
    try:
        # Non-blocking, and checked again once open: the path may have been replaced since it was looked at.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise BadRecord("missing_image")
            return file.read()
    except OSError:
        raise BadRecord("missing_image") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with the camera's orientation applied; transparency is laid over white rather than dropped to black.

    16-bit greyscale (PNG, TIFF; mode "I;16*", or "I" in older Pillow) is scaled to 8 bits: Pillow's own
    conversion clips it, which turns every pixel but the darkest white.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image).convert("RGB")
    return image.convert("RGB")
