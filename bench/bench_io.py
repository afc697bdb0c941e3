"""The two I/O techniques of the build, each against the plain way, in one run.

    python bench/bench_io.py [--scale 1] [--files 4000] [--gb 4]

1. Cold reads of the synthetic crops, one file after the other (what a decode worker does), without and
   with pipeline.runtime.overlap.ReadAhead announcing the next files to the kernel. Needs to drop the page cache
   (root: writes /proc/sys/vm/drop_caches); without that the read half is skipped.
2. Writing a large file (default 12 GB: more than the kernel lets sit dirty, as a 21 GB release is): plain
   buffered writes hashed with sha256 and one fsync at the end, against pipeline.runtime.overlap's HashingWriter
   (sha256 on the way, write-behind with sync_file_range), also fsynced at the end.

Each pair alternates twice (A B A B) on different files, so a drift of the shared machine shows.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OUT, archive, image_files  # noqa: E402

from pipeline.runtime.overlap import HashingWriter, ReadAhead  # noqa: E402

CHUNK = 1 << 20


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def read_plain(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb") as fh:
            fh.read()


def read_ahead(paths: list[str]) -> None:
    with ReadAhead(paths) as ahead:
        for done, path in enumerate(paths, 1):
            with open(path, "rb") as fh:
                fh.read()
            ahead.done(done)


def write_plain(path: Path, total: int, block: bytes) -> None:
    sha = hashlib.sha256()  # the shard writer hashes what it writes: so does the plain way, to compare like with like
    with open(path, "wb") as fh:
        for _ in range(total // len(block)):
            sha.update(block)
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def write_behind(path: Path, total: int, block: bytes) -> None:
    writer = HashingWriter(path)
    for _ in range(total // len(block)):
        writer.write(block)
    writer.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=4000, help="files per cold-read pass")
    ap.add_argument("--gb", type=float, default=12.0, help="GB per write pass")
    a = ap.parse_args()

    files = [str(p) for p in image_files(archive(a.scale, 0, len(os.sched_getaffinity(0))))]
    print("| what | pass | MB/s |")
    print("|---|---:|---:|")
    if len(files) >= 4 * a.files and drop_page_cache():
        for k, (name, fn) in enumerate([("cold read, one file after the other", read_plain), ("cold read with ReadAhead", read_ahead)] * 2):
            part = files[k * a.files : (k + 1) * a.files]
            drop_page_cache()
            start = time.perf_counter()
            fn(part)
            seconds = time.perf_counter() - start
            print(f"| {name} | {k // 2 + 1} | {sum(os.path.getsize(p) for p in part) / seconds / 1e6:,.0f} |", flush=True)
    else:
        print("| cold reads skipped: dropping the page cache needs root (or the archive is too small) | | |")

    OUT.mkdir(parents=True, exist_ok=True)
    block = os.urandom(CHUNK)
    total = int(a.gb * 1e9) // CHUNK * CHUNK
    for k, (name, fn) in enumerate([("write, buffered + fsync", write_plain), ("write, HashingWriter (write-behind) + fsync", write_behind)] * 2):
        target = OUT / f"bench-io-{k}.bin"
        start = time.perf_counter()
        fn(target, total, block)
        seconds = time.perf_counter() - start
        target.unlink()
        print(f"| {name} | {k // 2 + 1} | {total / seconds / 1e6:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
