"""Prompt templates for zero-shot classification, and reading class names and templates from files."""

from pathlib import Path

from .errors import EvalInputError

# The 80 prompt templates the CLIP paper (Radford et al. 2021) ensembles for ImageNet zero-shot classification.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

TEMPLATE_SETS = {
    "imagenet80": IMAGENET_TEMPLATES,
    "simple": ("a photo of a {}.",),
}

# "{}" is this project's placeholder; "{c}" is the one in CLIP_benchmark's exported template files.
PLACEHOLDERS = ("{}", "{c}")


def fill_template(template: str, class_name: str) -> str:
    for placeholder in PLACEHOLDERS:
        template = template.replace(placeholder, class_name)
    return template


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file; EvalInputError when missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:  # a binary file, or text in another encoding
        raise EvalInputError(f"{what} file {path} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise EvalInputError(f"{what} file {path} is empty")
    return lines


def resolve_templates(name_or_path: str) -> list[str]:
    """A built-in template set by name ("imagenet80", "simple") or a file with one template per line."""
    if name_or_path in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[name_or_path])
    templates = read_lines(name_or_path, "template")
    for template in templates:
        if not any(placeholder in template for placeholder in PLACEHOLDERS):
            raise EvalInputError(f"template {template!r} in {name_or_path} has no {{}} placeholder")
    return templates
