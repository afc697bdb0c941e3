"""How many shards a split gets and how many rows each holds: one plan for its Parquet and its tar shards.

DataLoader workers read whole shards: a split with fewer shards than workers leaves workers idle (webdataset
raises "No samples found", `datasets` streaming caps the workers at the shard count), and uneven shards leave
one worker doing most of an epoch. So every split gets at least ``min_shards_per_split`` shards (a split with
fewer rows gets one row per shard), row counts differ by at most one between a split's shards, and each shard
file, every byte of it (the Parquet footer, tar headers and padding included), stays within ``max_shard_bytes``.

The plan is made before any image is read, from sizes known in advance: a published file's size on disk, or
for an image republished as PNG an upper bound of the PNG's size. Parquet and tar shard ``i`` of a split hold
the same rows, in publishing order.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from pipeline.release import parquet
from pipeline.release import wds
from pipeline.config import ReleaseConfig
from pipeline.stages.decode import publish_as_original
from pipeline.records import ImageFacts, ReleaseRecord

# zlib's compressBound: deflate never makes n bytes longer than this (stored blocks in the worst case).
_ZLIB_MAX_EXPANSION = (12, 14, 25)
_PNG_FIXED = 8 + 25 + 12  # signature, IHDR, IEND
_PNG_CHUNK = 12  # length, type and CRC of each IDAT chunk
_PNG_MIN_IDAT = 1024  # Pillow writes IDAT chunks of its 64 kB encoder buffer; 1 kB leaves a wide margin


class ShardPlanError(ValueError):
    """No plan keeps every shard within the byte bound (one row alone is larger)."""


def zlib_bound(n: int) -> int:
    return n + sum(n >> shift for shift in _ZLIB_MAX_EXPANSION) + 13 + len(zlib.compress(b""))


def png_size_bound(width: int, height: int, source_size: int) -> int:
    """Upper bound of the PNG Pillow writes for an 8-bit RGB image: the deflated filtered rows in their worst
    case plus chunk overheads, plus the source file's size for any profile or metadata chunk carried over."""
    idat = zlib_bound(height * (1 + 3 * width))
    return _PNG_FIXED + idat + _PNG_CHUNK * (idat // _PNG_MIN_IDAT + 1) + source_size


def published_size_bound(path: Path, facts: ImageFacts, codec: str) -> int:
    """Bytes the release will store for this image: exact for a file published as it is (decode.publishable_bytes),
    an upper bound for one republished as PNG. A bound, not the PNG's size: the plan must not depend on whether
    the cache holds the PNG already (the shards of a cold and a warm build are the same)."""
    size = path.stat().st_size
    return size if publish_as_original(facts, codec) else png_size_bound(facts.width, facts.height, size)


@dataclass(frozen=True)
class RowCost:
    """Upper bounds of what one row adds to a shard of each format."""

    parquet: int
    tar: int
    image: int  # the image's bytes (for counting Parquet row groups)


@dataclass(frozen=True)
class ShardBudget:
    """What a whole shard may hold, and the per-file overheads that do not depend on its rows."""

    max_shard_bytes: int
    min_shards: int
    max_row_group_bytes: int
    parquet_file_overhead: int  # footer, schema, magic bytes
    parquet_row_group_overhead: int  # page headers and column-chunk metadata of one row group
    tar_end: int  # end-of-archive blocks and padding to a whole record, at most


def balanced_counts(rows: int, shards: int) -> list[int]:
    """``rows`` spread over ``shards`` with counts differing by at most one, larger shards first."""
    base, extra = divmod(rows, shards)
    return [base + 1 if i < extra else base for i in range(shards)]


@dataclass(frozen=True)
class _Prefix:
    parquet: list[int]
    tar: list[int]
    image: list[int]

    @classmethod
    def of(cls, costs: Sequence[RowCost]) -> _Prefix:
        return cls(*(list(accumulate((getattr(c, f) for c in costs), initial=0)) for f in ("parquet", "tar", "image")))

    def between(self, start: int, end: int) -> tuple[int, int, int]:
        return self.parquet[end] - self.parquet[start], self.tar[end] - self.tar[start], self.image[end] - self.image[start]


def _row_group_bound(rows: int, image_bytes: int, max_row_group_bytes: int) -> int:
    # The writer starts a new row group when the next image would overflow the current one, so any two
    # neighbouring groups hold more than max_row_group_bytes together: G - 1 < 2 * bytes / max.
    return min(rows, 1 + 2 * image_bytes // max_row_group_bytes)


def _shard_fits(parquet: int, tar: int, image: int, rows: int, budget: ShardBudget) -> bool:
    """Whether a shard of ``rows`` rows whose row costs sum to (parquet, tar, image) stays within the bound in both formats."""
    groups = _row_group_bound(rows, image, budget.max_row_group_bytes)
    parquet += budget.parquet_file_overhead + groups * budget.parquet_row_group_overhead
    return parquet <= budget.max_shard_bytes and tar + budget.tar_end <= budget.max_shard_bytes


def _plan_fits(prefix: _Prefix, counts: list[int], budget: ShardBudget) -> bool:
    ends = list(accumulate(counts))
    return all(_shard_fits(*prefix.between(end - count, end), count, budget) for end, count in zip(ends, counts))


def plan_split(costs: Sequence[RowCost], budget: ShardBudget, *, describe_row=lambda i: f"row {i}") -> list[int]:
    """Rows per shard for one split, in publishing order: the fewest shards, at least ``budget.min_shards``
    (one row per shard when the split has fewer rows), balanced to within one row, each within the byte bound.
    An empty split has no shard. ``describe_row(i)`` names a row in the error when one row alone is too large."""
    n = len(costs)
    if n == 0:
        return []
    for i, cost in enumerate(costs):
        if not _shard_fits(cost.parquet, cost.tar, cost.image, 1, budget):
            raise ShardPlanError(f"{describe_row(i)}: one row alone exceeds [shards] max_shard_bytes = {budget.max_shard_bytes:,}")
    prefix = _Prefix.of(costs)
    total = max(prefix.parquet[-1], prefix.tar[-1])
    shards = min(n, max(budget.min_shards, -(-total // budget.max_shard_bytes)))
    while not _plan_fits(prefix, balanced_counts(n, shards), budget):
        shards += 1  # ends at one row per shard at the latest, which fits (checked above)
    return balanced_counts(n, shards)


def release_budget(config: ReleaseConfig, records: Sequence[ReleaseRecord], min_shards: int | None = None) -> ShardBudget:
    longest = max((len(t.encode("utf-8")) for r in records for t in parquet.string_values(r).values() if t), default=0)
    return ShardBudget(
        max_shard_bytes=config.max_shard_bytes,
        min_shards=config.min_shards_per_split if min_shards is None else min_shards,
        max_row_group_bytes=config.max_row_group_bytes,
        parquet_file_overhead=parquet.file_overhead_bound(config.class_names),
        parquet_row_group_overhead=parquet.row_group_overhead_bound(longest, config.max_row_group_bytes),
        tar_end=wds.TAR_END_BYTES,
    )


def row_cost(record: ReleaseRecord, image_bytes: int) -> RowCost:
    return RowCost(parquet.row_bytes_bound(record, image_bytes), wds.sample_bytes(record, image_bytes), image_bytes)


def plan_release_split(
    records: Sequence[ReleaseRecord], image_bytes: Sequence[int], config: ReleaseConfig, *, min_shards: int | None = None
) -> list[int]:
    """Rows per shard for one split's records (in publishing order), whose images take ``image_bytes``
    (exact or an upper bound: ``published_size_bound``); ``min_shards`` overrides the config's minimum."""
    costs = [row_cost(r, n) for r, n in zip(records, image_bytes, strict=True)]
    return plan_split(costs, release_budget(config, records, min_shards), describe_row=lambda i: records[i].source_file)
