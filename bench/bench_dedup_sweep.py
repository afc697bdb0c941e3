"""Robustness sweep of the dedup: which transforms of a crop make a duplicate, a look-alike or nothing.

    python bench/bench_dedup_sweep.py                    # 24 crops, every row, Markdown table on stdout
    python bench/bench_dedup_sweep.py --crops 8 --source field --seed 3

For a sample of crops and each transform at each strength, both images (the crop and its transformed
copy, each encoded as a file and decoded by the pipeline's own decode) go through ``dedup.deduplicate``
with the release config's thresholds: candidates from the hashes, the duplicate test, the same-cell test.
A pair is counted as *duplicate* when dedup merged it (identical pixels or the duplicate test), as
*look-alike* when it put both in one look-alike group, else *unrelated*. Each row also gives the scores
of the tests on the pair whatever the candidate search said (the coarse signature correlation that gates
the pixel tests, the duplicate test's residual and high-frequency ratio), so the table shows where each
threshold sits.

The crops are NOT the synthetic archive's: ``--source scene`` (default) draws fields with a generator
of its own (below: smear background, red cells, one nucleated cell with a textured nucleus, optional
white field-edge padding), independent of ``pipeline.synth.generator``; ``--source field`` uses
``pipeline.synth.field``'s field model with a random stream the synth never uses (its archive draws from
``[seed, 0xF1E1D, cell]``). So the thresholds are checked on crops they were not tuned on.

What each row should give (the paper's semantics, README "Dedup: where the line is"): a copy of one scan
is a duplicate (lossless re-save, JPEG q >= 80, brightness/contrast, shift <= 2 px with any fill, sensor
noise std <= 2); another focal plane (blur sigma >= 1) or another crop (>= 4 px) of the same cell is a
look-alike. At the line either answer is right, never "unrelated": a 3 px shift (past the duplicate test's
+-2 px search), blur sigma 0.5, noise std 3-4. A rotated or mirrored copy is not looked for (pHash is
orientation-sensitive, as in the paper's dedup): unrelated.
``EXPECTED`` holds these decisions; tests/test_dedup_sweep.py asserts them on a small sample.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stages import dedup, similarity  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.stages.decode import decode_image  # noqa: E402

SIZE = 288
MARGIN = 32  # canvas margin around the crop: room for re-crops up to 24 px
CANVAS = SIZE + 2 * MARGIN
DUPLICATE, LOOKALIKE, UNRELATED = "duplicate", "look-alike", "unrelated"
DIRECTIONS = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1))


# ---- crops that are not the synthetic archive's ------------------------------------------------------------


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-9)


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, edge: float = 1.5) -> np.ndarray:
    d = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * min(ry, rx) / edge, -60, 60)))


class SceneCell:
    """A field around one nucleated cell, from this module's own generator (not pipeline.synth.generator)."""

    def __init__(self, rng: np.random.Generator):
        yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float32)
        od = np.zeros((CANVAS, CANVAS, 3), dtype=np.float32)  # absorbance per channel
        od += 0.03 * (1 + 0.3 * _smooth(rng, (CANVAS, CANVAS), 40))[..., None]
        for _ in range(int(rng.integers(5, 12))):  # red cells with a pale centre
            cy, cx, r = rng.uniform(0, CANVAS), rng.uniform(0, CANVAS), rng.uniform(24, 34)
            ring = _disc(yy, xx, cy, cx, r, r * rng.uniform(0.9, 1.1)) - 0.5 * _disc(yy, xx, cy, cx, r * 0.45, r * 0.45, 3.0)
            od += ring[..., None] * np.array([0.06, 0.32, 0.22], dtype=np.float32)
        cy, cx = CANVAS / 2 + rng.uniform(-8, 8, 2)
        cyto = _disc(yy, xx, cy, cx, rng.uniform(42, 62), rng.uniform(42, 62))
        od += cyto[..., None] * np.array([0.14, 0.22, 0.06], dtype=np.float32) * (1 + 0.15 * _smooth(rng, (CANVAS, CANVAS), 2))[..., None]
        nucleus = np.zeros((CANVAS, CANVAS), dtype=np.float32)
        for _ in range(int(rng.integers(1, 5))):  # one round nucleus or a few lobes
            ly, lx = cy + rng.uniform(-16, 16), cx + rng.uniform(-16, 16)
            nucleus = np.maximum(nucleus, _disc(yy, xx, ly, lx, rng.uniform(14, 30), rng.uniform(14, 30)))
        chromatin = 1 + 0.35 * _smooth(rng, (CANVAS, CANVAS), 1.5)
        od += (nucleus * chromatin)[..., None] * np.array([0.75, 1.05, 0.35], dtype=np.float32)
        granules = (_smooth(rng, (CANVAS, CANVAS), 0.8) > 2.2) * cyto
        od += ndimage.gaussian_filter(granules.astype(np.float32), 0.7)[..., None] * np.array([0.3, 0.5, 0.2], dtype=np.float32)
        self.transmittance = np.array([238.0, 226.0, 232.0], dtype=np.float32) * np.exp(-od)
        self.sigma0 = float(rng.uniform(0.6, 1.1))
        self.noise = float(rng.uniform(0.8, 2.2))
        # a third of the crops lie at the scanned field's edge: a white bar on one side (canvas coordinates)
        self.pad = (int(rng.integers(0, 4)), int(rng.integers(MARGIN + 8, MARGIN + 60))) if rng.random() < 0.33 else None

    def render(self, rng: np.random.Generator, offset: tuple[int, int] = (0, 0), extra_sigma: float = 0.0) -> np.ndarray:
        """The crop with the window moved by ``offset``, at extra focus blur, with fresh sensor noise."""
        s = math.hypot(self.sigma0, extra_sigma)
        y0, x0 = MARGIN + offset[0], MARGIN + offset[1]
        field = ndimage.gaussian_filter(self.transmittance, (s, s, 0))
        field = field + rng.normal(0.0, self.noise, field.shape)
        if self.pad is not None:
            side, width = self.pad
            sl = [slice(None, width), slice(CANVAS - width, None)][side % 2]
            if side < 2:
                field[sl] = 255.0
            else:
                field[:, sl] = 255.0
        crop = field[y0 : y0 + SIZE, x0 : x0 + SIZE]
        return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


