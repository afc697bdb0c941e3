"""Parquet shards that `datasets` reads as Image + ClassLabel: data/{split}-{i:05d}-of-{n:05d}.parquet.

Rows are streamed: one row group's image bytes are in memory at a time, never a whole split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.runtime.overlap import BackgroundWriter, BinaryColumnBuffers, HashingWriter
from pipeline.records import ReleaseRecord
from pipeline.release.layout import parquet_shard_name

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA_FIELDS = [
    ("image", IMAGE_TYPE),
    ("label", pa.int64()),
    ("image_id", pa.string()),
    ("source_file", pa.string()),
    ("patient_id", pa.string()),
    ("annotator", pa.string()),
    ("group_id", pa.string()),
    ("pixel_sha256", pa.string()),
    ("phash", pa.string()),
    ("extra", pa.string()),
]
STRING_COLUMNS = [name for name, typ in SCHEMA_FIELDS if typ == pa.string()]
IMAGE_SUFFIX = {"TIFF": "tif", "PNG": "png", "JPEG": "jpg"}


def hf_features(class_names: list[str]) -> dict:
    """The `datasets` Features dict (as Features.to_dict() writes it) for the release's columns."""
    feats: dict = {"image": {"_type": "Image"}, "label": {"names": list(class_names), "_type": "ClassLabel"}}
    for name in STRING_COLUMNS:
        feats[name] = {"dtype": "string", "_type": "Value"}
    return feats


def arrow_schema(class_names: list[str]) -> pa.Schema:
    # datasets reads this key to restore Image and ClassLabel without the dataset card.
    meta = {b"huggingface": json.dumps({"info": {"features": hf_features(class_names)}}, sort_keys=True).encode()}
    return pa.schema(SCHEMA_FIELDS, metadata=meta)


def image_filename(record: ReleaseRecord) -> str:
    return f"{record.image_id}.{IMAGE_SUFFIX.get(record.file_format, 'png') if record.lossless else 'png'}"


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    rows: int
    image_bytes: int
    sha256: str = ""  # of the shard file, taken while it was written
    size: int = 0


