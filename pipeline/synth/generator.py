"""Synthetic raw archives in the MLL23 input layout, with planted duplicates, conflicts and look-alikes.

The real archive cannot be downloaded, so tests and benchmarks run on archives made here. They follow
the public archive's layout and the paper's clean-up (FACTS.md):

    out/<label>/<name>.tif     288 x 288 RGB, uncompressed TIFF (planted re-encodings .png / LZW .tif,
                               lossy copies .jpg)
    out/annotations.csv        image, label, patient_id, annotator, dysplastic
    out/synth_truth.csv        image, kind, source, expected_fate, detail  (one row per image)

Any other config is drawn the same way at its own size (width x height, square or not), with its classes'
counts, its folder names (``folder`` aliases such as Matek's NGS; the annotations' label column uses them
too) and its file format: with ``image.format = "JPEG"`` (Acevedo 2020) originals and look-alikes are JPEG
files and the planted duplicates are byte copies or JPEG re-compressions only, as such archives hold.

Every image is rendered from a "field": a sharp transmittance canvas (Beer-Lambert mix of stains:
pale pink plasma, red cells with a central pallor, one centred nucleated cell whose nucleus shape,
chromatin, cytoplasm colour and granules depend on the class), then cropped, blurred to a focal
plane, given sensor noise and quantised. An original is one field; what is derived from it:

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

Counts: at scale 1 the raw and kept counts per class are classes.csv's (41,906 -> 41,621). The
removed images of a class (raw - published) are duplicates, conflict members and dysplastic cells; a
conflict pair removes one image from each of two classes. Everything is planned in the parent
process from (scale, seed); each field is rendered from its own seed, so the files are byte-identical
whatever ``workers`` is.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.config import ReleaseConfig
from pipeline.stages.decode import phash_int

__all__ = ["SynthSummary", "expected_counts", "synthesize", "KINDS", "DUPLICATE_KINDS", "LOOKALIKE_KINDS"]

DUPLICATE_KINDS = ("exact_copy", "reencode_png", "reencode_lzw", "jpeg", "shift", "brighter")
LOOKALIKE_KINDS = ("refocus_samehash", "refocus_blur", "refocus_sharp", "recrop")
KINDS = ("original", "dysplastic", "conflict_original", "conflict_copy") + DUPLICATE_KINDS + LOOKALIKE_KINDS

ANNOTATORS = ("E1", "E2", "E3", "E4", "E5")
MIN_KEPT = 3  # every class keeps at least this many images at small scales
# Removal slots of all classes, interleaved (every class's first slot, then every class's second...),
# take their kind from this cycle; at scale 0.01 the first fourteen slots already plant every kind.
_REMOVAL_CYCLE = ("conflict", "conflict", "exact_copy", "jpeg", "reencode_png", "shift", "reencode_lzw", "brighter", "dysplastic")
_FALLBACK_DUPES = ("jpeg", "exact_copy", "shift", "brighter", "reencode_png", "reencode_lzw")
# Look-alikes per kind at scale 1 and the minimum planted at any scale.
_LOOKALIKES_AT_1 = {"refocus_samehash": 49, "refocus_blur": 40, "refocus_sharp": 30, "recrop": 60}
_LOOKALIKES_MIN = {"refocus_samehash": 2, "refocus_blur": 1, "refocus_sharp": 1, "recrop": 2}
_PATIENT_SIZE = (10, 60)

_MARGIN = 32  # canvas margin around the crop: room for re-crops (<= 20 px) plus the blur kernel
# Kinds that would be lossless copies of a lossy original: in an archive of JPEG files a lossless copy would be
# preferred over the original it came from, which is not what such archives hold, so they become these instead.
_LOSSY_ARCHIVE_KINDS = {"reencode_png": "exact_copy", "reencode_lzw": "jpeg", "shift": "exact_copy", "brighter": "jpeg"}
# Classes of the sibling datasets drawn like the MLL23 class they resemble most.
_STYLE_OF = {
    "erythroblast": "normoblast",
    "monoblast": "myeloblast",
    "promyelocyte_bizarre": "promyelocyte_atypical",
    "lymphocyte_atypical": "lymphocyte_reactive",
    "neutrophil": "neutrophil_segmented",
    "immature_granulocyte": "myelocyte",
}
_SUFFIX = {"TIFF": "tif", "PNG": "png", "JPEG": "jpg"}
_ORIGINAL_JPEG_QUALITY = 95


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass
class SynthSummary:
    raw_counts: dict[str, int]
    expected_published: dict[str, int]
    planted: dict[str, int]  # kind -> number of images of that kind
    files: int


def expected_counts(config: ReleaseConfig, scale: float) -> dict[str, tuple[int, int]]:
    """label -> (raw images, images a correct build keeps) in an archive synthesised at ``scale``.

    Scale 1 gives classes.csv exactly. Smaller scales round the published count (at least MIN_KEPT)
    and the removed count (at least 1 where the class loses any at scale 1).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    out: dict[str, tuple[int, int]] = {}
    for c in config.classes:
        if c.raw_count is None or c.published_count is None:
            raise ValueError(f"class {c.label!r}: raw_count and published_count are needed to synthesise")
        if c.published_count > c.raw_count:
            raise ValueError(f"class {c.label!r}: published_count > raw_count")
        removed = c.raw_count - c.published_count
        pub = max(MIN_KEPT, _round(c.published_count * scale))
        rem = 0 if removed == 0 else max(1, _round(removed * scale))
        out[c.label] = (pub + rem, pub)
    return out


# ----------------------------------------------------------------------------------------------------
# Plan (parent process): which images exist, what they are derived from, names, patients, annotators.


@dataclass
class _Output:
    relpath: str
    label: str
    kind: str
    source: str  # relpath of the image it derives from, "" for originals
    fate: str
    patient: str = ""
    annotator: str = ""
    dysplastic: bool = False
    variant: str = ""  # conflict copies: "exact" or "jpeg"


@dataclass
class _Cell:
    index: int
    label: str  # class folder of the original (also its drawing style)
    kind: str  # original / dysplastic / conflict_original
    outputs: list[_Output] = field(default_factory=list)  # outputs[0] is the original


