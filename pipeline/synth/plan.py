"""Which images a synthetic archive holds: cells per class, planted duplicates, conflicts, look-alikes, patients.

Everything is planned in the parent process from (config, scale, seed), before any pixel is drawn, so the
archive is the same whatever the number of render workers. A `Cell` is one field (one original); its
`Output`s are the files drawn from it: outputs[0] is the original, the others are derived from it.

Counts: at scale 1 the raw and kept counts per class are the config's ``raw_count`` and ``published_count``
(for MLL23, pipeline/configs/mll23.toml: 41,906 -> 41,621, the paper's clean-up). The removed images of a
class (raw - published) are duplicates, conflict members and dysplastic cells; a conflict pair removes one
image from each of two classes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import ReleaseConfig

DUPLICATE_KINDS = ("exact_copy", "reencode_png", "reencode_lzw", "jpeg", "shift", "brighter")
LOOKALIKE_KINDS = ("refocus_samehash", "refocus_blur", "refocus_sharp", "recrop")
KINDS = ("original", "dysplastic", "conflict_original", "conflict_copy") + DUPLICATE_KINDS + LOOKALIKE_KINDS
ORIGINAL_KINDS = ("original", "dysplastic", "conflict_original")

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
# Kinds that would be lossless copies of a lossy original: in an archive of JPEG files a lossless copy would be
# preferred over the original it came from, which is not what such archives hold, so they become these instead.
_LOSSY_ARCHIVE_KINDS = {"reencode_png": "exact_copy", "reencode_lzw": "jpeg", "shift": "exact_copy", "brighter": "jpeg"}
SUFFIX = {"TIFF": "tif", "PNG": "png", "JPEG": "jpg"}
# File extensions of the derived kinds that are not stored in the archive's own format.
_KIND_SUFFIX = {"reencode_png": "png", "reencode_lzw": "tif", "jpeg": "jpg"}


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def expected_counts(config: ReleaseConfig, scale: float) -> dict[str, tuple[int, int]]:
    """label -> (raw images, images a correct build keeps) in an archive synthesised at ``scale``.

    Scale 1 gives the config's raw_count and published_count exactly. Smaller scales round the published count
    (at least MIN_KEPT) and the removed count (at least 1 where the class loses any at scale 1).
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


@dataclass
class Output:
    """One file of the archive and its truth row."""

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
class Cell:
    """One field: an original and the files derived from it."""

    index: int
    label: str  # class folder of the original (also its drawing style)
    kind: str  # original / dysplastic / conflict_original
    outputs: list[Output] = field(default_factory=list)  # outputs[0] is the original


@dataclass
class _Removals:
    """What each class's removed images are: conflict pairs, duplicate kinds, dysplastic cells."""

    pairs: list[tuple[str, str]]
    duplicates: dict[str, list[str]]
    dysplastic: dict[str, int]


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


def _removal_slots(removed: dict[str, int], labels: list[str]) -> dict[str, list[str]]:
    """Each class's removal slots with their kind from the cycle, interleaved over classes."""
    slot_kinds: dict[str, list[str]] = {lab: [] for lab in labels}
    k = 0
    for r in range(max(removed.values(), default=0)):
        for lab in labels:
            if removed[lab] > r:
                slot_kinds[lab].append(_REMOVAL_CYCLE[k % len(_REMOVAL_CYCLE)])
                k += 1
    return slot_kinds


def _removals(config: ReleaseConfig, counts: dict[str, tuple[int, int]], labels: list[str]) -> _Removals:
    """Conflict pairs between classes; conflict slots no other class could pair with become duplicates."""
    lossy = config.image_format == "JPEG"
    slot_kinds = _removal_slots({lab: counts[lab][0] - counts[lab][1] for lab in labels}, labels)
    conflict_counts = {lab: kinds.count("conflict") for lab, kinds in slot_kinds.items()}
    pairs = _pair_conflicts(conflict_counts, labels, {c.label: c.lineage for c in config.classes})
    used = Counter(a for a, _ in pairs) + Counter(b for _, b in pairs)
    removals = _Removals(pairs, {lab: [] for lab in labels}, {lab: 0 for lab in labels})
    f = 0
    for lab in labels:
        spare = conflict_counts[lab] - used[lab]
        for kind in slot_kinds[lab]:
            if kind == "conflict":
                if spare > 0:
                    spare -= 1
                    removals.duplicates[lab].append(_FALLBACK_DUPES[f % len(_FALLBACK_DUPES)])
                    f += 1
            elif kind == "dysplastic":
                removals.dysplastic[lab] += 1
            else:
                removals.duplicates[lab].append(_LOSSY_ARCHIVE_KINDS.get(kind, kind) if lossy else kind)
    return removals


