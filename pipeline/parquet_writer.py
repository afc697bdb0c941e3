"""Parquet shards that `datasets` reads as Image + ClassLabel: data/{split}-{i:05d}-of-{n:05d}.parquet.

Rows are streamed: one row group's image bytes are in memory at a time, never a whole split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.overlap import BackgroundWriter, BinaryColumnBuffers, HashingWriter
from pipeline.records import ReleaseRecord

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


def _table(rows: list[tuple[ReleaseRecord, bytes]], schema: pa.Schema, buffers: BinaryColumnBuffers) -> pa.Table:
    # The image column is assembled from a binary array (one copy of each image's bytes into a reused
    # buffer) rather than from per-row dicts, which made Arrow inspect every row in Python.
    images = pa.StructArray.from_arrays(
        [buffers.array([data for _, data in rows]), pa.array([image_filename(r) for r, _ in rows], pa.string())],
        fields=list(IMAGE_TYPE),
    )
    cols = {
        "image": images,
        "label": pa.array([r.label for r, _ in rows], pa.int64()),
        "image_id": [r.image_id for r, _ in rows],
        "source_file": [r.source_file for r, _ in rows],
        "patient_id": [r.patient_id for r, _ in rows],
        "annotator": [r.annotator for r, _ in rows],
        "group_id": [r.group_id for r, _ in rows],
        "pixel_sha256": [r.pixel_sha256 for r, _ in rows],
        "phash": [r.phash for r, _ in rows],
        "extra": [json.dumps(dict(r.extra), sort_keys=True) if r.extra else None for r, _ in rows],
    }
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


def write_split(
    data_dir: Path,
    split: str,
    records: Iterable[ReleaseRecord],
    read_bytes: Callable[[ReleaseRecord], bytes],
    class_names: list[str],
    *,
    max_shard_bytes: int,
    max_row_group_bytes: int,
    image_compression: str = "none",
    on_shard: Callable[[Path], None] | None = None,
) -> list[ShardInfo]:
    """Write one split's shards; names carry -of-N once N is known. An empty split writes no shard.
    ``on_shard(path)`` is called with each shard's temporary path as soon as the shard is complete."""
    schema = arrow_schema(class_names)
    data_dir.mkdir(parents=True, exist_ok=True)
    shards: list[ShardInfo] = []
    writer: BackgroundWriter | None = None
    sink: HashingWriter | None = None
    shard_rows = shard_bytes = 0
    group: list[tuple[ReleaseRecord, bytes]] = []
    group_bytes = 0
    buffers = BinaryColumnBuffers()

    def tmp_name(i: int) -> Path:
        return data_dir / f".{split}-{i:05d}.parquet.partial"

    def flush_group() -> None:
        nonlocal group, group_bytes, shard_rows, shard_bytes, writer, sink
        if not group:
            return
        if writer is None:
            sink = HashingWriter(tmp_name(len(shards)))
            writer = _open_writer(sink, schema, image_compression)
        writer.write_table(_table(group, schema, buffers), row_group_size=len(group))
        shard_rows += len(group)
        shard_bytes += group_bytes
        group, group_bytes = [], 0

    def close_shard() -> None:
        nonlocal writer, shard_rows, shard_bytes
        if writer is None:
            return
        writer.close()
        sink.close()
        size, digest = sink.digest()
        shards.append(ShardInfo(tmp_name(len(shards)), shard_rows, shard_bytes, digest, size))
        writer, shard_rows, shard_bytes = None, 0, 0
        if on_shard is not None:
            on_shard(shards[-1].path)

    for record in records:
        data = read_bytes(record)
        if group and group_bytes + len(data) > max_row_group_bytes:
            flush_group()
        if shard_bytes + group_bytes + len(data) > max_shard_bytes and (shard_rows or group):
            flush_group()
            close_shard()
        group.append((record, data))
        group_bytes += len(data)
    flush_group()
    close_shard()

    final = []
    for i, shard in enumerate(shards):
        target = data_dir / f"{split}-{i:05d}-of-{len(shards):05d}.parquet"
        os.replace(shard.path, target)
        final.append(ShardInfo(target, shard.rows, shard.image_bytes, shard.sha256, shard.size))
    return final