def extra_json(record: ReleaseRecord) -> str:
    """The `extra` column: the further annotation columns as a JSON object, `{}` when there are none (the tars'
    `json` member holds the same object, so both formats say the same thing)."""
    return json.dumps(dict(record.extra), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def string_values(record: ReleaseRecord) -> dict[str, str | None]:
    """The row's string columns, in schema order."""
    return {
        "image_id": record.image_id,
        "source_file": record.source_file,
        "patient_id": record.patient_id,
        "annotator": record.annotator,
        "group_id": record.group_id,
        "pixel_sha256": record.pixel_sha256,
        "phash": record.phash,
        "extra": extra_json(record),
    }


def row_bytes_bound(record: ReleaseRecord, image_bytes: int) -> int:
    """Upper bound of what one row adds to a shard: its image, and its metadata even if dictionary encoding
    and zstd gained nothing (plain values with length prefixes, plus dictionary indices)."""
    texts = [*string_values(record).values(), image_filename(record)]
    return image_bytes + sum(len(t.encode("utf-8")) + 8 for t in texts if t) + 8 * len(texts) + 16


def file_overhead_bound(class_names: list[str]) -> int:
    """Upper bound of a shard's bytes outside its row groups: magic bytes and the footer's schema, which carries
    the `datasets` features twice (as key-value metadata and inside the base64 Arrow schema)."""
    features = json.dumps({"info": {"features": hf_features(class_names)}}, sort_keys=True).encode()
    return 3 * len(features) + 8192


def row_group_overhead_bound(longest_text: int, max_row_group_bytes: int) -> int:
    """Upper bound of one row group's bytes besides its values: page headers and the footer's column-chunk
    metadata, each column with min/max statistics as long as its longest value; the image column has a page
    per megabyte."""
    columns = len(SCHEMA_FIELDS) + 1  # the image struct is two leaf columns
    return columns * (512 + 4 * longest_text) + (max_row_group_bytes // (1 << 20) + 2) * 64


def _table(rows: list[tuple[ReleaseRecord, bytes]], schema: pa.Schema, buffers: BinaryColumnBuffers) -> pa.Table:
    # The image column is assembled from a binary array (one copy of each image's bytes into a reused
    # buffer) rather than from per-row dicts, which made Arrow inspect every row in Python.
    images = pa.StructArray.from_arrays(
        [buffers.array([data for _, data in rows]), pa.array([image_filename(r) for r, _ in rows], pa.string())],
        fields=list(IMAGE_TYPE),
    )
    values = [string_values(r) for r, _ in rows]
    cols = {"image": images, "label": pa.array([r.label for r, _ in rows], pa.int64())}
    cols.update({name: [v[name] for v in values] for name in STRING_COLUMNS})
    return pa.Table.from_arrays([pa.array(v, schema.field(k).type) if isinstance(v, list) else v for k, v in cols.items()], schema=schema)


def _open_writer(sink: HashingWriter, schema: pa.Schema, image_compression: str = "none") -> BackgroundWriter:
    # Image bytes: config [shards] image_compression ("none" by default: bench/RESULTS.md measures zstd
    # writing 4x and reading 3x slower for 24% smaller synthetic crops); metadata columns: zstd.
    compression = {name: "zstd" for name in ["image.path", "label", *STRING_COLUMNS]}
    compression["image.bytes"] = image_compression
    writer = pq.ParquetWriter(
        sink,
        schema,
        compression=compression,
        use_dictionary=STRING_COLUMNS,
        write_statistics=[c for c in STRING_COLUMNS] + ["label"],
    )
    # Pages are encoded, compressed and written in a background thread (pyarrow releases the GIL there)
    # while the caller reads the next row group's images.
    return BackgroundWriter(writer)


class ShardTooLarge(ValueError):
    """A written shard is larger than the configured bound (the shard plan's bounds did not hold)."""


def check_shard_size(path: Path, size: int, max_shard_bytes: int) -> None:
    if size > max_shard_bytes:
        raise ShardTooLarge(f"{path.name}: {size:,} bytes, over [shards] max_shard_bytes = {max_shard_bytes:,}")


class _SplitWriter:
    """One split's Parquet shards being written: rows are gathered into row groups (at most max_row_group_bytes
    of images each) and shards are closed when the caller says; each shard is hashed as it is written."""

    def __init__(self, data_dir: Path, split: str, schema: pa.Schema, max_shard_bytes: int, max_row_group_bytes: int,
                 image_compression: str, on_shard: Callable[[Path], None] | None) -> None:
        self._dir, self._split, self._schema = data_dir, split, schema
        self._max_shard_bytes, self._max_row_group_bytes, self._image_compression = max_shard_bytes, max_row_group_bytes, image_compression
        self._on_shard = on_shard
        self._buffers = BinaryColumnBuffers()
        self.shards: list[ShardInfo] = []  # the closed shards, under their temporary names
        self._writer: BackgroundWriter | None = None
        self._sink: HashingWriter | None = None
        self._rows = self._image_bytes = 0  # of the open shard's written row groups
        self._group: list[tuple[ReleaseRecord, bytes]] = []
        self._group_bytes = 0

    @property
    def open_rows(self) -> int:
        """Rows of the open shard, written or still gathered."""
        return self._rows + len(self._group)

    def _tmp_path(self) -> Path:
        return self._dir / f".{self._split}-{len(self.shards):05d}.parquet.partial"

    def add(self, record: ReleaseRecord, data: bytes) -> None:
        if self._group and self._group_bytes + len(data) > self._max_row_group_bytes:
            self._flush_group()
        self._group.append((record, data))
        self._group_bytes += len(data)

    def _flush_group(self) -> None:
        if not self._group:
            return
        if self._writer is None:
            self._sink = HashingWriter(self._tmp_path())
            self._writer = _open_writer(self._sink, self._schema, self._image_compression)
        self._writer.write_table(_table(self._group, self._schema, self._buffers), row_group_size=len(self._group))
        self._rows += len(self._group)
        self._image_bytes += self._group_bytes
        self._group, self._group_bytes = [], 0

    def close_shard(self) -> None:
        self._flush_group()
        self._writer.close()
        self._sink.close()
        size, digest = self._sink.digest()
        check_shard_size(self._sink.path, size, self._max_shard_bytes)
        self.shards.append(ShardInfo(self._tmp_path(), self._rows, self._image_bytes, digest, size))
        self._writer, self._rows, self._image_bytes = None, 0, 0
        if self._on_shard is not None:
            self._on_shard(self.shards[-1].path)


def write_split(
    data_dir: Path,
    split: str,
    records: Iterable[ReleaseRecord],
    read_bytes: Callable[[ReleaseRecord], bytes],
    class_names: list[str],
    *,
    shard_rows: Sequence[int],
    max_shard_bytes: int,
    max_row_group_bytes: int,
    image_compression: str = "none",
    on_shard: Callable[[Path], None] | None = None,
) -> list[ShardInfo]:
    """Write one split's shards, ``shard_rows[i]`` rows in shard i (pipeline/release/shards.py plans them); files are
    named -of-N. An empty split writes no shard. Each shard is checked against ``max_shard_bytes`` (every byte
    of the file). ``on_shard(path)`` is called with each shard's temporary path as soon as it is complete."""
    data_dir.mkdir(parents=True, exist_ok=True)
    out = _SplitWriter(data_dir, split, arrow_schema(class_names), max_shard_bytes, max_row_group_bytes, image_compression, on_shard)
    plan = iter(shard_rows)
    wanted = 0
    for record in records:
        if out.open_rows and out.open_rows == wanted:
            out.close_shard()
        if not out.open_rows:
            wanted = next(plan, 0)
            if wanted == 0:
                raise ValueError(f"split {split}: more records than the shard plan's {sum(shard_rows)} rows")
        out.add(record, read_bytes(record))
    if out.open_rows:
        out.close_shard()
    if [s.rows for s in out.shards] != list(shard_rows):
        raise ValueError(f"split {split}: wrote shards of {[s.rows for s in out.shards]} rows, the plan was {list(shard_rows)}")
    return _name_shards(data_dir, split, out.shards)


def _name_shards(data_dir: Path, split: str, shards: list[ShardInfo]) -> list[ShardInfo]:
    """Each shard renamed from its temporary name to its final one, which says how many shards the split has."""
    final = []
    for i, shard in enumerate(shards):
        target = data_dir / parquet_shard_name(split, i, len(shards))
        os.replace(shard.path, target)
        final.append(ShardInfo(target, shard.rows, shard.image_bytes, shard.sha256, shard.size))
    return final