class FieldCell:
    """pipeline.synth.field's field model, drawn from a random stream the synth's archives never use."""

    def __init__(self, rng: np.random.Generator, label: str):
        from pipeline.synth.field import Field

        self._field = Field(label, rng)

    def render(self, rng: np.random.Generator, offset: tuple[int, int] = (0, 0), extra_sigma: float = 0.0) -> np.ndarray:
        sigma = math.hypot(self._field.sigma0, extra_sigma) if extra_sigma else None
        return self._field.render(rng, offset=offset, sigma=sigma)


def sample_cells(n: int, seed: int, source: str = "scene") -> list:
    labels = load_config().class_names
    cells = []
    for i in range(n):
        rng = np.random.default_rng([seed, 0x5EE9, i])
        cells.append(SceneCell(rng) if source == "scene" else FieldCell(rng, labels[i % len(labels)]))
    return cells


# ---- transforms ----------------------------------------------------------------------------------------------


def encode(arr: np.ndarray, fmt: str = "TIFF", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def shift(arr: np.ndarray, dy: int, dx: int, fill: str) -> np.ndarray:
    """Content moved by (dy, dx); uncovered rows/columns repeat the edge, or are white or black."""
    h, w = arr.shape[:2]
    out = arr[np.clip(np.arange(h) - dy, 0, h - 1)][:, np.clip(np.arange(w) - dx, 0, w - 1)].copy()
    if fill != "edge":
        value = 255 if fill == "white" else 0
        if dy > 0:
            out[:dy] = value
        elif dy < 0:
            out[dy:] = value
        if dx > 0:
            out[:, :dx] = value
        elif dx < 0:
            out[:, dx:] = value
    return out


def brightness(arr: np.ndarray, levels: int) -> np.ndarray:
    return np.clip(arr.astype(np.int16) + levels, 0, 255).astype(np.uint8)


def contrast(arr: np.ndarray, factor: float) -> np.ndarray:
    x = arr.astype(np.float32)
    return np.clip(np.rint(x.mean() + (x - x.mean()) * factor), 0, 255).astype(np.uint8)


def noise(arr: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(arr + rng.normal(0.0, std, arr.shape)), 0, 255).astype(np.uint8)


# A transform takes (cell, its base crop, crop index, rng) and gives the copy's file bytes.
Transform = Callable[[object, np.ndarray, int, np.random.Generator], bytes]


@dataclass(frozen=True)
class Row:
    group: str  # the row kind the tests assert on
    name: str
    expected: tuple[str, ...]  # the answers the semantics allow (one, or two at a documented boundary)
    make: Transform


def _direction(i: int, k: int) -> tuple[int, int]:
    """A move by about k px (diagonals by k / sqrt 2 on each axis), in one of eight directions by crop."""
    dy, dx = DIRECTIONS[i % len(DIRECTIONS)]
    step = k if dy == 0 or dx == 0 else max(1, round(k / math.sqrt(2)))
    return dy * step, dx * step


def rows() -> list[Row]:
    out: list[Row] = []
    for fill in ("edge", "white", "black"):
        for k in (1, 2, 3):
            # past the duplicate test's +-2 px search the copy is left 1 px misaligned: a duplicate when the
            # residual still fits DUP_MAX_RMS (smooth crops), else a look-alike; never unrelated
            exp = (DUPLICATE,) if k <= similarity.DUP_MAX_SHIFT else (DUPLICATE, LOOKALIKE)
            out.append(Row("shift" if k <= 2 else "shift 3", f"shift {k} px, {fill} fill", exp, lambda c, a, i, r, k=k, fill=fill: encode(shift(a, *_direction(i, k), fill))))
    out.append(Row("shift+brightness", "shift 1 px right, white fill, +2 levels", (DUPLICATE,), lambda c, a, i, r: encode(brightness(shift(a, 0, 1, "white"), 2))))
    out.append(Row("shift+brightness", "shift 2 px, edge fill, -4 levels", (DUPLICATE,), lambda c, a, i, r: encode(brightness(shift(a, *_direction(i, 2), "edge"), -4))))
    for lv in (1, 2, 4, 8, -1, -2, -4, -8):
        out.append(Row("brightness", f"brightness {lv:+d} levels", (DUPLICATE,), lambda c, a, i, r, lv=lv: encode(brightness(a, lv))))
    for f in (1.05, 0.95):
        out.append(Row("contrast", f"contrast {f - 1:+.0%}", (DUPLICATE,), lambda c, a, i, r, f=f: encode(contrast(a, f))))
    for q in (80, 85, 90, 95, 100):
        out.append(Row("jpeg", f"JPEG q{q}", (DUPLICATE,), lambda c, a, i, r, q=q: encode(a, "JPEG", quality=q)))
    out.append(Row("lossless", "re-saved as PNG", (DUPLICATE,), lambda c, a, i, r: encode(a, "PNG")))
    out.append(Row("lossless", "re-saved as LZW TIFF", (DUPLICATE,), lambda c, a, i, r: encode(a, "TIFF", compression="tiff_lzw")))
    out.append(Row("lossless", "re-saved as deflate TIFF", (DUPLICATE,), lambda c, a, i, r: encode(a, "TIFF", compression="tiff_adobe_deflate")))
    for name, fn in (("rotated 90", lambda a: np.rot90(a, 1)), ("rotated 180", lambda a: np.rot90(a, 2)), ("rotated 270", lambda a: np.rot90(a, 3)),
                     ("flipped left-right", lambda a: a[:, ::-1]), ("flipped top-bottom", lambda a: a[::-1])):
        out.append(Row("rotation/flip", name, (UNRELATED,), lambda c, a, i, r, fn=fn: encode(np.ascontiguousarray(fn(a)))))
    for k in (4, 8, 12, 16, 20, 24):  # along one axis (diagonal moves of 1-3 px are in the shift rows)
        out.append(Row("crop", f"re-cropped {k} px off", (LOOKALIKE,), lambda c, a, i, r, k=k: encode(c.render(r, offset=_direction(i % 4, k)))))
    for s in (0.5, 1.0, 1.5, 2.0, 3.0):
        exp = (LOOKALIKE,) if s >= 1.0 else (DUPLICATE, LOOKALIKE)
        out.append(Row("refocus" if s >= 1.0 else "refocus 0.5", f"refocused, extra blur sigma {s:g}", exp, lambda c, a, i, r, s=s: encode(c.render(r, extra_sigma=s))))
    for sd in (1, 2, 3, 4):
        # added noise raises the high-frequency energy as a sharper focal plane does: from std 3 the focus
        # bound can take a noisy copy for another focal plane (kept, in its source's look-alike group)
        exp = (DUPLICATE,) if sd <= 2 else (DUPLICATE, LOOKALIKE)
        out.append(Row("noise" if sd <= 2 else "noise 3-4", f"sensor noise std {sd}", exp, lambda c, a, i, r, sd=sd: encode(noise(a, sd, r))))
    out.append(Row("control", "another cell (control)", (UNRELATED,), lambda c, a, i, r: b""))
    return out


# ---- classifying a row -----------------------------------------------------------------------------------------


@dataclass
class RowResult:
    row: Row
    answers: list[str]
    gate: list[float]  # the duplicate gate's score of each pair (interior signature correlation)
    coarse: list[float]  # coarse same-cell correlation of each pair (the fine same-cell test's prefilter)
    rms: list[float]  # the duplicate test's residual of each pair
    hf: list[float]  # the duplicate test's high-frequency ratio of each pair
    phash: list[int]  # pHash distance of each pair

    def fraction(self, answer: str) -> float:
        return self.answers.count(answer) / len(self.answers)

    @property
    def holds(self) -> bool:
        return all(a in self.row.expected for a in self.answers)


def _facts(name: str, data: bytes):
    facts, rgb = decode_image(data, name, "x", (SIZE, SIZE))
    return facts, rgb


def run_row(row: Row, cells: list, bases: list[np.ndarray], seed: int, scores: bool = True) -> RowResult:
    """Every crop and its copy through deduplicate at once (copies of different crops never meet)."""
    cfg = load_config()
    facts, pixels, pairs = [], {}, []
    for i, (cell, base) in enumerate(zip(cells, bases)):
        rng = np.random.default_rng([seed, 0xC09, i, sum(map(ord, row.name))])
        copy = bases[(i + 1) % len(bases)] if row.group == "control" else None
        data = encode(copy) if copy is not None else row.make(cell, base, i, rng)
        a_name, b_name = f"c{i:03d}/a.tif", f"c{i:03d}/b.bin"
        for name, blob in ((a_name, encode(base)), (b_name, data)):
            f, rgb = _facts(name, blob)
            facts.append(f)
            pixels[name] = rgb
        pairs.append((a_name, b_name))
    result = dedup.deduplicate(facts, pixels.__getitem__, phash_threshold=cfg.phash_threshold, lookalike_threshold=cfg.lookalike_threshold, policy="drop_all")
    joined = {frozenset((p.a, p.b)): p.kind for p in result.pairs}
    by_name = {f.relpath: f for f in facts}
    answers, gate, coarse, rms, hf, dist = [], [], [], [], [], []
    for a, b in pairs:
        kind = joined.get(frozenset((a, b)))
        if kind in ("exact", "near_duplicate"):
            answers.append(DUPLICATE)
        elif kind == "lookalike" or result.group_of[a] == result.group_of[b]:
            answers.append(LOOKALIKE)
        else:
            answers.append(UNRELATED)
        dist.append((by_name[a].phash ^ by_name[b].phash).bit_count())
        if scores:
            sig_a, sig_b = similarity.signature(pixels[a]), similarity.signature(pixels[b])
            gate.append(similarity.gate_corr(sig_a, sig_b))
            coarse.append(similarity.coarse_test((sig_a, sig_b)).coarse_corr)
            d = similarity.compare_duplicate(pixels[a], pixels[b])
            rms.append(d.rms)
            hf.append(d.hf_ratio)
    return RowResult(row, answers, gate, coarse, rms, hf, dist)


def sweep(n_crops: int, seed: int, source: str = "scene", only: Callable[[Row], bool] | None = None, scores: bool = True) -> list[RowResult]:
    cells = sample_cells(n_crops, seed, source)
    bases = [c.render(np.random.default_rng([seed, 0xBA5E, i])) for i, c in enumerate(cells)]
    return [run_row(row, cells, bases, seed, scores) for row in rows() if only is None or only(row)]


# ---- the table -------------------------------------------------------------------------------------------------


def _span(values: list[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    return f"{lo:.{digits}f}" if lo == hi else f"{lo:.{digits}f}-{hi:.{digits}f}"


def table(results: list[RowResult]) -> str:
    lines = [
        "| transform | duplicate | look-alike | unrelated | semantics say | holds | pHash bits | gate corr | coarse corr | dup rms | hf ratio |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fr = [f"{r.fraction(k):.0%}" for k in (DUPLICATE, LOOKALIKE, UNRELATED)]
        lines.append(
            f"| {r.row.name} | {' | '.join(fr)} | {' or '.join(r.row.expected)} | {'yes' if r.holds else '**no**'} | "
            f"{_span([float(d) for d in r.phash], 0)} | {_span(r.gate, 3)} | {_span(r.coarse, 3)} | {_span(r.rms, 2)} | {_span(r.hf, 2)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=24, help="crops in the sample (each gets every transform)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--source", choices=("scene", "field"), default="scene", help="this script's own generator, or synth's field model on an unused stream")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    results = sweep(a.crops, a.seed, a.source)
    cfg = load_config()
    copies = [g for r in results if DUPLICATE in r.row.expected for g in r.gate]
    others = [g for r in results if DUPLICATE not in r.row.expected and r.row.group != "refocus" for g in r.gate]
    print(f"dedup robustness sweep: {a.crops} crops (source {a.source}, seed {a.seed}), {len(results)} rows, "
          f"phash_threshold {cfg.phash_threshold}, lookalike_threshold {cfg.lookalike_threshold}, {time.perf_counter() - start:.0f} s\n")
    print(table(results))
    print(f"\nduplicate gate (interior signature correlation, DUP_GATE_MIN_CORR = {similarity.DUP_GATE_MIN_CORR}): "
          f"copies (rows that allow a duplicate) {min(copies):.4f} at least, median {statistics.median(copies):.4f}; "
          f"rotations, re-crops and other cells {max(others):.4f} at most")
    failing = [r.row.name for r in results if not r.holds]
    print("rows off their semantics: " + (", ".join(failing) if failing else "none"))
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
