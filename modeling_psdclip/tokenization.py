"""CLIP tokenizers as stock transformers tokenizers: the shipped OpenAI vocabulary, or one trained on new captions.

Both are `PreTrainedTokenizerFast` objects whose whole pipeline lives in `tokenizer.json`, so a saved
tokenizer reloads with plain `AutoTokenizer.from_pretrained(folder)` where this package is not installed.
(`CLIPTokenizer` is not used: it rebuilds its normalizer on load, which would drop the text cleanup.)

The normalizer reproduces OpenAI's text cleanup (`ftfy.fix_text`, `html.unescape` twice, whitespace
collapse, lower-casing) with table-driven rewrites, so ids match OpenAI's tokenizer exactly except where
the cleanup is a heuristic no fixed rewrite can express:
- mojibake repair (text decoded with the wrong codec, e.g. "cafÃ©" -> "café") is not done;
- HTML entities outside `HTML_ENTITIES`, and numeric ones written without their ";", are left as written;
- ftfy skips its own entity decoding when the text contains "<"; this normalizer always decodes, so a
  curly quote written as an entity next to a "<" becomes a straight quote here and stays curly there.
"""

import copy
import html.entities
import json
from collections.abc import Iterable
from pathlib import Path

import ftfy.chardata
import ftfy.fixes
import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

BPE_DIR = Path(__file__).parent / "bpe"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# OpenAI's pre-tokenization: contractions, runs of letters, single digits, runs of other symbols.
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# The entities web captions actually carry. "amp" comes first so one pass also decodes "&amp;quot;".
HTML_ENTITIES = (
    "amp", "AMP", "lt", "LT", "gt", "GT", "quot", "QUOT", "apos", "nbsp", "hellip", "ndash", "mdash",
    "lsquo", "rsquo", "ldquo", "rdquo", "laquo", "raquo", "copy", "reg", "trade", "deg", "middot", "bull", "cent",
    "pound", "euro",
    "times", "eacute", "Eacute", "egrave", "Egrave", "agrave", "Agrave", "aacute", "iacute", "oacute",
    "uacute", "ntilde", "Ntilde", "ccedil", "Ccedil", "uuml", "Uuml", "ouml", "Ouml", "auml", "Auml", "szlig",
    "#39", "#039", "#x27", "#34", "#034", "#x22", "#38", "#038", "#x26", "#160", "#xa0", "#xA0",
    "#8211", "#8212", "#8216", "#8217", "#8220", "#8221", "#8230", "#x2018", "#x2019", "#x201c", "#x201d",
)


def _entity_rewrites(without_semicolon: bool) -> list[normalizers.Normalizer]:
    """Decode `HTML_ENTITIES`; `html.unescape` (unlike ftfy) also decodes the legacy names written without ";".

    No name here is the start of a longer legacy name, so a literal rewrite picks what html.unescape picks.
    """
    rewrites = [normalizers.Replace(f"&{name};", html.unescape(f"&{name};")) for name in HTML_ENTITIES]
    if without_semicolon:
        rewrites += [normalizers.Replace(f"&{name}", html.entities.html5[name])
                     for name in HTML_ENTITIES if name in html.entities.html5]
    return rewrites


def _char_class(chars: Iterable[str]) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + "]"


def _ftfy_character_fixes() -> list[normalizers.Normalizer]:
    """ftfy's per-character fixes (C1 controls as Windows-1252, ligatures, full/half width), from its own tables.

    One literal rewrite per character: a literal costs a fifth of a one-character regex class.
    """
    candidates = {chr(c) for c in range(0x80, 0xA0)} | {chr(c) for c in ftfy.chardata.LIGATURES}
    candidates |= {chr(c) for c in ftfy.chardata.WIDTH_MAP}
    rewrites = []
    for char in sorted(candidates):
        fixed = ftfy.fixes.fix_character_width(ftfy.fixes.fix_latin_ligatures(ftfy.fixes.fix_c1_controls(char)))
        if fixed != char:
            rewrites.append(normalizers.Replace(char, fixed))
    return rewrites


