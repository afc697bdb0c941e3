"""Parquet compression for the image column: what each codec costs to write and read, and what it saves.

    python bench/bench_compression.py [--images 3000] [--scale 1]

Takes the first N images (every k-th file, all classes) of the cached synthetic archive of bench/run.py,
writes them (best of three) as one Parquet file per codec with the release's row groups (the release's Image struct
column, uncompressed metadata aside), reads each back, and prints MB/s and size. Single process, so the
figures are per core. The synthetic crops are an approximation of real ones: what matters is the ratio
between codecs, and how close the compressed size is to the uncompressed one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, archive, image_files  # noqa: E402

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CODECS = [("none", None), ("snappy", None), ("lz4", None), ("zstd", 1), ("zstd", 3)]
ROW_GROUP_BYTES = 100_000_000


def tables(datas: list[bytes]) -> list[pa.Table]:
    out, start, size = [], 0, 0
    for i, d in enumerate(datas + [b""]):
        if i == len(datas) or size + len(d) > ROW_GROUP_BYTES:
            chunk = datas[start:i]
            images = pa.StructArray.from_arrays([pa.array(chunk, pa.binary()), pa.array([f"{k}.tif" for k in range(start, i)])], fields=list(IMAGE_TYPE))
            out.append(pa.Table.from_arrays([images], names=["image"]))
            start, size = i, 0
        size += len(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    files = image_files(archive(a.scale, 0, len(os.sched_getaffinity(0))))
    step = max(1, len(files) // a.images)
    datas = [p.read_bytes() for p in files[::step][: a.images]]
    raw_mb = sum(map(len, datas)) / 1e6
    groups = tables(datas)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "compression.parquet"
    print(f"{len(datas)} images, {raw_mb:.0f} MB of image bytes, {len(groups)} row groups")
    print("| codec | write MB/s (1 core) | read MB/s (1 core) | size vs raw bytes |")
    print("|---|---:|---:|---:|")
    for codec, level in CODECS:
        write_s = read_s = float("inf")
        for _ in range(3):  # best of three: the first pass also pays for page faults and file creation
            start = time.process_time()
            with pq.ParquetWriter(path, groups[0].schema, compression=codec, compression_level=level) as writer:
                for t in groups:
                    writer.write_table(t, row_group_size=t.num_rows)
            write_s = min(write_s, time.process_time() - start)
            size = path.stat().st_size
            start = time.process_time()
            pq.read_table(path, use_threads=False)
            read_s = min(read_s, time.process_time() - start)
        name = codec + (f"-{level}" if level else "")
        print(f"| {name} | {raw_mb / write_s:,.0f} | {raw_mb / read_s:,.0f} | {size / 1e6 / raw_mb:.1%} |")
    path.unlink()


if __name__ == "__main__":
    main()
