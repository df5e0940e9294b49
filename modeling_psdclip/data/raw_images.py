"""Binary PPM: how the built-in scenes store their images.

A PPM is the RGB bytes behind a one-line header: Pillow (and so `datasets.Image`) opens it like any image, and a
batch of same-size ones reads as one uint8 array with no decoder at all. PNG took the larger part of reading a
batch of small scenes.
"""

import io
import re

import numpy as np
from PIL import Image

# What Pillow writes, and all that is read without it: no comments, 8-bit samples.
HEADER = re.compile(rb"P6\s(\d+)\s(\d+)\s255\s")


def encode_ppm(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PPM")
    return buffer.getvalue()


def same_size_ppm_pixels(blobs: list) -> np.ndarray | None:
    """The images of `blobs` as one (batch, height, width, 3) uint8 array when every blob is a binary PPM with the
    same header as the first; otherwise None (Pillow then decodes each one)."""
    if not blobs or not all(isinstance(blob, bytes) for blob in blobs):
        return None
    header = HEADER.match(blobs[0])
    if header is None:
        return None
    width, height = int(header[1]), int(header[2])
    size = header.end() + width * height * 3
    if any(len(blob) != size for blob in blobs):
        return None
    rows = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), size)
    if not (rows[:, :header.end()] == rows[0, :header.end()]).all():
        return None
    return rows[:, header.end():].reshape(len(blobs), height, width, 3)
