"""WebDataset `.tar` shards as a `datasets` dataset of raw bytes.

The `datasets` "webdataset" builder decodes `.txt` strictly, so one undecodable caption fails the whole load,
and it needs every shard to hold the same fields. Reading the members with `tarfile` and keeping the bytes lets
a bad caption be skipped later like any other bad record, and lets `jpg`+`txt` and `png`+`json` shards mix.

A damaged shard (truncated by an interrupted download, or not a tar at all) gives the samples before the damage
and then one row marked `unreadable`, skipped and counted like any bad record: how many samples the damage hid
cannot be known.
"""

import hashlib
import itertools
import os
import tarfile

import datasets

from .errors import DataError
from .records import UNREADABLE, is_regular_file

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
FEATURES = datasets.Features({
    "image": datasets.Image(decode=False),
    "txt": datasets.Value("binary"),
    "json": datasets.Value("binary"),
    "cls": datasets.Value("binary"),
    UNREADABLE: datasets.Value("bool"),
})


def load_webdataset_shards(shards: list[str], streaming: bool = False):
    """Columns `image` (the first image member of each sample), `txt`, `json` and `cls` (raw bytes, or None)."""
    if streaming:
        return datasets.IterableDataset.from_generator(_samples, features=FEATURES, gen_kwargs={"shards": shards})
    try:
        # The cache key must change when a shard is rewritten in place; by default it covers only the paths.
        return datasets.Dataset.from_generator(_samples, features=FEATURES, gen_kwargs={"shards": shards},
                                               fingerprint=_fingerprint(shards))
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        raise (cause if isinstance(cause, DataError) else DataError(f"cannot read the tar shards: {cause}")) from None


def _fingerprint(shards: list[str]) -> str:
    # The features are part of it: a cache written with other columns must not be reused.
    stats = [(shard, stat.st_size, stat.st_mtime_ns) for shard, stat in zip(shards, map(os.stat, shards))]
    return hashlib.sha256(repr((stats, FEATURES)).encode()).hexdigest()


def _samples(shards: list[str]):
    for shard in shards:
        complete = False
        # A FIFO or a device named *.tar would block or never end: only a regular file is opened.
        if is_regular_file(shard):
            try:
                with tarfile.open(shard) as tar:
                    files = (member for member in tar if member.isfile())
                    for key, members in itertools.groupby(files, key=lambda member: _split_name(member.name)[0]):
                        yield _sample(key, {_split_name(m.name)[1]: tar.extractfile(m).read() for m in members})
                    complete = _ends_with_end_of_archive(tar)
            except (tarfile.TarError, OSError, EOFError):
                pass
        if not complete:
            yield {"image": None, "txt": None, "json": None, "cls": None, UNREADABLE: True}


def _ends_with_end_of_archive(tar: tarfile.TarFile) -> bool:
    """Whether the members read end at the two zero blocks that close a tar archive.

    tarfile stops without an error at a header cut short, so a shard truncated there would lose its remaining
    samples without a trace.
    """
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    return len(end) == 2 * tarfile.BLOCKSIZE and not any(end)


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the sample key runs to the first dot of the file name, the field is the rest."""
    folder, _, file_name = name.rpartition("/")
    stem, _, field = file_name.partition(".")
    return f"{folder}/{stem}" if folder else stem, field.lower()


def _sample(key: str, fields: dict[str, bytes]) -> dict:
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in fields), None)
    image = {"bytes": fields[extension], "path": f"{key}.{extension}"} if extension else None
    return {"image": image, **{field: fields.get(field) for field in ("txt", "json", "cls")}, UNREADABLE: False}
