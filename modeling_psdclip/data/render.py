"""Drawing a synthetic scene: a numpy texture for the background, PIL ImageDraw for the objects."""

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLOUR_TYPES, SHAPE_TYPES, Scene, SceneObject

# Scenes are drawn at twice the size and halved, which smooths the edges ImageDraw leaves jagged.
SUPERSAMPLE = 2
ANCHORS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
# Fractions of the image side: a large main object spans several patches even at 32-48 px, and a small one
# is still big enough to tell its shape.
RADIUS = {"small": (0.11, 0.13), "large": (0.18, 0.22)}
JITTER = 0.02  # how far, as a fraction of the side, a centre may stray from its anchor


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    canvas_size = image_size * SUPERSAMPLE
    mask = _texture_mask(scene.texture, canvas_size, rng)[..., None]
    pixels = np.asarray(scene.background.base) * (1 - mask) + np.asarray(scene.background.pattern) * mask
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, canvas_size, rng, outline_only=scene.sketch)
    return image.reduce(SUPERSAMPLE)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _texture_mask(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where the background's pattern tone shows, as weights in [0, 1]."""
    y, x = _grid(size)
    period = float(rng.integers(max(6, size // 10), max(8, size // 4)))
    if texture == "plain":
        return np.zeros((size, size), np.float32)
    if texture == "stripes":
        coordinate = (x, y, x + y, x - y)[rng.integers(4)]
        return (coordinate // (period / 2)) % 2
    if texture == "dots":
        return ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2 < (period / 4) ** 2).astype(np.float32)
    if texture == "checker":
        return (x // period + y // period) % 2
    if texture == "noise":
        return rng.random((size, size), dtype=np.float32)
    if texture == "grid":
        line = max(1.0, size / 48)
        return ((x % period < line) | (y % period < line)).astype(np.float32)
    if texture == "waves":
        return (np.sin(2 * math.pi * x / period + 3 * np.sin(2 * math.pi * y / (2 * period))) > 0).astype(np.float32)
    if texture == "gradient":
        return (x if rng.random() < 0.5 else y) / (size - 1)
    raise ValueError(f"unknown texture {texture!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, size: int, rng: np.random.Generator, outline_only: bool):
    anchor_x, anchor_y = ANCHORS[obj.position]
    centre_x, centre_y = (size * (a + rng.uniform(-JITTER, JITTER)) for a in (anchor_x, anchor_y))
    radius = size * rng.uniform(*RADIUS[obj.size])
    colour = COLOUR_TYPES[obj.colour].shades[obj.shade].rgb
    line = max(2, round(size / 40))
    shape = SHAPE_TYPES[obj.shape].name
    box = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
    if shape == "circle":
        draw.ellipse(box, fill=None if outline_only else colour, outline=colour, width=line)
    elif shape == "ring":
        thickness = max(line, round(radius * 0.35))
        draw.ellipse(box, outline=colour, width=line if outline_only else thickness)
        if outline_only:
            inner = radius - thickness
            draw.ellipse((centre_x - inner, centre_y - inner, centre_x + inner, centre_y + inner), outline=colour, width=line)
    else:
        points = _rotate(_outline(shape), obj.rotation)
        points = [(centre_x + radius * px, centre_y + radius * py) for px, py in points]
        draw.polygon(points, fill=None if outline_only else colour, outline=colour, width=line)


@functools.lru_cache(maxsize=None)
def _outline(shape: str) -> tuple[tuple[float, float], ...]:
    """The shape's polygon around the origin, radius 1, y pointing down."""
    if shape == "square":
        return _regular(4, offset=math.pi / 4)
    if shape == "triangle":
        return _regular(3)
    if shape == "hexagon":
        return _regular(6)
    if shape == "star":
        return tuple((r * x, r * y) for i, (x, y) in enumerate(_regular(10)) for r in [1.0 if i % 2 == 0 else 0.45])
    if shape == "diamond":
        return ((0, -1), (0.62, 0), (0, 1), (-0.62, 0))
    if shape == "cross":
        w = 0.33
        return ((-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w))
    raise ValueError(f"unknown shape {shape!r}")


def _regular(sides: int, offset: float = 0.0) -> tuple[tuple[float, float], ...]:
    angles = (offset + 2 * math.pi * k / sides for k in range(sides))
    return tuple((math.sin(a), -math.cos(a)) for a in angles)


def _rotate(points, degrees: float):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(c * x - s * y, s * x + c * y) for x, y in points]