def clip_normalizer(lowercase: bool = True, plain_ascii: bool = False) -> normalizers.Normalizer:
    """OpenAI CLIP's cleanup: ftfy.fix_text, html.unescape twice, whitespace collapse, lower-casing.

    With `plain_ascii`, only the steps that can change ASCII text without "&" (escape sequences, control characters,
    white space, case): on such text it gives what the whole cleanup gives, in a twentieth of the time. Every other
    step rewrites an entity, which starts with "&", or non-ASCII characters.
    """
    escapes = normalizers.Replace(Regex(ftfy.fixes.ANSI_RE.pattern), "")
    controls = normalizers.Replace(Regex(_char_class(map(chr, ftfy.chardata.CONTROL_CHARS))), "")
    spaces = [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    if plain_ascii:
        steps = [escapes, controls, *spaces]
    else:
        steps = [
            # ftfy decodes entities first; html.unescape decodes again after ftfy, so without its quote fixes.
            *_entity_rewrites(without_semicolon=False),
            *_ftfy_character_fixes(),
            normalizers.Replace(Regex(ftfy.chardata.SINGLE_QUOTE_RE.pattern), "'"),
            normalizers.Replace(Regex(ftfy.chardata.DOUBLE_QUOTE_RE.pattern), '"'),
            escapes,
            controls,
            normalizers.NFC(),
            *_entity_rewrites(without_semicolon=True),
            *spaces,
        ]
    if lowercase:
        if not plain_ascii:
            # Python's str.lower turns a word-final capital sigma into "ς"; a per-character lowercase does not.
            final_sigma = r"(?<=\p{Cased}\p{Case_Ignorable}*)Σ(?!\p{Case_Ignorable}*\p{Cased})"
            steps.append(normalizers.Replace(Regex(final_sigma), "ς"))
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


class CaptionTokenizer:
    """`tokenizer(captions, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")`,
    with the same ids in less time for a tokenizer with CLIP's cleanup: captions in plain ASCII without "&" (most
    web captions) go through a copy of it whose normalizer keeps only the cleanup steps that can change them
    (`clip_normalizer(plain_ascii=True)`). The whole cleanup, 469 rewrites each a pass over the text, costs 0.1-0.2 ms
    a caption, most of what tokenizing costs. Any other tokenizer is called as it is.
    """

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.plain_ascii = _plain_ascii_copy(tokenizer)

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        def tokenize(tokenizer, texts):
            return tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")

        plain = [caption.isascii() and "&" not in caption for caption in captions]
        if self.plain_ascii is None or not any(plain):
            return dict(tokenize(self.tokenizer, captions))
        if all(plain):
            return dict(tokenize(self.plain_ascii, captions))
        fast = tokenize(self.plain_ascii, [caption for caption, is_plain in zip(captions, plain) if is_plain])
        full = tokenize(self.tokenizer, [caption for caption, is_plain in zip(captions, plain) if not is_plain])
        rows = torch.tensor(plain)
        merged = {}
        for name, values in fast.items():
            merged[name] = values.new_empty((len(captions), *values.shape[1:]))
            merged[name][rows], merged[name][~rows] = values, full[name]
        return merged


def _plain_ascii_copy(tokenizer):
    """A copy of `tokenizer` with `clip_normalizer(plain_ascii=True)` if its normalizer is CLIP's cleanup, else None."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    if normalizer is None:
        return None
    for lowercase in (True, False):
        if normalizer.__getstate__() == clip_normalizer(lowercase).__getstate__():
            plain = copy.deepcopy(tokenizer)
            plain.backend_tokenizer.normalizer = clip_normalizer(lowercase, plain_ascii=True)
            return plain
    return None


def clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's id layout: the 256 byte symbols, the same with the end-of-word mark, each merge result, bos, eos.

    Keeping every byte symbol in both forms means no input ever maps to an unknown token.
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def _clip_backend(model: BPE, lowercase: bool) -> Tokenizer:
    backend = Tokenizer(model)
    backend.normalizer = clip_normalizer(lowercase)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.Sequence([
        decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " "), decoders.Strip(" ", 0, 1),
    ])
    return backend


def _clip_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], lowercase: bool, context_length: int
) -> PreTrainedTokenizerFast:
    model = BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD, unk_token=EOS_TOKEN)
    backend = _clip_backend(model, lowercase)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}", pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    # Padding with eos as transformers' CLIP checkpoints do: the text tower pools at the first eos anyway.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN, model_max_length=context_length,
        # A caption that spells out "<|endoftext|>" is text, as in open_clip: it must not end the
        # sequence early, since the text tower pools at the first eos.
        split_special_tokens=True,
    )


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split()) for line in lines if line and not line.startswith("#version")]


def load_clip_tokenizer(context_length: int = 77) -> PreTrainedTokenizerFast:
    """OpenAI CLIP's 49,408-token BPE tokenizer, from the files shipped in `bpe/`."""
    vocab = json.loads((BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    return _clip_tokenizer(vocab, _read_merges(BPE_DIR / "merges.txt"), lowercase=True, context_length=context_length)


def train_bpe_tokenizer(
    captions: Iterable[str],
    vocab_size: int = 49408,
    context_length: int = 77,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """A CLIP-style byte-level BPE tokenizer trained on `captions`, for other languages or domains.

    It shares CLIP's cleanup, pre-tokenization and id layout, so bos and eos are the two highest ids
    and `vocab_size` is an upper bound (small corpora run out of merges first).
    """
    byte_symbols = 2 * len(bytes_to_unicode())
    if vocab_size < byte_symbols + 2:
        raise ValueError(f"vocab_size must be at least {byte_symbols + 2} (byte symbols plus bos and eos)")
    trainer_backend = _clip_backend(BPE(end_of_word_suffix=END_OF_WORD), lowercase)
    trainer = BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False, end_of_word_suffix=END_OF_WORD,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    trainer_backend.train_from_iterator(captions, trainer=trainer)
    trained = json.loads(trainer_backend.to_str())["model"]["merges"]
    merges = [tuple(pair) for pair in trained][: vocab_size - byte_symbols - 2]
    return _clip_tokenizer(clip_vocabulary(merges), merges, lowercase, context_length)


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The ids a PSD-CLIP text config needs from its tokenizer."""
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
