"""Convert OpenAI CLIP's BPE merges (as shipped in the open_clip_torch wheel) into vocab.json + merges.txt.

    pip download open_clip_torch --no-deps -d /tmp/oc
    python scripts/convert_clip_bpe.py /tmp/oc/open_clip_torch-*.whl [--make-reference-fixture]

The vocabulary is built the way OpenAI's simple_tokenizer builds it (see `clip_vocabulary`).
`--make-reference-fixture` also runs the wheel's own tokenizer on `CAPTIONS` and stores its ids for the
tests, after checking that its vocabulary is the one written here.
"""

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeling_psdclip.tokenization import BOS_TOKEN, BPE_DIR, EOS_TOKEN, clip_vocabulary  # noqa: E402

MERGES_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
TOKENIZER_MEMBER = "open_clip/tokenizer.py"
# simple_tokenizer keeps the first 49152 - 256 - 2 merges, after the version line.
NUM_MERGES = 49152 - 256 - 2
FIXTURE = REPO / "tests" / "fixtures" / "tokenizer" / "reference_ids.json"
CONTEXT_LENGTH = 77

CAPTIONS = [
    "a photo of a cat",
    "A Photo Of A DOG, sitting on the grass!",
    "It's a bird... no, it's a plane?! (probably)",
    "she'll say they're sure we've done what I'd've done; don't WON'T",
    "don\u2019t \u201cquote\u201d me \u2018here\u2019",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve co\u00f6perate \u00c5ngstr\u00f6m",
    "cafe\u0301 decomposed accents",
    "\u5bcc\u58eb\u5c71\u3068\u685c\u306e\u5199\u771f",
    "\u4e00\u53ea\u732b\u5728\u6c99\u53d1\u4e0a\u7761\u89c9\uff0c\u5f88\u53ef\u7231\uff01",
    "\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33 \uff11\uff12\uff13",
    "\uc11c\uc6b8\uc758 \uc57c\uacbd \ud55c\uad6d\uc5b4",
    "\u041c\u043e\u0441\u043a\u0432\u0430 \u0437\u0438\u043c\u043e\u0439 "
    "\u0394\u0399\u0391\u039a\u039f\u03a0\u0397\u03a3 \u039f\u0394\u039f\u03a3 \u0391\u0398\u0397\u039d\u0391\u03a3",
    "emoji party \U0001f389\U0001f431\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
    "non\u00a0breaking\u00a0space\ttab\nnewline\r\ncrlf   many    spaces  ",
    "  leading and trailing whitespace \u2003 em space \u3000 ideographic  ",
    "Tom &amp; Jerry &lt;3 &quot;classic&quot; it&#39;s &#x27;great&#x27; &nbsp;ok",
    "double escaped &amp;amp; and &amp;quot;quotes&amp;quot; plus &amp;lt;tag&amp;gt;",
    "Broken text&hellip; it&#x2019;s \ufb02ubberi\ufb01c &mdash; &copy; 2021 &reg;",
    "html with a tag <b>bold</b> &amp; more",
    "1234567890 3.14159 $1,000,000 50% 2nd 21st 1080p 4k 12:30pm 2021-06-01",
    "e-mail: someone@example.com url https://example.com/path?q=1&x=2 #hashtag @user",
    "control\x00chars\x07and\x1bescapes \x1b[31mred\x1b[0m text\u200b zero\ufeffwidth",
    "C1 controls \x93smart\x94 and \x85 and \x80 euro",
    "ligatures \ufb00 \ufb03 \ufb04 \u0132 \u01c6",
    "\u0130stanbul DOES ST\u00dfE STRASSE \u1e9e",
    "symbols \u00bd \u00b2 \u2122 \u2460 \u2192 \u00d7 \u00f7 \u00b1 \u00b0C",
    "<|endoftext|> is literal text here",
    "".join(["very long caption that keeps going "] * 20),
    " ".join(str(i) for i in range(100)),
    "\u00c3\u00a9 mojibake",
    "",
]
# ftfy repairs this mojibake heuristically; the normalizer cannot (see modeling_psdclip/tokenization.py).
KNOWN_DIFFERENT = ["\u00c3\u00a9 mojibake"]


def read_clip_merges(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        lines = gzip.decompress(archive.read(MERGES_MEMBER)).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]


def write_bpe_files(merges: list[tuple[str, str]], out_dir: Path) -> dict[str, int]:
    vocab = clip_vocabulary(merges)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab


def load_reference_tokenizer(wheel: Path, workdir: Path):
    """The wheel's tokenizer module, imported by path: the open_clip package itself needs torchvision."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(workdir, members=[MERGES_MEMBER, TOKENIZER_MEMBER])
    spec = importlib.util.spec_from_file_location("clip_reference_tokenizer", workdir / TOKENIZER_MEMBER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(context_length=CONTEXT_LENGTH)


def make_reference_fixture(wheel: Path, vocab: dict[str, int]) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        reference = load_reference_tokenizer(wheel, Path(workdir))
        # open_clip renames the two special tokens; their ids are OpenAI's.
        renamed = {"<start_of_text>": BOS_TOKEN, "<end_of_text>": EOS_TOKEN}
        if {renamed.get(token, token): i for token, i in reference.encoder.items()} != vocab:
            raise SystemExit("the converted vocabulary differs from the reference tokenizer's")
        rows = reference(CAPTIONS).tolist()
    # The reference pads with 0; keep each row up to and including its end token.
    ids = [row[: row.index(reference.eot_token_id) + 1] for row in rows]
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    cases = [
        {"text": text, "ids": row, "matches": text not in KNOWN_DIFFERENT}
        for text, row in zip(CAPTIONS, ids, strict=True)
    ]
    # One case a line keeps the fixture readable and its diffs small.
    lines = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in cases)
    FIXTURE.write_text(
        f'{{"source": "{wheel.name}: {TOKENIZER_MEMBER} SimpleTokenizer",\n'
        f' "context_length": {CONTEXT_LENGTH},\n "cases": [\n  {lines}\n ]}}\n',
        encoding="utf-8",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="an open_clip_torch wheel")
    parser.add_argument("--out-dir", type=Path, default=BPE_DIR)
    parser.add_argument("--make-reference-fixture", action="store_true",
                        help=f"also write {FIXTURE.relative_to(REPO)} from the wheel's tokenizer")
    args = parser.parse_args()
    vocab = write_bpe_files(read_clip_merges(args.wheel), args.out_dir)
    print(f"wrote {len(vocab)} tokens to {args.out_dir}")
    if args.make_reference_fixture:
        make_reference_fixture(args.wheel, vocab)
        print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
