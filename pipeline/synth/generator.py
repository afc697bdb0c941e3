"""Writes a synthetic raw archive in a config's input layout, with planted duplicates, conflicts and look-alikes.

The real archive cannot be downloaded, so tests and benchmarks run on archives made here. They follow
the public archive's layout and the paper's clean-up (the MLL23 paper, doi 10.1038/s41597-025-06223-x):

    out/<label>/<name>.tif     288 x 288 RGB, uncompressed TIFF (planted re-encodings .png / LZW .tif,
                               lossy copies .jpg)
    out/annotations.csv        image, label, patient_id, annotator, dysplastic
    out/synth_truth.csv        image, kind, source, expected_fate, detail  (one row per image)

Any other config is drawn the same way at its own size (width x height, square or not), with its classes'
counts, its folder names (``folder`` aliases such as Matek's NGS; the annotations' label column uses them
too) and its file format: with ``image.format = "JPEG"`` (Acevedo 2020) originals and look-alikes are JPEG
files and the planted duplicates are byte copies or JPEG re-compressions only, as such archives hold.

Every image is rendered from a field (pipeline.synth.field): a sharp canvas of stains around one
nucleated cell, cropped, blurred to a focal plane, given the camera's noise (pipeline.synth.camera) and
quantised. An original is one field; what is derived from it (pipeline.synth.variants):

  duplicates (expected ``duplicate``, the original stays ``kept``), same class folder:
    exact_copy     the same bytes under another name
    reencode_png   the same pixels as PNG
    reencode_lzw   the same pixels as LZW-compressed TIFF
    jpeg           JPEG quality 90-95 (4:2:0, PIL default)
    shift          content moved by 1-2 px, the uncovered edge replicated
    brighter       pixel values scaled by 1.03-1.06
  label conflicts (both the original and the copy expected ``label_conflict``):
    conflict_original / conflict_copy   the copy (same bytes, or JPEG) lies in another class folder
  dysplastic       an original marked dysplastic=true in annotations.csv (expected ``excluded``)
  look-alikes of the same cell (expected ``kept``, same patient as the twin):
    refocus_samehash   re-rendered at another focal plane (extra blur sigma 1-2, fresh noise) whose
                       64-bit pHash equals its twin's (or, failing that, is the closest found)
    refocus_blur       re-rendered blurrier (extra sigma 1-2), fresh noise
    refocus_sharp      re-rendered sharper (sigma 0.3), fresh noise
    recrop             the same field cropped with the cell 6-20 px off centre, fresh noise

Counts (pipeline.synth.plan): at scale 1 the raw and kept counts per class are the config's raw_count and
published_count (for MLL23 41,906 -> 41,621). Everything is planned in the parent process from
(scale, seed); each field is rendered from its own seed, so the files are byte-identical whatever
``workers`` is.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from pipeline.config import ReleaseConfig
from pipeline.synth.plan import (
    ANNOTATORS,
    DUPLICATE_KINDS,
    KINDS,
    LOOKALIKE_KINDS,
    MIN_KEPT,
    Output,
    expected_counts,
    plan_cells,
)
from pipeline.synth.variants import render_cell

__all__ = [
    "ANNOTATORS", "DUPLICATE_KINDS", "KINDS", "LOOKALIKE_KINDS", "MIN_KEPT", "SynthSummary", "expected_counts",
    "synthesize",
]


@dataclass
class SynthSummary:
    raw_counts: dict[str, int]
    expected_published: dict[str, int]
    planted: dict[str, int]  # kind -> number of images of that kind
    files: int


def _render_all(jobs: list[tuple], workers: int) -> dict[str, str]:
    """Render every cell (in `workers` processes when more than one); relpath -> truth detail."""
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(render_cell, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8) or 1))))
    else:
        results = [render_cell(job) for job in jobs]
    return {rel: d for res in results for rel, d in res}


def _write_annotations(path: Path, outputs: list[Output], folder_of: dict[str, str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "label", "patient_id", "annotator", "dysplastic"])
        for o in outputs:
            # the label column in the archive's own words (the folder name), as a lab's table would have it
            w.writerow([o.relpath, folder_of[o.label], o.patient, o.annotator, "true" if o.dysplastic else "false"])


def _write_truth(path: Path, outputs: list[Output], detail: dict[str, str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "kind", "source", "expected_fate", "detail"])
        for o in outputs:
            w.writerow([o.relpath, o.kind, o.source, o.fate, detail[o.relpath]])


def synthesize(out: Path, *, config: ReleaseConfig, scale: float = 0.01, seed: int = 0, workers: int = 1) -> SynthSummary:
    """Write a synthetic raw archive to ``out`` (created; must be empty or absent)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    cells = plan_cells(config, scale, seed)
    out.mkdir(parents=True, exist_ok=True)
    for folder in config.label_of_folder:
        (out / folder).mkdir(exist_ok=True)
    jobs = [(cell, str(out), seed, config.phash_threshold, config.image_size, config.image_format) for cell in cells]
    detail = _render_all(jobs, workers)
    outputs = sorted((o for cell in cells for o in cell.outputs), key=lambda o: o.relpath)
    _write_annotations(out / "annotations.csv", outputs, {label: folder for folder, label in config.label_of_folder.items()})
    _write_truth(out / "synth_truth.csv", outputs, detail)
    counts = expected_counts(config, scale)
    raw = Counter(o.label for o in outputs)
    return SynthSummary(
        raw_counts={lab: raw.get(lab, 0) for lab in config.class_names},
        expected_published={lab: counts[lab][1] for lab in config.class_names},
        planted=dict(sorted(Counter(o.kind for o in outputs).items())),
        files=len(outputs),
    )


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - convenience for benchmarks
    import argparse
    import time

    from pipeline.config import load_config

    ap = argparse.ArgumentParser(description="write a synthetic MLL23 raw archive")
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    s = synthesize(a.out, config=load_config(), scale=a.scale, seed=a.seed, workers=a.workers)
    print(f"{s.files} files in {time.perf_counter() - t:.1f} s; planted {s.planted}")


if __name__ == "__main__":  # pragma: no cover
    main()
