"""Where the per-image time goes: each piece of decode_file timed alone on one core.

    python bench/bench_decode.py [--images 300] [--scale 1]

Runs on images of the cached synthetic archive of bench/run.py, in one process with one BLAS thread;
each row is the best of five passes over the same images (microseconds per image). The decode floor of
bench/run.py is the "Pillow open + load" row; everything decode_file does beyond it is what makes the
decode stage a multiple of that floor.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import archive, image_files  # noqa: E402

from pipeline.stages.decode import decode_file, open_rgb, pixel_sha256  # noqa: E402
from pipeline.stages.similarity import cell_features, centre_hash  # noqa: E402
from pipeline.stages.phash import phash_of_grey  # noqa: E402


def best_us(fn, items, passes: int = 5) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for x in items:
            fn(x)
        times.append((time.perf_counter() - start) / len(items))
    return min(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    files = [p for p in image_files(archive(a.scale, 0, len(os.sched_getaffinity(0)))) if p.suffix == ".tif"]
    files = files[:: max(1, len(files) // a.images)][: a.images]
    datas = [p.read_bytes() for p in files]
    opened = [open_rgb(d, (288, 288)) for d in datas]
    greys = [np.asarray(img.convert("L")) for img, *_ in opened]
    rows = [
        ("floor: Pillow open + load (path)", lambda p: Image.open(p).load(), files),
        ("read file", lambda p: p.read_bytes(), files),
        ("sha256 of file bytes", lambda d: hashlib.sha256(d).hexdigest(), datas),
        ("decode + checks (open_rgb)", lambda d: open_rgb(d, (288, 288)), datas),
        ("sha256 of pixels", lambda o: pixel_sha256(o[1]), opened),
        ("grey conversion", lambda o: np.asarray(o[0].convert("L")), opened),
        ("pHash (pipeline.stages.phash)", phash_of_grey, greys),
        ("pHash (imagehash, for comparison)", lambda o: int(str(imagehash.phash(o[0])), 16), opened),
        ("centre hash (dedup)", lambda o: centre_hash(o[1]), opened),
        ("centre hash + same-cell signature (similarity.cell_features)", lambda o: cell_features(o[1]), opened),
        ("decode_file, all of it", lambda p: decode_file(p, "x", "y", (288, 288)), files),
    ]
    print(f"{len(files)} uncompressed TIFF crops, one core, best of 5 passes")
    print("| step | us per image |")
    print("|---|---:|")
    with threadpool_limits(limits=1, user_api="blas"):
        for name, fn, items in rows:
            print(f"| {name} | {best_us(fn, items):,.0f} |")


if __name__ == "__main__":
    main()
