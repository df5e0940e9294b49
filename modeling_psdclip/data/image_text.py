"""Torch datasets of decoded image-caption records, over a map-style or a streaming `datasets` source.

Every record is `{"image": PIL RGB image, "caption": str, "key": SampleKey, "skipped": {reason: count}}`.
Bad rows are skipped, never raised: `skipped` carries the reasons of the rows passed over on the way to this
record, so the counts travel with the data through DataLoader workers and processes.
"""

from collections import Counter

import datasets
import torch

from .errors import DataError
from .records import BadRecord, RecordColumns
from .sampling import CAPTION_STREAM, SampleKey, sample_rng


class ImageTextDataset(torch.utils.data.Dataset):
    """Map-style: indexed by `SampleKey` (from `EpochSampler`) or a plain int (epoch 0).

    A bad row is replaced by the next usable one, so batches keep their size, and the same size on every
    process. Only the row asked for is counted as skipped: the rows tried in its place are counted when they
    are asked for themselves, so one epoch counts each bad row once.
    """

    def __init__(self, source: datasets.Dataset, columns: RecordColumns, seed: int = 0):
        if len(source) == 0:
            raise DataError("the dataset has no records")
        self.source = source.with_format(None)
        self.columns = columns
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: SampleKey | int) -> dict:
        key = self._checked_key(key)
        return self._record(key, lambda: self.source[key.index])

    def __getitems__(self, keys: list) -> list[dict]:
        """`[self[key] for key in keys]`, with the rows read in one Arrow call and same-size raw images decoded as
        one array (`RecordColumns.with_batch_decoded_images`). The DataLoader fetches its batches through this."""
        keys = [self._checked_key(key) for key in keys]
        try:
            columns = self.source[[key.index for key in keys]]
            rows = self.columns.with_batch_decoded_images([dict(zip(columns, values))
                                                           for values in zip(*columns.values())])
        except Exception:
            # One row that cannot be read fails the whole read; read one by one, it is one bad record.
            return [self._record(key, lambda key=key: self.source[key.index]) for key in keys]
        return [self._record(key, lambda row=row: row) for key, row in zip(keys, rows)]

    def _checked_key(self, key: SampleKey | int) -> SampleKey:
        key = SampleKey(*key) if isinstance(key, tuple) else SampleKey(0, int(key))
        if not 0 <= key.index < len(self):
            # Python iterates a dataset without __iter__ by indexing from 0 until IndexError: `for record in
            # dataset` ends here. The replacement of a bad row below stays inside the range.
            raise IndexError(f"index {key.index} is out of range for a dataset of {len(self)} records")
        return key

    def _record(self, key: SampleKey, load_row) -> dict:
        """The record of `key`, whose own row `load_row` gives; a bad one is replaced by the next usable row."""
        skipped = Counter()
        for offset in range(len(self)):
            index = (key.index + offset) % len(self)
            try:
                image, caption = self.columns.read(load_row if offset == 0 else lambda: self.source[index],
                                                   sample_rng(self.seed, key, CAPTION_STREAM))
            except BadRecord as bad:
                if offset == 0:
                    skipped[bad.reason] += 1
                continue
            return {"image": image, "caption": caption, "key": key, "skipped": dict(skipped)}
        raise DataError("the dataset has no usable record")


class ImageTextStream(torch.utils.data.IterableDataset):
    """Streaming: reads a `datasets.IterableDataset` through a seeded shuffle buffer.

    Call `set_epoch(epoch)` before each epoch: it reshuffles (datasets shuffles with seed + epoch) and enters
    the sample keys. Bad rows are dropped; their counts ride on the next record yielded (on the last one for
    bad rows at the end of the stream).
    """

    def __init__(self, source: datasets.IterableDataset, columns: RecordColumns, seed: int = 0,
                 shuffle_buffer: int | None = 1000):
        source = source.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else source
        self.source = arrow_rows(source)
        self.columns = columns
        self.seed = seed

    def set_epoch(self, epoch: int):
        self.source.set_epoch(epoch)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        epoch = self.source.epoch
        ready, skipped = None, Counter()
        for position, row in enumerate(self.source):
            # Each worker reads its own shards: interleaving positions keeps keys distinct across workers.
            key = SampleKey(epoch, position * num_workers + worker_id)
            try:
                image, caption = self.columns.read(lambda: row.to_pylist()[0],
                                                   sample_rng(self.seed, key, CAPTION_STREAM))
            except BadRecord as bad:
                skipped[bad.reason] += 1
                continue
            if ready is not None:
                yield ready
            ready, skipped = {"image": image, "caption": caption, "key": key, "skipped": dict(skipped)}, Counter()
        if ready is not None:
            ready["skipped"] = dict(Counter(ready["skipped"]) + skipped)
            yield ready


def arrow_rows(source: datasets.IterableDataset) -> datasets.IterableDataset:
    """`source` yielding each row as a one-row Arrow table.

    Converted to Python by the stream, a row that cannot be converted ends the whole iteration; converted one by
    one, it is one bad record.
    """
    return source.with_format("arrow")
