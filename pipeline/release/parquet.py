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
    schema = arrow_schema(class_names)
    data_dir.mkdir(parents=True, exist_ok=True)
    shards: list[ShardInfo] = []
    writer: BackgroundWriter | None = None
    sink: HashingWriter | None = None
    shard_count = shard_bytes = 0
    group: list[tuple[ReleaseRecord, bytes]] = []
    group_bytes = 0
    buffers = BinaryColumnBuffers()
    plan = iter(shard_rows)

    def tmp_name(i: int) -> Path:
        return data_dir / f".{split}-{i:05d}.parquet.partial"

    def flush_group() -> None:
        nonlocal group, group_bytes, shard_count, shard_bytes, writer, sink
        if not group:
            return
        if writer is None:
            sink = HashingWriter(tmp_name(len(shards)))
            writer = _open_writer(sink, schema, image_compression)
        writer.write_table(_table(group, schema, buffers), row_group_size=len(group))
        shard_count += len(group)
        shard_bytes += group_bytes
        group, group_bytes = [], 0

    def close_shard() -> None:
        nonlocal writer, shard_count, shard_bytes
        flush_group()
        writer.close()
        sink.close()
        size, digest = sink.digest()
        check_shard_size(sink.path, size, max_shard_bytes)
        shards.append(ShardInfo(tmp_name(len(shards)), shard_count, shard_bytes, digest, size))
        writer, shard_count, shard_bytes = None, 0, 0
        if on_shard is not None:
            on_shard(shards[-1].path)

    wanted = 0
    for record in records:
        if shard_count + len(group) == wanted and (shard_count or group):
            close_shard()
        if not (shard_count or group):
            wanted = next(plan, 0)
            if wanted == 0:
                raise ValueError(f"split {split}: more records than the shard plan's {sum(shard_rows)} rows")
        data = read_bytes(record)
        if group and group_bytes + len(data) > max_row_group_bytes:
            flush_group()
        group.append((record, data))
        group_bytes += len(data)
    if shard_count or group:
        close_shard()
    if len(shards) != len(shard_rows) or [s.rows for s in shards] != list(shard_rows):
        raise ValueError(f"split {split}: wrote shards of {[s.rows for s in shards]} rows, the plan was {list(shard_rows)}")

    final = []
    for i, shard in enumerate(shards):
        target = data_dir / parquet_shard_name(split, i, len(shards))
        os.replace(shard.path, target)
        final.append(ShardInfo(target, shard.rows, shard.image_bytes, shard.sha256, shard.size))
    return final
