"""The CLIP tokenizer against OpenAI's reference ids, its fast path for plain ASCII captions, and CLIP-style BPE
training."""

import importlib.util
import json
import random
import string
from pathlib import Path

import pytest
import torch
from tokenizers import normalizers
from transformers import AutoTokenizer

from modeling_psdclip.tokenization import (
    CaptionTokenizer, clip_normalizer, load_clip_tokenizer, special_token_ids, train_bpe_tokenizer,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer" / "reference_ids.json"
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def reference_cases():
    """Captions and the ids the open_clip wheel's tokenizer gave them (scripts/convert_clip_bpe.py).

    Cases marked as not matching need ftfy's mojibake repair, which the normalizer does not do.
    """
    cases = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
    return [case for case in cases if case["matches"]]


def test_ids_match_reference_fixture(tokenizer, reference_cases):
    texts = [case["text"] for case in reference_cases]
    ids = tokenizer(texts, truncation=True)["input_ids"]
    for case, row in zip(reference_cases, ids, strict=True):
        assert row == case["ids"], case["text"]


def test_ids_match_live_reference(tokenizer, reference_cases):
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed")
    # Loaded by path: the open_clip package itself imports torchvision.
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("clip_reference_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    reference = module.SimpleTokenizer()
    texts = [case["text"] for case in reference_cases] + [f"a photo of a {w}." for w in ("tench", "goldfish")]
    texts += ["&#x2018;quoted&#x2019; for 5&cent; or &pound;3 &euro;4", "&centre &poundx"]
    for text, row in zip(texts, tokenizer(texts, truncation=True)["input_ids"], strict=True):
        expected = reference([text])[0].tolist()
        assert row == expected[: expected.index(reference.eot_token_id) + 1], text


def test_vocabulary_and_special_ids(tokenizer):
    assert special_token_ids(tokenizer) == {
        "vocab_size": 49408, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS,
    }
    assert tokenizer.model_max_length == 77


def test_truncation_keeps_eos_last(tokenizer):
    ids = tokenizer("a very long caption " * 40, truncation=True)["input_ids"]
    assert len(ids) == 77 and ids[0] == BOS and ids[-1] == EOS and ids.count(EOS) == 1


def test_padding_to_context_length(tokenizer):
    short = load_clip_tokenizer(context_length=16)
    batch = short(["a cat", "a photo of a dog on the grass"], padding="max_length", truncation=True,
                  return_tensors="pt")
    assert batch["input_ids"].shape == (2, 16)
    first_row = batch["input_ids"][0].tolist()
    assert first_row[:4] == [BOS, 320, 2368, EOS] and set(first_row[3:]) == {EOS}
    assert batch["attention_mask"][0].tolist() == [1] * 4 + [0] * 12


def test_spelled_out_special_token_is_text(tokenizer):
    ids = tokenizer("a <|endoftext|> b")["input_ids"]
    assert ids.count(EOS) == 1 and ids[-1] == EOS


def test_decode(tokenizer):
    ids = tokenizer("A Photo of a CAT, sitting.")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a cat , sitting ."


def test_save_and_reload_keeps_cleanup(tokenizer, reference_cases, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [case["text"] for case in reference_cases]
    assert type(reloaded).__module__.startswith("transformers.")
    assert reloaded(texts, truncation=True)["input_ids"] == tokenizer(texts, truncation=True)["input_ids"]


CAPTIONS = [
    "ein Foto einer Katze auf dem Sofa",
    "eine Straße in München bei Nacht",
    "ein Hund spielt im Park mit einem Ball",
    "zwei Katzen schlafen auf dem Sofa",
] * 10


def test_train_bpe_tokenizer_round_trip(tmp_path):
    trained = train_bpe_tokenizer(CAPTIONS, vocab_size=600, context_length=24)
    ids = special_token_ids(trained)
    assert ids["vocab_size"] <= 600
    # bos and eos take the two highest ids, as in CLIP.
    assert (ids["bos_token_id"], ids["eos_token_id"]) == (ids["vocab_size"] - 2, ids["vocab_size"] - 1)
    assert ids["pad_token_id"] == ids["eos_token_id"]

    texts = ["Ein Foto einer KATZE", "ungesehen: 漢字 😀"]
    batch = trained(texts, padding="max_length", truncation=True)
    assert all(len(row) == 24 for row in batch["input_ids"])
    assert trained.tokenize("katze") == ["katze</w>"]
    # Every byte is in the vocabulary, so unseen text never becomes the unknown (eos) token.
    unseen = batch["input_ids"][1]
    assert unseen.index(ids["eos_token_id"]) == sum(batch["attention_mask"][1]) - 1

    trained.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(texts, padding="max_length", truncation=True)["input_ids"] == batch["input_ids"]
    assert reloaded.model_max_length == 24


def test_train_bpe_tokenizer_options():
    cased = train_bpe_tokenizer(CAPTIONS, vocab_size=600, lowercase=False)
    assert cased.decode(cased("München")["input_ids"], skip_special_tokens=True) == "München"
    with pytest.raises(ValueError, match="at least 514"):
        train_bpe_tokenizer(CAPTIONS, vocab_size=300)


def random_plain_ascii(rng: random.Random) -> str:
    """ASCII without "&": letters of both cases, digits, punctuation, every kind of white space, control characters
    and ANSI escape sequences."""
    pieces = [*string.ascii_letters, *string.digits, *string.punctuation.replace("&", ""), *" \t\n\r\x0b\x0c",
              *map(chr, [*range(0, 32), 127]), "\x1b[31m", "\x1b[0;1m", "\x1b[", "  "]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))


@pytest.mark.parametrize("lowercase", [True, False])
def test_the_plain_ascii_cleanup_is_the_whole_cleanup_on_ascii_without_ampersands(lowercase):
    rng = random.Random(0)
    whole, plain = clip_normalizer(lowercase), clip_normalizer(lowercase, plain_ascii=True)
    texts = [random_plain_ascii(rng) for _ in range(3000)] + ["A  Photo\tOF a DOG.\n", "\x1b[1mbold\x1b[0m  text "]
    changed = 0
    for text in texts:
        assert plain.normalize_str(text) == whole.normalize_str(text), repr(text)
        changed += whole.normalize_str(text) != text
    assert changed > 2000  # the texts exercise the steps the plain cleanup keeps
    # Outside that domain the two differ: why the fast path is only taken for such captions.
    for text in ("caf\u00e9 &amp; bar", "Tom &amp; Jerry", "\uff21\uff22", "\u201cquoted\u201d"):
        assert plain.normalize_str(text) != whole.normalize_str(text)


def test_caption_tokenizer_gives_the_tokenizers_ids_for_any_mix_of_captions(tokenizer, reference_cases, tmp_path):
    rng = random.Random(1)
    captions = [case["text"] for case in reference_cases] + [random_plain_ascii(rng) for _ in range(200)]
    rng.shuffle(captions)
    tokenizer.save_pretrained(tmp_path)
    for tokenize in (CaptionTokenizer(tokenizer, 77), CaptionTokenizer(AutoTokenizer.from_pretrained(tmp_path), 77)):
        assert tokenize.plain_ascii is not None  # the fast path is found on a reloaded tokenizer too
        for batch in (captions, captions[:1], [caption for caption in captions if caption.isascii()]):
            expected = tokenizer(batch, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
            got = tokenize(batch)
            assert set(got) == {"input_ids", "attention_mask"}
            assert all(torch.equal(got[name], expected[name]) for name in got)


def test_caption_tokenizer_calls_other_tokenizers_as_they_are():
    other = train_bpe_tokenizer(["a red circle", "a blue square"] * 4, vocab_size=600, lowercase=False)
    other.backend_tokenizer.normalizer = normalizers.Lowercase()
    tokenize = CaptionTokenizer(other, 12)
    assert tokenize.plain_ascii is None
    expected = other(["A red circle", "café"], padding="max_length", truncation=True, max_length=12,
                     return_tensors="pt")
    assert torch.equal(tokenize(["A red circle", "café"])["input_ids"], expected["input_ids"])
