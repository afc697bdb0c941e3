"""Small hand-made raw archives for stage tests (the synthetic generator makes the realistic ones)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def crop(seed: int, size: tuple[int, int] = (288, 288)) -> np.ndarray:
    """A distinct smooth RGB image (random noise would make every pHash comparison trivial)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 90)
        colour = rng.uniform(40, 230, size=3)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[mask] = colour
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **kwargs)
    return path


def encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_annotations(raw: Path, rows: list[dict], columns=("image", "label", "patient_id", "annotator", "dysplastic")) -> Path:
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(str(row.get(c, "")) for c in columns))
    path = raw / "annotations.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def simple_raw(raw: Path, labels: list[str], per_class: int = 6, seed: int = 0, annotate: bool = True) -> list[dict]:
    """per_class distinct TIFF crops per label, patients spread across images; returns annotation rows."""
    rows = []
    n = 0
    for label in labels:
        for k in range(per_class):
            rel = f"{label}/cell_{k:03d}.tif"
            save(raw / rel, crop(seed * 100_000 + n))
            rows.append({"image": rel, "label": label, "patient_id": f"P{n % 7:02d}", "annotator": f"E{n % 5}", "dysplastic": "false"})
            n += 1
    if annotate:
        write_annotations(raw, rows)
    return rows


def raw_with_a_copy_and_a_broken_file(raw: Path, labels: list[str], per_class: int, copy: tuple[str, int, str], broken: tuple[str, str]) -> Path:
    """simple_raw plus an exact copy under another name and format, copy = (relpath, crop seed of an existing
    image, patient), and a file that claims to be a TIFF but is garbage, broken = (relpath, patient)."""
    rows = simple_raw(raw, labels, per_class=per_class)
    copy_rel, copy_seed, copy_patient = copy
    broken_rel, broken_patient = broken
    save(raw / copy_rel, crop(copy_seed))
    (raw / broken_rel).write_bytes(b"II*\0garbage")
    rows += [
        {"image": copy_rel, "label": copy_rel.split("/")[0], "patient_id": copy_patient, "dysplastic": "false"},
        {"image": broken_rel, "label": broken_rel.split("/")[0], "patient_id": broken_patient, "dysplastic": "false"},
    ]
    write_annotations(raw, rows)
    return raw