def _pair_conflicts(counts: dict[str, int], order: list[str], lineage: dict[str, str]) -> list[tuple[str, str]]:
    """Pair conflict slots of different classes: most remaining first, a partner of the same lineage preferred."""
    left = dict(counts)
    pairs = []
    rank = {label: i for i, label in enumerate(order)}
    while True:
        live = [label for label in order if left.get(label, 0) > 0]
        if len(live) < 2:
            return pairs
        a = min(live, key=lambda lab: (-left[lab], rank[lab]))
        others = [lab for lab in live if lab != a]
        b = min(others, key=lambda lab: (lineage.get(lab) != lineage.get(a), -left[lab], rank[lab]))
        pairs.append((a, b))
        left[a] -= 1
        left[b] -= 1


def _plan(config: ReleaseConfig, scale: float, seed: int) -> list[_Cell]:
    lossy = config.image_format == "JPEG"
    folder_of = {label: folder for folder, label in config.label_of_folder.items()}
    original_suffix = _SUFFIX[config.image_format]
    counts = expected_counts(config, scale)
    labels = [c.label for c in config.classes]
    lineage = {c.label: c.lineage for c in config.classes}
    rng = np.random.default_rng([seed, 0x51A7])
    removed = {lab: counts[lab][0] - counts[lab][1] for lab in labels}

    # Removal slots, interleaved over classes, kinds from the cycle.
    slot_kinds: dict[str, list[str]] = {lab: [] for lab in labels}
    k = 0
    for r in range(max(removed.values(), default=0)):
        for lab in labels:
            if removed[lab] > r:
                slot_kinds[lab].append(_REMOVAL_CYCLE[k % len(_REMOVAL_CYCLE)])
                k += 1
    conflict_counts = {lab: kinds.count("conflict") for lab, kinds in slot_kinds.items()}
    pairs = _pair_conflicts(conflict_counts, labels, lineage)
    used = Counter(a for a, _ in pairs) + Counter(b for _, b in pairs)
    dup_kinds: dict[str, list[str]] = {lab: [] for lab in labels}
    n_dysplastic = {lab: 0 for lab in labels}
    f = 0
    for lab in labels:
        spare = conflict_counts[lab] - used[lab]  # conflict slots no other class could pair with
        for kind in slot_kinds[lab]:
            if kind == "conflict":
                if spare > 0:
                    spare -= 1
                    dup_kinds[lab].append(_FALLBACK_DUPES[f % len(_FALLBACK_DUPES)])
                    f += 1
            elif kind == "dysplastic":
                n_dysplastic[lab] += 1
            else:
                dup_kinds[lab].append(_LOSSY_ARCHIVE_KINDS.get(kind, kind) if lossy else kind)

    # Look-alikes: per kind a total, spread over classes in proportion to what they keep, at most a
    # third of a class's kept images so every look-alike has its own twin.
    pub = {lab: counts[lab][1] for lab in labels}
    cap = {lab: pub[lab] // 3 for lab in labels}
    look: dict[str, list[str]] = {lab: [] for lab in labels}
    totals = {kind: max(_LOOKALIKES_MIN[kind], _round(_LOOKALIKES_AT_1[kind] * scale)) for kind in LOOKALIKE_KINDS}
    queue = [kind for i in range(max(totals.values())) for kind in LOOKALIKE_KINDS if totals[kind] > i]
    for kind in queue:
        avail = [lab for lab in labels if len(look[lab]) < cap[lab]]
        if not avail:
            break
        weights = np.array([pub[lab] for lab in avail], dtype=float)
        lab = avail[int(rng.choice(len(avail), p=weights / weights.sum()))]
        look[lab].append(kind)

    # Cells: plain originals, conflict originals and dysplastic originals per class.
    cells: list[_Cell] = []
    plain: dict[str, list[_Cell]] = {}
    for lab in labels:
        n_plain = pub[lab] - len(look[lab])
        plain[lab] = [_Cell(0, lab, "original") for _ in range(n_plain)]
        cells.extend(plain[lab])
        cells.extend(_Cell(0, lab, "dysplastic") for _ in range(n_dysplastic[lab]))
    conflict_cells = []
    for i, (a, b) in enumerate(pairs):
        home, other = (a, b) if rng.random() < 0.5 else (b, a)
        cell = _Cell(0, home, "conflict_original")
        cell.outputs.append(_Output("", home, "conflict_original", "", "label_conflict"))
        cell.outputs.append(_Output("", other, "conflict_copy", "", "label_conflict", variant="exact" if i % 2 == 0 else "jpeg"))
        conflict_cells.append(cell)
    cells.extend(conflict_cells)
    for i, cell in enumerate(cells):
        cell.index = i
        if not cell.outputs:
            fate = "excluded" if cell.kind == "dysplastic" else "kept"
            cell.outputs.append(_Output("", cell.label, cell.kind, "", fate, dysplastic=cell.kind == "dysplastic"))
    for lab in labels:
        for kind in dup_kinds[lab]:
            src = plain[lab][int(rng.integers(len(plain[lab])))]
            src.outputs.append(_Output("", lab, kind, "", "duplicate"))
        if look[lab]:
            twins = rng.choice(len(plain[lab]), size=len(look[lab]), replace=False)
            for kind, t in zip(look[lab], twins):
                plain[lab][int(t)].outputs.append(_Output("", lab, kind, "", "kept"))

    # Patients: shuffled cells in runs of 10-60; everything derived from a cell shares its patient.
    order = rng.permutation(len(cells))
    p, pos = 0, 0
    while pos < len(order):
        p += 1
        size = int(rng.integers(_PATIENT_SIZE[0], _PATIENT_SIZE[1] + 1))
        for ci in order[pos : pos + size]:
            for o in cells[ci].outputs:
                o.patient = f"P{p:04d}"
        pos += size

    # Names: unique numbers; inside a cell, the original takes the smallest number of its folder so a
    # "prefer lossless, then smallest relpath" rule keeps it. Annotators: one per image; a conflict copy
    # was labelled by another examiner than its original.
    outputs = [o for cell in cells for o in cell.outputs]
    numbers = rng.permutation(len(outputs)) + 1
    i = 0
    for cell in cells:
        nums = sorted(int(n) for n in numbers[i : i + len(cell.outputs)])
        i += len(cell.outputs)
        same = [o for o in cell.outputs if o.label == cell.label]
        rest = [o for o in cell.outputs if o.label != cell.label]
        for o, n in zip(same + rest, nums):
            ext = {"reencode_png": "png", "reencode_lzw": "tif", "jpeg": "jpg"}.get(o.kind, original_suffix)
            if o.kind == "conflict_copy" and o.variant == "jpeg":
                ext = "jpg"
            o.relpath = f"{folder_of[o.label]}/cell_{n:06d}.{ext}"
        orig = cell.outputs[0]
        for o in cell.outputs:
            a = int(rng.integers(len(ANNOTATORS)))
            if o.kind == "conflict_copy":
                a = (ANNOTATORS.index(orig.annotator) + 1 + int(rng.integers(len(ANNOTATORS) - 1))) % len(ANNOTATORS)
            o.annotator = ANNOTATORS[a]
            if o is not orig:
                o.source = orig.relpath
    return cells


# ----------------------------------------------------------------------------------------------------
# Rendering (worker processes): one field per cell, everything derived from it.

# Optical densities (natural log) per RGB channel of a unit amount of each stain component.
_OD = {
    "plasma": (0.03, 0.09, 0.055),
    "rbc": (0.06, 0.46, 0.33),
    "nucleus": (0.88, 1.08, 0.42),
    "blue": (0.50, 0.32, 0.12),  # basophilic cytoplasm
    "lilac": (0.12, 0.22, 0.10),  # neutrophilic cytoplasm
    "grey_blue": (0.30, 0.24, 0.13),  # monocyte
    "poly": (0.22, 0.36, 0.20),  # polychromatic normoblast cytoplasm
    "eos_gran": (0.08, 0.80, 0.90),
    "baso_gran": (1.30, 1.50, 0.75),
    "azur_gran": (0.60, 1.05, 0.45),
    "fine_gran": (0.30, 0.55, 0.25),
    "auer": (0.45, 1.20, 0.65),
}
_OD = {k: np.array(v, dtype=np.float32) for k, v in _OD.items()}

# Class styles. radius: cell radius in px (11.52 px/um); nuc: nucleus shape; nfrac: nucleus radius /
# cell radius; ecc: nucleus offset / cell radius; ndens: nucleus stain; chrom: (amplitude, grain px);
# cyto: (component, amount); gran: (component, per 1000 px^2, size px, strength, over nucleus).
_STYLES: dict[str, dict] = {
    "myeloblast": dict(radius=(60, 82), nuc="round", nfrac=(0.72, 0.82), ecc=(0.0, 0.12), ndens=(0.75, 0.95), chrom=(0.18, 2.5), nucleoli=(1, 3), cyto=("blue", (0.8, 1.2))),
    "neutrophil_segmented": dict(radius=(56, 72), nuc="segmented", nfrac=(0.27, 0.33), ecc=(0.0, 0.1), ndens=(1.15, 1.4), chrom=(0.25, 3.5), cyto=("lilac", (0.8, 1.2)), gran=("fine_gran", 6.0, 0.9, 0.35, False)),
    "lymphocyte": dict(radius=(40, 54), nuc="round", nfrac=(0.80, 0.88), ecc=(0.05, 0.15), ndens=(1.25, 1.5), chrom=(0.3, 4.0), cyto=("blue", (0.7, 1.1))),
    "hairy_cell": dict(radius=(56, 76), nuc="kidney", nfrac=(0.55, 0.65), ecc=(0.05, 0.2), ndens=(0.9, 1.1), chrom=(0.2, 3.0), cyto=("blue", (0.45, 0.7)), hairy=True),
    "monocyte": dict(radius=(70, 90), nuc="kidney", nfrac=(0.55, 0.66), ecc=(0.05, 0.2), ndens=(0.85, 1.05), chrom=(0.2, 4.0), cyto=("grey_blue", (0.8, 1.2)), vacuoles=(0, 6), gran=("fine_gran", 1.5, 0.8, 0.25, False)),
    "eosinophil": dict(radius=(62, 78), nuc="bilobed", nfrac=(0.26, 0.32), ecc=(0.0, 0.1), ndens=(1.1, 1.35), chrom=(0.25, 3.5), cyto=("lilac", (0.5, 0.8)), gran=("eos_gran", 45.0, 1.6, 0.9, False)),
    "normoblast": dict(radius=(38, 50), nuc="round", nfrac=(0.52, 0.62), ecc=(0.05, 0.25), ndens=(1.5, 1.8), chrom=(0.25, 3.0), cyto=("poly", (0.9, 1.3))),
    "promyelocyte_atypical": dict(radius=(64, 84), nuc="butterfly", nfrac=(0.34, 0.40), ecc=(0.0, 0.12), ndens=(0.85, 1.05), chrom=(0.2, 3.0), cyto=("blue", (0.6, 0.9)), gran=("azur_gran", 22.0, 1.1, 0.7, True), auer=(0, 3)),
    "lymphocyte_large_granular": dict(radius=(50, 62), nuc="round", nfrac=(0.58, 0.68), ecc=(0.1, 0.25), ndens=(1.2, 1.45), chrom=(0.3, 4.0), cyto=("blue", (0.4, 0.65)), gran=("azur_gran", 1.2, 1.2, 0.8, False)),
    "plasma_cell": dict(radius=(50, 64), nuc="round", nfrac=(0.48, 0.56), ecc=(0.35, 0.45), ndens=(1.2, 1.45), chrom=(0.45, 5.0), cyto=("blue", (1.3, 1.7)), hof=True, oval=(0.72, 0.85)),
    "smudge_cell": dict(radius=(50, 74), nuc="smudge", nfrac=(0.9, 1.0), ecc=(0.0, 0.1), ndens=(0.45, 0.65), chrom=(0.45, 6.0), cyto=None),
    "myelocyte": dict(radius=(58, 74), nuc="oval", nfrac=(0.48, 0.58), ecc=(0.2, 0.32), ndens=(1.0, 1.2), chrom=(0.28, 3.5), cyto=("lilac", (0.9, 1.3)), gran=("fine_gran", 10.0, 0.9, 0.4, False)),
    "promyelocyte": dict(radius=(66, 84), nuc="oval", nfrac=(0.55, 0.64), ecc=(0.15, 0.28), ndens=(0.85, 1.0), chrom=(0.2, 2.8), nucleoli=(0, 2), cyto=("blue", (0.8, 1.1)), gran=("azur_gran", 10.0, 1.2, 0.75, False)),
    "neutrophil_band": dict(radius=(56, 72), nuc="band", nfrac=(0.5, 0.6), ecc=(0.0, 0.08), ndens=(1.15, 1.4), chrom=(0.25, 3.5), cyto=("lilac", (0.8, 1.2)), gran=("fine_gran", 6.0, 0.9, 0.35, False)),
    "basophil": dict(radius=(54, 68), nuc="bilobed", nfrac=(0.28, 0.34), ecc=(0.0, 0.1), ndens=(0.9, 1.1), chrom=(0.2, 3.5), cyto=("lilac", (0.5, 0.8)), gran=("baso_gran", 16.0, 1.8, 0.9, True)),
    "metamyelocyte": dict(radius=(56, 72), nuc="kidney", nfrac=(0.5, 0.6), ecc=(0.08, 0.2), ndens=(1.05, 1.25), chrom=(0.28, 3.5), cyto=("lilac", (0.85, 1.2)), gran=("fine_gran", 7.0, 0.9, 0.35, False), indent=(0.35, 0.5)),
    "lymphocyte_neoplastic": dict(radius=(44, 64), nuc="cleaved", nfrac=(0.74, 0.84), ecc=(0.05, 0.15), ndens=(1.15, 1.4), chrom=(0.3, 3.5), cyto=("blue", (0.8, 1.2))),
    "lymphocyte_reactive": dict(radius=(66, 86), nuc="oval", nfrac=(0.42, 0.52), ecc=(0.1, 0.25), ndens=(1.05, 1.3), chrom=(0.3, 4.0), cyto=("blue", (0.7, 1.4)), wavy=True),
}


def _style(label: str) -> dict:
    label = _STYLE_OF.get(label, label)
    if label in _STYLES:
        return _STYLES[label]
    # Labels outside MLL23 (custom configs) borrow a style chosen by a stable hash of the name.
    names = sorted(_STYLES)
    h = sum((i + 1) * ord(ch) for i, ch in enumerate(label))
    return _STYLES[names[h % len(names)]]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grain: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with features about ``grain`` px wide (bicubic upsampling)."""
    grain = max(1.0, float(grain))
    gh, gw = int(math.ceil(shape[0] / grain)) + 1, int(math.ceil(shape[1] / grain)) + 1
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    big = Image.fromarray(g, "F").resize((int(gw * grain), int(gh * grain)), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)[: shape[0], : shape[1]]


def _soft(inside: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased mask from a signed distance (positive inside)."""
    return np.clip(inside * (1.0 / edge) + 0.5, 0.0, 1.0)


def _grid(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]


def _blob(rng, Y, X, cy, cx, r, amp, ellip=1.0, rot=0.0, edge=1.0, indent=0.0) -> np.ndarray:
    """Soft mask of an irregular ellipse: radius r * (1 + sum_k a_k cos(k theta + phi_k)), k = 2..6.

    cos/sin of k*theta come from the angle-addition recurrence on (u, v) / rho, so no trigonometric
    function is evaluated per pixel.
    """
    dy, dx = Y - np.float32(cy), X - np.float32(cx)
    c, s = math.cos(rot), math.sin(rot)
    u = c * dx + s * dy
    v = (c * dy - s * dx) * np.float32(1.0 / ellip)
    rho = np.sqrt(u * u + v * v) + np.float32(1e-6)
    c1, s1 = u / rho, v / rho
    ck, sk = c1, s1
    rr = np.ones_like(rho)
    for k in range(2, 7 if amp > 0 else 2):
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        phi = rng.uniform(0, 2 * np.pi)
        a = np.float32(amp / k * rng.standard_normal())
        rr += (a * math.cos(phi)) * ck - (a * math.sin(phi)) * sk
    if indent > 0:
        # A notch toward the centre around theta = 0 (kidney / bean shape), von Mises profile.
        w = rng.uniform(0.45, 0.7)
        rr *= 1.0 - np.float32(indent) * np.exp((c1 - 1.0) * np.float32(1.0 / (w * w)))
    return _soft(np.float32(r) * rr - rho, edge)


def _capsules(Y, X, pts: np.ndarray, radii: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Soft union of discs at pts (radius radii) and tubes between consecutive pts (radius min of ends)."""
    inside = np.full(Y.shape, -1e9, dtype=np.float32)
    for (py, px), r in zip(pts, radii):
        inside = np.maximum(inside, r - np.hypot(Y - py, X - px))
    for i in range(len(pts) - 1):
        (ay, ax), (by, bx) = pts[i], pts[i + 1]
        vy, vx = by - ay, bx - ax
        ll = vy * vy + vx * vx + 1e-9
        t = np.clip(((Y - ay) * vy + (X - ax) * vx) / ll, 0.0, 1.0)
        d = np.hypot(Y - (ay + t * vy), X - (ax + t * vx))
        inside = np.maximum(inside, min(radii[i], radii[i + 1]) * 0.999 - d)
    return _soft(inside, edge)


def _nucleus(rng, style, Y, X, cy, cx, R) -> np.ndarray:
    kind = style["nuc"]
    rn = R * rng.uniform(*style["nfrac"])
    ang = rng.uniform(0, 2 * np.pi)
    off = R * rng.uniform(*style["ecc"])
    ny, nx = cy + off * math.sin(ang), cx + off * math.cos(ang)
    if kind == "round":
        return _blob(rng, Y, X, ny, nx, rn, 0.05, ellip=rng.uniform(0.88, 1.0), rot=rng.uniform(0, np.pi))
    if kind == "oval":
        return _blob(rng, Y, X, ny, nx, rn, 0.06, ellip=rng.uniform(0.7, 0.85), rot=rng.uniform(0, np.pi))
    if kind == "kidney":
        return _blob(rng, Y, X, ny, nx, rn, 0.05, ellip=rng.uniform(0.8, 0.95), rot=rng.uniform(0, 2 * np.pi), indent=rng.uniform(*style.get("indent", (0.25, 0.4))))
    if kind == "cleaved":
        m = _blob(rng, Y, X, ny, nx, rn, 0.08, ellip=rng.uniform(0.85, 1.0), rot=rng.uniform(0, np.pi))
        a = rng.uniform(0, np.pi)
        d = np.abs((Y - ny) * math.cos(a) - (X - nx) * math.sin(a))
        along = (Y - ny) * math.sin(a) + (X - nx) * math.cos(a)
        cleft = _soft(1.2 - d) * _soft(along + rn * rng.uniform(-0.9, -0.2), 2.0)
        return m * (1.0 - 0.85 * cleft)
    if kind == "smudge":
        m = _blob(rng, Y, X, cy, cx, R * rng.uniform(0.75, 0.95), 0.35, ellip=rng.uniform(0.6, 0.9), rot=rng.uniform(0, np.pi), edge=3.0)
        return m
    if kind == "band":
        rho0 = R * rng.uniform(0.45, 0.55)
        span = rng.uniform(2.6, 4.2)
        a0 = rng.uniform(0, 2 * np.pi)
        ts = np.linspace(-span / 2, span / 2, 11) + a0
        rad = rho0 * (1 + 0.08 * rng.standard_normal(len(ts)))
        pts = np.stack([ny + rad * np.sin(ts), nx + rad * np.cos(ts)], axis=1)
        th = R * rng.uniform(0.13, 0.18) * (1 + 0.1 * rng.standard_normal(len(ts)))
        return _capsules(Y, X, pts, th)
    if kind in ("segmented", "bilobed", "butterfly"):
        n = {"segmented": int(rng.integers(2, 6)), "bilobed": 2, "butterfly": 2}[kind]
        pts, radii = [], []
        a = rng.uniform(0, 2 * np.pi)
        step = rn * (1.8 if kind != "butterfly" else 1.1)
        y, x = 0.0, 0.0
        for i in range(n):
            pts.append((y, x))
            radii.append(rn * rng.uniform(0.85, 1.15))
            a += rng.uniform(-1.0, 1.0)
            y, x = y + step * math.sin(a), x + step * math.cos(a)
        # centre the chain on the nucleus position and keep it well inside the cell
        pts_a = np.array(pts) - np.mean(pts, axis=0)
        reach = float(np.max(np.hypot(pts_a[:, 0], pts_a[:, 1]))) + rn
        if reach > 0.8 * R:
            pts_a *= max(0.2, (0.8 * R - rn) / max(reach - rn, 1e-6))
        pts = [(ny + py, nx + px) for py, px in pts_a]
        lobes = np.zeros(Y.shape, dtype=np.float32)
        for (py, px), r in zip(pts, radii):
            lobes = np.maximum(lobes, _blob(rng, Y, X, py, px, r, 0.08, ellip=rng.uniform(0.7, 0.95), rot=rng.uniform(0, np.pi)))
        if kind == "butterfly":
            return lobes
        fil = _capsules(Y, X, np.array(pts), np.full(n, rng.uniform(1.3, 2.4) if kind == "segmented" else rn * 0.3))
        return np.maximum(lobes, fil)
    raise ValueError(kind)


def _granules(rng, shape, mask, per_kpx, size, strength) -> np.ndarray:
    n = int(per_kpx * float(mask.sum()) / 1000.0)
    if n <= 0:
        return np.zeros(shape, dtype=np.float32)
    ys = rng.integers(0, shape[0], n)
    xs = rng.integers(0, shape[1], n)
    imp = np.zeros(shape, dtype=np.float32)
    np.add.at(imp, (ys, xs), rng.uniform(0.6, 1.4, n).astype(np.float32))
    g = ndimage.gaussian_filter(imp, size, truncate=3.0)
    g *= strength * 2 * np.pi * size * size
    return np.minimum(g, 2.0 * strength) * mask


def _add(od: np.ndarray, density: np.ndarray, comp: str) -> None:
    """od (3, h, w) += density * the component's optical density per channel."""
    v = _OD[comp]
    for c in range(3):
        od[c] += density * v[c]


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
    """Unit-free white noise: a sum of two uniform bytes (triangular, sd 104.5) scaled to ``sd``; 10x faster than normal()."""
    n = int(np.prod(shape))
    b = np.frombuffer(rng.bytes(2 * n), dtype=np.uint8)
    tri = b[:n].astype(np.float32) + b[n:]
    return ((tri - 255.0) * np.float32(sd / 104.5)).reshape(shape)


# Bilinear demosaicing of an RGGB Bayer mosaic: which sites sample each channel, and the kernels that fill the
# others from their neighbours (red/blue from 2 or 4 diagonal/side sites, green from its 4 side neighbours).
_BAYER_SITES = (((0, 0),), ((0, 1), (1, 0)), ((1, 1),))  # (row, col) parity of red, green, blue sites
_DEMOSAIC = (
    np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4,
    np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4,
    np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4,
)
# Colour correction mixes channels, so noise of neighbouring channels is partly shared.
_CHANNEL_SHARE = np.float32(0.35)


def _sensor_noise(rng: np.random.Generator, signal: np.ndarray, read_sd: float, white_sd: float) -> np.ndarray:
    """Noise of a one-chip colour camera on a 40x brightfield microscope, for a (3, H, W) ``signal`` in grey levels.

    Per Bayer site the noise is Gaussian-like with variance ``read_sd**2 + white_sd**2 * signal / 255``: read
    noise (constant) plus photon shot noise (Poisson: variance proportional to the collected light, so bright
    background is noisier than a dark nucleus); ``white_sd`` is the shot noise at full scale. The mosaic is
    then demosaiced bilinearly, which gives the 2x2-periodic texture and short-range correlation of real
    camera noise (interpolated sites carry averages of 2-4 neighbours' noise), and colour correction shares
    part of it between channels (correlation ~0.3 between channels and ~0.4 between neighbouring pixels).
    Parameters (drawn per field in _Field): read noise 0.4-0.8 and shot noise at white 1.3-2.0 grey levels
    per site, i.e. 1.3-2.1 levels at the background's 244 and 0.6-1.2 in a nucleus at 60; demosaicing averages
    that down to about 0.8-1.3 levels in the background of the RGB crop (measured: 1.12 for read 0.75, white
    1.71). That is an 8-bit export of a camera with an effective full well of some 15-40 k electrons per
    pixel; the previous model's flat 0.8-1.3 levels had the same overall size but none of its structure, and
    the size is kept because the dedup thresholds were calibrated on it: it stays below the sweep's "sensor
    noise std 2" row, so look-alikes rendered with fresh
    noise fall on the same side of the dedup thresholds as before.
    """
    var = np.float32(white_sd**2 / 255.0) * np.clip(signal, 0.0, 255.0) + np.float32(read_sd**2)
    site = _noise(rng, signal.shape, 1.0) * np.sqrt(var)
    out = np.empty_like(site)
    for c, sites in enumerate(_BAYER_SITES):
        mosaic = np.zeros(site.shape[1:], dtype=np.float32)
        for dy, dx in sites:
            mosaic[dy::2, dx::2] = site[c, dy::2, dx::2]
        out[c] = ndimage.convolve(mosaic, _DEMOSAIC[c], mode="mirror")
    shared = out.mean(axis=0)
    out *= np.float32(1.0) - _CHANNEL_SHARE
    out += _CHANNEL_SHARE * shared
    return out


class _Field:
    """A scanned field around one nucleated cell: a sharp transmittance canvas plus focus and noise levels."""

    def __init__(self, label: str, rng: np.random.Generator, dysplastic: bool = False, size: tuple[int, int] = (288, 288)):
        style = _style(label)
        self.width, self.height = size
        CH, CW = self.height + 2 * _MARGIN, self.width + 2 * _MARGIN
        od = np.zeros((3, CH, CW), dtype=np.float32)  # channel-first: 2D planes are much faster than HxWx3
        plasma = 1.0 + 0.3 * _smooth_noise(rng, (CH, CW), 48.0)
        _add(od, plasma, "plasma")

        # The nucleated cell, centred (a few px of jitter).
        R = float(rng.uniform(*style["radius"]))
        cy, cx = CH / 2 + rng.uniform(-6, 6), CW / 2 + rng.uniform(-6, 6)
        half = int(R * 1.25) + 8
        y0, x0 = int(cy) - half, int(cx) - half
        sl = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
        Y, X = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32)
        oval = style.get("oval", (0.88, 1.0))
        if style.get("cyto") is not None:
            amp = 0.12 if style.get("wavy") else 0.05
            cyto = _blob(rng, Y, X, cy, cx, R, amp, ellip=rng.uniform(*oval), rot=rng.uniform(0, np.pi), edge=1.2)
            if style.get("hairy"):
                # Hairy cell: thin cytoplasmic projections all round the edge.
                dy, dx = Y - cy, X - cx
                theta = np.arctan2(dy, dx)
                spikes = sum(np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (19, 27, 37)) / 3.0
                rr = R * (1.0 + 0.2 * np.clip(spikes, 0, None) ** 3)
                cyto = np.maximum(cyto, _soft(rr - np.hypot(dy, dx)))
        else:
            cyto = np.zeros(Y.shape, dtype=np.float32)
        nuc = _nucleus(rng, style, Y, X, cy, cx, R)
        if style.get("cyto") is not None:
            nuc = np.minimum(nuc, cyto)
        cell_od = np.zeros((3,) + Y.shape, dtype=np.float32)
        if style.get("cyto") is not None:
            comp, amt = style["cyto"]
            cdens = rng.uniform(*amt) * (1.0 + 0.12 * _smooth_noise(rng, Y.shape, 6.0))
            if style.get("wavy"):
                # Reactive lymphocyte: cytoplasm deepens toward its edge.
                cdens = cdens * (0.6 + 0.8 * np.clip(np.hypot(Y - cy, X - cx) / R, 0, 1) ** 2)
            cmask = cyto * (1.0 - nuc)
            if style.get("hof"):
                # Plasma cell: a pale perinuclear zone (Golgi) beside the nucleus, toward the cell centre.
                wy, wx = np.nonzero(nuc > 0.5)
                if len(wy):
                    my, mx = float(Y[wy, wx].mean()), float(X[wy, wx].mean())
                    d = math.hypot(cy - my, cx - mx) + 1e-6
                    rn = math.sqrt(len(wy) / math.pi)
                    hy, hx = my + (cy - my) / d * rn * 1.1, mx + (cx - mx) / d * rn * 1.1
                    hof = _blob(rng, Y, X, hy, hx, rn * 0.55, 0.1, edge=6.0)
                    cmask = cmask * (1.0 - 0.55 * hof)
            _add(cell_od, cmask * cdens, comp)
            lo, hi = style.get("vacuoles", (0, 0))
            for _ in range(int(rng.integers(lo, hi + 1))):
                a, rr = rng.uniform(0, 2 * np.pi), R * rng.uniform(0.5, 0.85)
                v = _blob(rng, Y, X, cy + rr * math.sin(a), cx + rr * math.cos(a), rng.uniform(2.5, 5.5), 0.05)
                _add(cell_od, -(v * cmask * cdens * 0.8), comp)
        # Nucleus: chromatin texture (coarse + fine), nucleoli as paler spots.
        a_ch, grain = style["chrom"]
        chrom = 1.0 + a_ch * (0.7 * _smooth_noise(rng, Y.shape, grain) + 0.5 * _smooth_noise(rng, Y.shape, grain / 2))
        ndens = rng.uniform(*style["ndens"]) * np.clip(chrom, 0.3, 2.0)
        lo, hi = style.get("nucleoli", (0, 0))
        ys, xs = np.nonzero(nuc > 0.99)
        for _ in range(int(rng.integers(lo, hi + 1))):
            if len(ys) == 0:
                break
            j = int(rng.integers(len(ys)))
            spot = _blob(rng, Y, X, float(Y[ys[j], xs[j]]), float(X[ys[j], xs[j]]), rng.uniform(4, 7), 0.1, edge=2.0)
            ndens = ndens * (1.0 - 0.45 * spot)
        _add(cell_od, nuc * ndens, "nucleus")
        if style.get("gran") is not None:
            comp, per_kpx, size, strength, over = style["gran"]
            if dysplastic:
                per_kpx *= 0.3  # hypogranular
            gmask = cyto if over else cyto * (1.0 - nuc)
            _add(cell_od, _granules(rng, Y.shape, gmask, per_kpx, size, strength), comp)
        lo, hi = style.get("auer", (0, 0))
        for _ in range(int(rng.integers(lo, hi + 1))):
            a, rr = rng.uniform(0, 2 * np.pi), R * rng.uniform(0.3, 0.7)
            py, px = cy + rr * math.sin(a), cx + rr * math.cos(a)
            b = rng.uniform(0, np.pi)
            ln = rng.uniform(8, 16)
            pts = np.array([[py - ln * math.sin(b), px - ln * math.cos(b)], [py + ln * math.sin(b), px + ln * math.cos(b)]])
            _add(cell_od, 0.9 * _capsules(Y, X, pts, np.array([1.2, 1.2])) * cyto, "auer")

        # Red cells around it (about 7.5 um across), partly under the white cell's edge.
        rbc = np.zeros((CH, CW), dtype=np.float32)
        placed: list[tuple[float, float, float]] = []
        target = int(rng.integers(2, 11))  # sparse to crowded smear regions, never empty
        for _ in range(80):
            if len(placed) >= target:
                break
            r = float(rng.uniform(38, 48))
            py, px = rng.uniform(_MARGIN - r / 2, np.array([CH, CW]) - _MARGIN + r / 2, 2)  # at least half inside the crop
            if math.hypot(py - cy, px - cx) < R + 0.55 * r:
                continue
            if any(math.hypot(py - qy, px - qx) < 0.8 * (r + qr) for qy, qx, qr in placed):
                continue
            placed.append((py, px, r))
            ry0, rx0 = max(0, int(py - r) - 3), max(0, int(px - r) - 3)
            ry1, rx1 = min(CH, int(py + r) + 4), min(CW, int(px + r) + 4)
            if ry1 <= ry0 or rx1 <= rx0:
                continue
            RY, RX = _grid(ry0, ry1, rx0, rx1)
            disc = _blob(rng, RY, RX, py, px, r, 0.0, ellip=rng.uniform(0.88, 1.0), rot=rng.uniform(0, np.pi), edge=1.3)
            rho = np.sqrt((RY - np.float32(py)) ** 2 + (RX - np.float32(px)) ** 2) * np.float32(1.0 / r)
            pallor = np.float32(rng.uniform(0.45, 0.75))
            wp = np.float32(1.0 / rng.uniform(0.38, 0.5) ** 2)
            rho2 = rho * rho
            prof = np.float32(rng.uniform(0.85, 1.1)) * (0.88 + 0.22 * rho2 - pallor * np.exp(-rho2 * wp))
            rbc[ry0:ry1, rx0:rx1] += disc * prof
        rbc[sl] *= 1.0 - 0.85 * cyto
        _add(od, rbc, "rbc")
        od[:, sl[0], sl[1]] += cell_od
        light = np.array([246.0, 244.0, 246.0], dtype=np.float32) * rng.uniform(0.985, 1.01, 3).astype(np.float32)
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= light[:, None, None]
        # Uneven illumination / smear thickness: a gentle brightness ramp of up to +-7% across the field.
        gy, gx = rng.uniform(-0.07, 0.07, 2) / np.array([CH, CW])
        od *= (1.0 + gy * (np.arange(CH, dtype=np.float32)[:, None] - CH / 2) + gx * (np.arange(CW, dtype=np.float32)[None, :] - CW / 2))[None]
        self.T = od  # (3, CH, CW) transmitted light
        self.sigma0 = float(rng.uniform(0.7, 1.1))
        self.noise = float(rng.uniform(1.3, 2.0))  # shot noise at full scale (see _sensor_noise)
        # A few crops lie at the edge of the scanned field: a white bar, fixed in field coordinates.
        self.pad: tuple[str, int] | None = None
        if rng.random() < 0.04:
            side = ("top", "bottom", "left", "right")[int(rng.integers(4))]
            self.pad = (side, int(rng.integers(8, 61)))
        # Drawn last, so the field's geometry and edge bar are those the earlier flat-noise model drew.
        self.read_sd = float(rng.uniform(0.4, 0.8))

    def render(self, rng: np.random.Generator, offset: tuple[int, int] = (0, 0), sigma: float | None = None) -> np.ndarray:
        """The crop with the cell moved by -offset, at focus blur ``sigma`` (default: the field's), with fresh noise."""
        s = self.sigma0 if sigma is None else float(sigma)
        oy, ox = offset
        y0, x0 = _MARGIN + oy, _MARGIN + ox
        m = int(math.ceil(3.5 * s)) + 1
        H, W = self.height, self.width
        signal = np.empty((3, H, W), dtype=np.float32)
        for c in range(3):
            region = self.T[c, y0 - m : y0 + H + m, x0 - m : x0 + W + m]
            signal[c] = ndimage.gaussian_filter(region, s, truncate=3.5)[m : m + H, m : m + W]
        noise = _sensor_noise(rng, signal, self.read_sd, self.noise)
        noise += signal
        np.clip(noise, 0.0, 255.0, out=noise)
        noise += 0.5
        out = np.ascontiguousarray(noise.astype(np.uint8).transpose(1, 2, 0))
        if self.pad is not None:
            # The field edge is fixed in canvas coordinates; in this crop it sits at width - offset.
            side, width = self.pad
            if side == "top":
                out[: max(0, width - oy)] = 255
            elif side == "bottom":
                out[min(H, H - width - oy) :] = 255
            elif side == "left":
                out[:, : max(0, width - ox)] = 255
            else:
                out[:, min(W, W - width - ox) :] = 255
        return out


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def _tiff(arr: np.ndarray, compression: str | None = None) -> bytes:
    return _encode(arr, "TIFF", compression=compression) if compression else _encode(arr, "TIFF")


def _original_bytes(arr: np.ndarray, file_format: str) -> bytes:
    """An image as the archive stores its originals (the config's image.format)."""
    if file_format == "JPEG":
        return _encode(arr, "JPEG", quality=_ORIGINAL_JPEG_QUALITY)
    if file_format == "PNG":
        return _encode(arr, "PNG", compress_level=6)
    return _tiff(arr)


def _phash(arr: np.ndarray) -> int:
    return phash_int(Image.fromarray(arr, "RGB"))


def _ham(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _shift(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moved by (dy, dx); the uncovered rows/columns repeat the edge."""
    h, w = arr.shape[:2]
    iy = np.clip(np.arange(h) - dy, 0, h - 1)
    ix = np.clip(np.arange(w) - dx, 0, w - 1)
    return arr[iy][:, ix]


def _render_cell(args: tuple) -> list[tuple[str, str]]:
    """Render one field and write its original and everything derived from it; returns (relpath, detail)."""
    cell, out_dir, seed, phash_threshold, size, file_format = args
    out = Path(out_dir)
    rng = np.random.default_rng([seed, 0xF1E1D, cell.index])
    fld = _Field(cell.label, rng, dysplastic=cell.kind == "dysplastic", size=size)
    orig = fld.render(rng)
    orig_bytes = _original_bytes(orig, file_format)
    if file_format == "JPEG":
        orig = np.asarray(Image.open(io.BytesIO(orig_bytes)).convert("RGB"))  # what is published, and what copies derive from
    needs_hash = any(o.kind not in ("original", "dysplastic", "conflict_original", "exact_copy", "reencode_png", "reencode_lzw") for o in cell.outputs)
    ph0 = _phash(orig) if needs_hash else 0  # only derived images are compared with it
    details = []
    for o in cell.outputs:
        detail = ""
        if o.kind in ("original", "dysplastic", "conflict_original"):
            data = orig_bytes
            detail = f"sigma={fld.sigma0:.2f};noise={fld.noise:.2f};read={fld.read_sd:.2f}" + (f";pad={fld.pad[0]}:{fld.pad[1]}" if fld.pad else "")
        elif o.kind == "exact_copy" or (o.kind == "conflict_copy" and o.variant == "exact"):
            data = orig_bytes
            detail = "same bytes"
        elif o.kind == "reencode_png":
            data = _encode(orig, "PNG", compress_level=6)
            detail = "png"
        elif o.kind == "reencode_lzw":
            data = _tiff(orig, "tiff_lzw")
            detail = "tiff_lzw"
        elif o.kind in ("jpeg", "shift", "brighter") or o.kind == "conflict_copy":
            # Draw the perturbation; keep it within the pHash candidate radius (re-draw a milder one).
            for attempt in range(8):
                if o.kind in ("jpeg", "conflict_copy"):
                    q = int(rng.integers(90, 96)) if attempt < 4 else 95
                    data = _encode(orig, "JPEG", quality=q)
                    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    detail = f"quality={q}"
                elif o.kind == "shift":
                    while True:
                        dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
                        if (dy, dx) != (0, 0) and (attempt < 4 or max(abs(dy), abs(dx)) == 1):
                            break
                    arr = _shift(orig, dy, dx)
                    data = _tiff(arr)
                    detail = f"dy={dy};dx={dx}"
                else:
                    fac = float(rng.uniform(1.03, 1.06)) if attempt < 4 else 1.03
                    arr = np.clip(np.rint(orig.astype(np.float32) * fac), 0, 255).astype(np.uint8)
                    data = _tiff(arr)
                    detail = f"factor={fac:.3f}"
                d = _ham(_phash(arr), ph0)
                if d <= phash_threshold:
                    break
            detail += f";phash_distance={d}"
        elif o.kind in ("refocus_samehash", "refocus_blur", "refocus_sharp", "recrop"):
            if o.kind == "refocus_samehash":
                best = None
                for sb in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 1.1, 1.3, 1.5, 1.7, 1.9):
                    s = math.hypot(fld.sigma0, sb)
                    arr = fld.render(rng, sigma=s)
                    d = _ham(_phash(arr), ph0)
                    if best is None or d < best[0]:
                        best = (d, sb, arr)
                    if d == 0:
                        break
                d, sb, arr = best
                detail = f"extra_sigma={sb:.2f};phash_distance={d}"
            elif o.kind == "refocus_blur":
                sb = float(rng.uniform(1.0, 2.0))
                arr = fld.render(rng, sigma=math.hypot(fld.sigma0, sb))
                detail = f"extra_sigma={sb:.2f};phash_distance={_ham(_phash(arr), ph0)}"
            elif o.kind == "refocus_sharp":
                arr = fld.render(rng, sigma=0.3)
                detail = f"sigma=0.30;phash_distance={_ham(_phash(arr), ph0)}"
            else:
                mag, ang = rng.uniform(6, 20), rng.uniform(0, 2 * np.pi)
                oy, ox = int(round(mag * math.sin(ang))), int(round(mag * math.cos(ang)))
                arr = fld.render(rng, offset=(oy, ox))
                # the cell moves the other way in the crop
                detail = f"dy={-oy};dx={-ox};phash_distance={_ham(_phash(arr), ph0)}"
            data = _original_bytes(arr, file_format)
        else:
            raise ValueError(o.kind)
        (out / o.relpath).write_bytes(data)
        details.append((o.relpath, detail))
    return details


def synthesize(out: Path, *, config: ReleaseConfig, scale: float = 0.01, seed: int = 0, workers: int = 1) -> SynthSummary:
    """Write a synthetic raw archive to ``out`` (created; must be empty or absent)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    cells = _plan(config, scale, seed)
    out.mkdir(parents=True, exist_ok=True)
    for folder in config.label_of_folder:
        (out / folder).mkdir(exist_ok=True)
    jobs = [(cell, str(out), seed, config.phash_threshold, config.image_size, config.image_format) for cell in cells]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_render_cell, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8) or 1))))
    else:
        results = [_render_cell(job) for job in jobs]
    detail = {rel: d for res in results for rel, d in res}

    outputs = sorted((o for cell in cells for o in cell.outputs), key=lambda o: o.relpath)
    folder_of = {label: folder for folder, label in config.label_of_folder.items()}
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "label", "patient_id", "annotator", "dysplastic"])
        for o in outputs:
            # the label column in the archive's own words (the folder name), as a lab's table would have it
            w.writerow([o.relpath, folder_of[o.label], o.patient, o.annotator, "true" if o.dysplastic else "false"])
    with open(out / "synth_truth.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "kind", "source", "expected_fate", "detail"])
        for o in outputs:
            w.writerow([o.relpath, o.kind, o.source, o.fate, detail[o.relpath]])
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
