"""The world of the synthetic data: what a scene is made of, how one is drawn at random, how it is described.

Everything random takes a `numpy.random.Generator`, so a scene and its captions are a pure function of the
generator's seed.
"""

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np


class Shape(NamedTuple):
    name: str
    synonyms: tuple[tuple[str, str], ...]  # (singular, plural) pairs a caption may use


class Shade(NamedTuple):
    name: str
    rgb: tuple[int, int, int]


class Colour(NamedTuple):
    name: str
    shades: tuple[Shade, ...]  # the last shade never appears in training: it makes the `unseen_shade` split


class Background(NamedTuple):
    name: str
    base: tuple[int, int, int]
    pattern: tuple[int, int, int]  # the second tone a texture is drawn in


# One word per shape, the class name itself: synonyms would split a shape's evidence between several words,
# and zero-shot prompts are built from the class names.
SHAPE_TYPES = (
    Shape("circle", (("circle", "circles"),)),
    Shape("square", (("square", "squares"),)),
    Shape("triangle", (("triangle", "triangles"),)),
    Shape("star", (("star", "stars"),)),
    Shape("ring", (("ring", "rings"),)),
    Shape("cross", (("cross", "crosses"),)),
    Shape("diamond", (("diamond", "diamonds"),)),
    Shape("hexagon", (("hexagon", "hexagons"),)),
)

COLOUR_TYPES = (
    Colour("red", (Shade("red", (215, 30, 30)), Shade("crimson", (175, 15, 55)),
                   Shade("scarlet", (250, 50, 20)), Shade("cherry", (200, 0, 60)))),
    Colour("orange", (Shade("orange", (245, 140, 20)), Shade("tangerine", (250, 115, 0)),
                      Shade("amber", (255, 170, 40)), Shade("apricot", (240, 150, 80)))),
    Colour("yellow", (Shade("yellow", (240, 220, 30)), Shade("gold", (225, 185, 20)),
                      Shade("lemon", (250, 245, 90)), Shade("mustard", (210, 180, 40)))),
    Colour("green", (Shade("green", (40, 170, 60)), Shade("emerald", (20, 140, 90)),
                     Shade("lime", (130, 220, 40)), Shade("olive", (110, 140, 40)))),
    Colour("blue", (Shade("blue", (40, 80, 220)), Shade("navy", (20, 30, 130)),
                    Shade("azure", (40, 140, 240)), Shade("cobalt", (0, 70, 170)))),
    Colour("purple", (Shade("purple", (140, 50, 180)), Shade("violet", (160, 90, 220)),
                      Shade("plum", (120, 40, 110)), Shade("lavender", (180, 140, 230)))),
    Colour("pink", (Shade("pink", (245, 120, 170)), Shade("magenta", (220, 40, 160)),
                    Shade("rose", (240, 90, 130)), Shade("blush", (235, 150, 180)))),
    Colour("cyan", (Shade("cyan", (30, 200, 210)), Shade("teal", (20, 140, 140)),
                    Shade("turquoise", (60, 220, 200)), Shade("aqua", (90, 230, 230)))),
)

# Backgrounds and textures are neutral so they never compete with an object's colour.
TRAIN_BACKGROUNDS = (
    Background("white", (245, 245, 245), (205, 205, 205)),
    Background("grey", (150, 150, 150), (118, 118, 118)),
    Background("black", (30, 30, 30), (70, 70, 70)),
    Background("beige", (235, 225, 200), (205, 192, 165)),
)
HELD_OUT_BACKGROUNDS = (
    Background("slate", (70, 78, 92), (100, 108, 122)),
    Background("ivory", (252, 250, 238), (225, 222, 205)),
)
TRAIN_TEXTURES = ("plain", "stripes", "dots", "checker", "noise")
HELD_OUT_TEXTURES = ("grid", "waves", "gradient")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
POSITIONS = ("left", "right", "top", "bottom", "centre")
EDGE_POSITIONS = POSITIONS[:4]  # several objects take distinct edges so they never overlap
COUNT_WORDS = ("one", "two", "three")
# Captions name the objects' shape, colour, number and sometimes size, never their position or the background.
# A caption's every word that a batch's other images do not share makes a shortcut: with backgrounds, positions
# and second objects of other colours named, a caption's pair is found in a batch without looking at shape,
# and contrastive training never learns shape (zero-shot and linear-probe shape stayed at chance).
P_SIZE_WORD = 0.2
P_COUNT_PREFIX = 0.5  # chance that a caption starts with the number of objects ("two shapes: ...")

# The class names of the labels every synthetic split carries, in label order: zero-shot prompts are built from them.
SHAPES = tuple(shape.name for shape in SHAPE_TYPES)
COLOURS = tuple(colour.name for colour in COLOUR_TYPES)
COUNTS = COUNT_WORDS  # label_count = number of objects - 1

PHOTO_TEMPLATES = (
    "{}", "a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "there is {}", "a photo showing {}",
)
SKETCH_TEMPLATES = ("a sketch of {}", "an outline drawing of {}", "a line drawing of {}", "{}")
GENERIC_CAPTIONS = (
    "an image", "a picture of some shapes", "a photo", "shapes", "some geometric shapes", "an abstract picture",
    "a colourful image", "image", "untitled", "a picture", "graphic design", "a simple illustration",
)


