"""A fast stand-in for `pipeline.synth.synthesize`, used by bench/ only until the realistic generator lands.

It writes the MLL23 layout at the class counts of the shipped config (41,906 uncompressed 288x288 RGB
TIFFs at scale 1, 10.4 GB): a pale background, a few red cells and one centred nucleated cell per crop,
sensor noise; about 0.7% of the files are planted copies (same bytes, PNG re-encodes, JPEG copies) so the
duplicate and re-encode paths of a build do real work. The images are cruder than the real generator's,
but they have the real file format, size and count, which is what the timings depend on.
"""

from __future__ import annotations

import csv
import io
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import ReleaseConfig

SIZE = 288
_NOISE_TILE = 1024


def _disc(img: np.ndarray, cy: float, cx: float, r: float, colour: np.ndarray) -> None:
    y0, y1 = max(0, int(cy - r)), min(SIZE, int(cy + r) + 1)
    x0, x1 = max(0, int(cx - r)), min(SIZE, int(cx + r) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    img[y0:y1, x0:x1][mask] = colour


def crop_pixels(seed: int, noise: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((SIZE, SIZE, 3), np.int16)
    img[:] = rng.integers(205, 235, size=3)
    for _ in range(rng.integers(3, 9)):  # red cells around the centre cell
        _disc(img, rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(18, 30), rng.integers(170, 215, size=3) - [0, 60, 30])
    cy, cx = SIZE / 2 + rng.normal(0, 6, size=2)
    _disc(img, cy, cx, rng.uniform(45, 80), rng.integers(150, 210, size=3))  # cytoplasm
    for _ in range(rng.integers(1, 4)):  # nucleus lobes
        _disc(img, cy + rng.normal(0, 12), cx + rng.normal(0, 12), rng.uniform(18, 40), rng.integers(60, 130, size=3))
    if rng.random() < 0.05:  # field edge: white padding bar
        img[:, : rng.integers(10, 60)] = 255
    oy, ox = rng.integers(0, _NOISE_TILE - SIZE, size=2)
    img += noise[oy : oy + SIZE, ox : ox + SIZE]
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write_chunk(args: tuple[str, int, list[tuple[str, int, str]]]) -> None:
    out, seed, jobs = args
    noise = np.random.default_rng(seed).normal(0, 4, (_NOISE_TILE, _NOISE_TILE, 3)).astype(np.int16)
    for relpath, image_seed, variant in jobs:
        pixels = crop_pixels(image_seed, noise)
        if variant == "png":
            data = _encode(pixels, "PNG")
        elif variant == "jpeg":
            data = _encode(pixels, "JPEG", quality=92)
        else:
            data = _encode(pixels, "TIFF")
        (Path(out) / relpath).write_bytes(data)


def plan(config: ReleaseConfig, scale: float, seed: int) -> list[tuple[str, str, int, str]]:
    """(relpath, label, image seed, variant) for every file: originals plus planted copies of earlier originals."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, int, str]] = []
    for ci, c in enumerate(config.classes):
        n = max(3, math.floor((c.raw_count or 0) * scale + 0.5))
        copies = min(n - 1, math.floor(n * 0.007 + 0.5))
        originals = n - copies
        for i in range(originals):
            rows.append((f"{c.label}/{c.label}_{i:05d}.tif", c.label, seed * 10_000_000 + ci * 100_000 + i, "tiff"))
        for k in range(copies):
            src = int(rng.integers(0, originals))
            variant = ("tiff", "png", "jpeg")[k % 3]
            ext = {"tiff": "tif", "png": "png", "jpeg": "jpg"}[variant]
            rows.append((f"{c.label}/{c.label}_copy{k:04d}.{ext}", c.label, seed * 10_000_000 + ci * 100_000 + src, variant))
    return rows


def synthesize_quick(out: Path, *, config: ReleaseConfig, scale: float = 1.0, seed: int = 0, workers: int = 1) -> int:
    """Write the archive to ``out``; returns the number of image files."""
    out = Path(out)
    rows = plan(config, scale, seed)
    for label in config.class_names:
        (out / label).mkdir(parents=True, exist_ok=True)
    chunks = [(str(out), seed, [(r[0], r[2], r[3]) for r in rows[i : i + 500]]) for i in range(0, len(rows), 500)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(_write_chunk, chunks))
    patients = np.random.default_rng(seed + 1).integers(0, max(1, len(rows) // 30), size=len(rows))
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "label", "patient_id", "annotator", "dysplastic"])
        for k, (relpath, label, _, _) in enumerate(sorted(rows)):
            w.writerow([relpath, label, f"P{patients[k]:05d}", f"E{k % 5 + 1}", "true" if k % 997 == 0 else "false"])
    return len(rows)