def _lookalike_kinds(kept: dict[str, int], labels: list[str], scale: float, rng: np.random.Generator
                     ) -> dict[str, list[str]]:
    """Per kind a total, spread over classes in proportion to what they keep, at most a third of a class's
    kept images so every look-alike has its own twin."""
    cap = {lab: kept[lab] // 3 for lab in labels}
    look: dict[str, list[str]] = {lab: [] for lab in labels}
    totals = {kind: max(_LOOKALIKES_MIN[kind], _round(_LOOKALIKES_AT_1[kind] * scale)) for kind in LOOKALIKE_KINDS}
    queue = [kind for i in range(max(totals.values())) for kind in LOOKALIKE_KINDS if totals[kind] > i]
    for kind in queue:
        avail = [lab for lab in labels if len(look[lab]) < cap[lab]]
        if not avail:
            break
        weights = np.array([kept[lab] for lab in avail], dtype=float)
        lab = avail[int(rng.choice(len(avail), p=weights / weights.sum()))]
        look[lab].append(kind)
    return look


def _conflict_cell(i: int, pair: tuple[str, str], rng: np.random.Generator) -> Cell:
    """A conflict original in one class of the pair (drawn at random) and its copy in the other."""
    a, b = pair
    home, other = (a, b) if rng.random() < 0.5 else (b, a)
    cell = Cell(0, home, "conflict_original")
    cell.outputs.append(Output("", home, "conflict_original", "", "label_conflict"))
    cell.outputs.append(Output("", other, "conflict_copy", "", "label_conflict", variant="exact" if i % 2 == 0 else "jpeg"))
    return cell


def _cells(labels: list[str], plain: dict[str, list[Cell]], removals: _Removals, rng: np.random.Generator
           ) -> list[Cell]:
    """Every cell, numbered: per class its plain and dysplastic originals, then the conflict originals."""
    cells: list[Cell] = []
    for lab in labels:
        cells.extend(plain[lab])
        cells.extend(Cell(0, lab, "dysplastic") for _ in range(removals.dysplastic[lab]))
    cells.extend(_conflict_cell(i, pair, rng) for i, pair in enumerate(removals.pairs))
    for i, cell in enumerate(cells):
        cell.index = i
        if not cell.outputs:
            fate = "excluded" if cell.kind == "dysplastic" else "kept"
            cell.outputs.append(Output("", cell.label, cell.kind, "", fate, dysplastic=cell.kind == "dysplastic"))
    return cells


def _derive(labels: list[str], plain: dict[str, list[Cell]], removals: _Removals, look: dict[str, list[str]],
            rng: np.random.Generator) -> None:
    """Duplicates from random plain originals of their class; each look-alike from a plain original of its own."""
    for lab in labels:
        for kind in removals.duplicates[lab]:
            src = plain[lab][int(rng.integers(len(plain[lab])))]
            src.outputs.append(Output("", lab, kind, "", "duplicate"))
        if look[lab]:
            twins = rng.choice(len(plain[lab]), size=len(look[lab]), replace=False)
            for kind, t in zip(look[lab], twins):
                plain[lab][int(t)].outputs.append(Output("", lab, kind, "", "kept"))


def _assign_patients(cells: list[Cell], rng: np.random.Generator) -> None:
    """Shuffled cells in runs of 10-60 per patient; everything derived from a cell shares its patient."""
    order = rng.permutation(len(cells))
    p, pos = 0, 0
    while pos < len(order):
        p += 1
        size = int(rng.integers(_PATIENT_SIZE[0], _PATIENT_SIZE[1] + 1))
        for ci in order[pos : pos + size]:
            for o in cells[ci].outputs:
                o.patient = f"P{p:04d}"
        pos += size


def _name_files(cells: list[Cell], numbers: np.ndarray, config: ReleaseConfig) -> None:
    """Unique numbers; inside a cell the original takes the smallest number of its folder, so a "prefer
    lossless, then smallest relpath" rule keeps it."""
    folder_of = {label: folder for folder, label in config.label_of_folder.items()}
    original_suffix = SUFFIX[config.image_format]
    i = 0
    for cell in cells:
        nums = sorted(int(n) for n in numbers[i : i + len(cell.outputs)])
        i += len(cell.outputs)
        same = [o for o in cell.outputs if o.label == cell.label]
        rest = [o for o in cell.outputs if o.label != cell.label]
        for o, n in zip(same + rest, nums):
            ext = _KIND_SUFFIX.get(o.kind, original_suffix)
            if o.kind == "conflict_copy" and o.variant == "jpeg":
                ext = "jpg"
            o.relpath = f"{folder_of[o.label]}/cell_{n:06d}.{ext}"


def _annotate(cells: list[Cell], rng: np.random.Generator) -> None:
    """One annotator per image (a conflict copy's differs from its original's); sources by relpath."""
    for cell in cells:
        orig = cell.outputs[0]
        for o in cell.outputs:
            a = int(rng.integers(len(ANNOTATORS)))
            if o.kind == "conflict_copy":
                a = (ANNOTATORS.index(orig.annotator) + 1 + int(rng.integers(len(ANNOTATORS) - 1))) % len(ANNOTATORS)
            o.annotator = ANNOTATORS[a]
            if o is not orig:
                o.source = orig.relpath


def plan_cells(config: ReleaseConfig, scale: float, seed: int) -> list[Cell]:
    """Every cell of the archive of (config, scale, seed), each with its named, annotated outputs."""
    counts = expected_counts(config, scale)
    labels = [c.label for c in config.classes]
    rng = np.random.default_rng([seed, 0x51A7])
    removals = _removals(config, counts, labels)
    kept = {lab: counts[lab][1] for lab in labels}
    look = _lookalike_kinds(kept, labels, scale, rng)
    plain = {lab: [Cell(0, lab, "original") for _ in range(kept[lab] - len(look[lab]))] for lab in labels}
    cells = _cells(labels, plain, removals, rng)
    _derive(labels, plain, removals, look, rng)
    _assign_patients(cells, rng)
    numbers = rng.permutation(sum(len(cell.outputs) for cell in cells)) + 1
    _name_files(cells, numbers, config)
    _annotate(cells, rng)
    return cells