@dataclass(frozen=True)
class SceneObject:
    shape: int  # index into SHAPE_TYPES
    colour: int  # index into COLOUR_TYPES
    shade: int  # index into that colour's shades
    size: str  # "small" | "large"
    position: str  # one of POSITIONS
    rotation: float  # degrees; small, so a shape keeps its identity


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # the first one is the main object the shape and colour labels name
    background: Background
    texture: str
    sketch: bool  # outline-only rendering on a plain background


@dataclass(frozen=True)
class SceneStyle:
    """Which part of the world a split draws from."""

    backgrounds: tuple[Background, ...] = TRAIN_BACKGROUNDS
    textures: tuple[str, ...] = TRAIN_TEXTURES
    shades: tuple[int, ...] = (0, 1, 2)
    sketch: bool = False
    shapes: tuple[int, ...] = tuple(range(len(SHAPE_TYPES)))  # indices into SHAPE_TYPES


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def sample_scene(rng: np.random.Generator, style: SceneStyle) -> Scene:
    count = int(rng.integers(1, len(COUNT_WORDS) + 1))
    if count == 1:
        positions = [_pick(rng, POSITIONS)]
    else:
        positions = [str(p) for p in rng.permutation(EDGE_POSITIONS)[:count]]
    main = _sample_object(rng, style, positions[0], size=None if count == 1 else "large")
    # Extra objects are smaller copies of the main one ("two blue squares"): the shape and colour labels name the
    # only shape and colour in the picture, and a second colour would be a shortcut (see the captions above).
    copies = [replace(main, size="small", position=p, rotation=float(rng.uniform(-15, 15))) for p in positions[1:]]
    objects = [main, *copies]
    background = _pick(rng, style.backgrounds)
    texture = "plain" if style.sketch else _pick(rng, style.textures)
    return Scene(tuple(objects), background, texture, style.sketch)


def _sample_object(rng: np.random.Generator, style: SceneStyle, position: str, size: str | None) -> SceneObject:
    return SceneObject(
        shape=int(_pick(rng, style.shapes)),
        colour=int(rng.integers(len(COLOUR_TYPES))),
        shade=int(_pick(rng, style.shades)),
        size=size or _pick(rng, ("small", "large")),
        position=position,
        rotation=float(rng.uniform(-15, 15)),
    )


def with_wrong_attribute(scene: Scene, rng: np.random.Generator, style: SceneStyle) -> tuple[Scene, str]:
    """The scene with the main object's colour or shape changed, to another of the style's: what a partly wrong
    caption describes."""
    main = scene.objects[0]
    attribute = _pick(rng, ("colour", "shape"))
    options = tuple(range(len(COLOUR_TYPES))) if attribute == "colour" or len(style.shapes) < 2 else style.shapes
    wrong = options[(options.index(getattr(main, attribute)) + int(rng.integers(1, len(options)))) % len(options)]
    return replace(scene, objects=(replace(main, **{attribute: wrong}),) + scene.objects[1:]), attribute


def describe(scene: Scene, rng: np.random.Generator, *, name_colour: bool = False) -> str:
    """One caption of the scene in a randomly chosen wording; `name_colour` forces every colour to be named."""
    groups: dict[tuple, list[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault((obj.shape, obj.colour, obj.shade), []).append(obj)
    phrases = [_object_phrase(members, rng, name_colour) for members in groups.values()]
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + _pick(rng, (" and ", " with ")) + phrases[-1]
    if rng.random() < P_COUNT_PREFIX:  # the count words, "one" included, are what count prompts are made of
        count = len(scene.objects)
        objects = f"{COUNT_WORDS[count - 1]} {'shape' if count == 1 else 'shapes'}: {objects}"
    return _pick(rng, SKETCH_TEMPLATES if scene.sketch else PHOTO_TEMPLATES).format(objects)


def _object_phrase(members: list[SceneObject], rng: np.random.Generator, name_colour: bool) -> str:
    first = members[0]
    singular, plural = _pick(rng, SHAPE_TYPES[first.shape].synonyms)
    words = []
    if len(members) == 1 and rng.random() < P_SIZE_WORD:
        words.append(_pick(rng, SIZE_WORDS[first.size]))
    if name_colour or rng.random() < 0.95:
        words.append(_colour_word(first, rng))
    words.append(singular if len(members) == 1 else plural)
    phrase = " ".join(words)
    if len(members) > 1:
        return f"{COUNT_WORDS[len(members) - 1]} {phrase}"
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _colour_word(obj: SceneObject, rng: np.random.Generator) -> str:
    colour = COLOUR_TYPES[obj.colour]
    held_out = obj.shade == len(colour.shades) - 1
    # A held-out shade's own name never occurs in training captions, so it is described by its colour name.
    if held_out or rng.random() < 0.8:
        return colour.name
    return colour.shades[obj.shade].name
