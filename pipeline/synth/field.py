"""Drawing one scanned field around a nucleated cell, and rendering crops of it at a focus, offset and noise.

A field is a sharp transmittance canvas (Beer-Lambert mix of stains: pale pink plasma, red cells with a
central pallor, one centred nucleated cell whose nucleus shape, chromatin, cytoplasm colour and granules
depend on the class); a crop of it is blurred to a focal plane, given the camera's noise and quantised.
Every draw comes from the caller's random generator in a fixed order, so a field is a function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.synth.camera import sensor_noise
from pipeline.synth.shapes import blob, capsules, granules, grid, nucleus, smooth_noise, soft
from pipeline.synth.styles import add_stain, style_of

MARGIN = 32  # canvas margin around the crop: room for re-crops (<= 20 px) plus the blur kernel


@dataclass(frozen=True)
class _Patch:
    """The square of canvas around the nucleated cell: its pixel coordinates, the cell's centre and radius."""

    Y: np.ndarray
    X: np.ndarray
    cy: float
    cx: float
    R: float
    sl: tuple[slice, slice]


def _place_cell(rng: np.random.Generator, style: dict, CH: int, CW: int) -> _Patch:
    """The nucleated cell, centred on the canvas with a few px of jitter."""
    R = float(rng.uniform(*style["radius"]))
    cy, cx = CH / 2 + rng.uniform(-6, 6), CW / 2 + rng.uniform(-6, 6)
    half = int(R * 1.25) + 8
    y0, x0 = int(cy) - half, int(cx) - half
    sl = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
    Y, X = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32)
    return _Patch(Y, X, cy, cx, R, sl)


def _cytoplasm_mask(rng: np.random.Generator, style: dict, p: _Patch) -> np.ndarray:
    """The cell's outline (all zero for a cell without cytoplasm)."""
    if style.get("cyto") is None:
        return np.zeros(p.Y.shape, dtype=np.float32)
    amp = 0.12 if style.get("wavy") else 0.05
    cyto = blob(rng, p.Y, p.X, p.cy, p.cx, p.R, amp, ellip=rng.uniform(*style.get("oval", (0.88, 1.0))),
                rot=rng.uniform(0, np.pi), edge=1.2)
    if style.get("hairy"):
        # Hairy cell: thin cytoplasmic projections all round the edge.
        dy, dx = p.Y - p.cy, p.X - p.cx
        theta = np.arctan2(dy, dx)
        spikes = sum(np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (19, 27, 37)) / 3.0
        rr = p.R * (1.0 + 0.2 * np.clip(spikes, 0, None) ** 3)
        cyto = np.maximum(cyto, soft(rr - np.hypot(dy, dx)))
    return cyto


def _golgi_hof(rng: np.random.Generator, p: _Patch, nuc: np.ndarray) -> np.ndarray | None:
    """Plasma cell: a pale perinuclear zone (Golgi) beside the nucleus, toward the cell centre."""
    wy, wx = np.nonzero(nuc > 0.5)
    if not len(wy):
        return None
    my, mx = float(p.Y[wy, wx].mean()), float(p.X[wy, wx].mean())
    d = math.hypot(p.cy - my, p.cx - mx) + 1e-6
    rn = math.sqrt(len(wy) / math.pi)
    hy, hx = my + (p.cy - my) / d * rn * 1.1, mx + (p.cx - mx) / d * rn * 1.1
    return blob(rng, p.Y, p.X, hy, hx, rn * 0.55, 0.1, edge=6.0)


def _stain_cytoplasm(rng: np.random.Generator, style: dict, p: _Patch, cyto: np.ndarray, nuc: np.ndarray,
                     cell_od: np.ndarray) -> None:
    """Cytoplasm stain with texture, a hof and vacuoles where the class has them."""
    comp, amt = style["cyto"]
    cdens = rng.uniform(*amt) * (1.0 + 0.12 * smooth_noise(rng, p.Y.shape, 6.0))
    if style.get("wavy"):
        # Reactive lymphocyte: cytoplasm deepens toward its edge.
        cdens = cdens * (0.6 + 0.8 * np.clip(np.hypot(p.Y - p.cy, p.X - p.cx) / p.R, 0, 1) ** 2)
    cmask = cyto * (1.0 - nuc)
    if style.get("hof"):
        hof = _golgi_hof(rng, p, nuc)
        if hof is not None:
            cmask = cmask * (1.0 - 0.55 * hof)
    add_stain(cell_od, cmask * cdens, comp)
    lo, hi = style.get("vacuoles", (0, 0))
    for _ in range(int(rng.integers(lo, hi + 1))):
        a, rr = rng.uniform(0, 2 * np.pi), p.R * rng.uniform(0.5, 0.85)
        v = blob(rng, p.Y, p.X, p.cy + rr * math.sin(a), p.cx + rr * math.cos(a), rng.uniform(2.5, 5.5), 0.05)
        add_stain(cell_od, -(v * cmask * cdens * 0.8), comp)


def _stain_nucleus(rng: np.random.Generator, style: dict, p: _Patch, nuc: np.ndarray, cell_od: np.ndarray) -> None:
    """Chromatin texture (coarse + fine), nucleoli as paler spots."""
    a_ch, grain = style["chrom"]
    chrom = 1.0 + a_ch * (0.7 * smooth_noise(rng, p.Y.shape, grain) + 0.5 * smooth_noise(rng, p.Y.shape, grain / 2))
    ndens = rng.uniform(*style["ndens"]) * np.clip(chrom, 0.3, 2.0)
    lo, hi = style.get("nucleoli", (0, 0))
    ys, xs = np.nonzero(nuc > 0.99)
    for _ in range(int(rng.integers(lo, hi + 1))):
        if len(ys) == 0:
            break
        j = int(rng.integers(len(ys)))
        spot = blob(rng, p.Y, p.X, float(p.Y[ys[j], xs[j]]), float(p.X[ys[j], xs[j]]), rng.uniform(4, 7), 0.1, edge=2.0)
        ndens = ndens * (1.0 - 0.45 * spot)
    add_stain(cell_od, nuc * ndens, "nucleus")


def _stain_inclusions(rng: np.random.Generator, style: dict, p: _Patch, cyto: np.ndarray, nuc: np.ndarray,
                      dysplastic: bool, cell_od: np.ndarray) -> None:
    """Granules (fewer in a dysplastic cell: hypogranular) and Auer rods where the class has them."""
    if style.get("gran") is not None:
        comp, per_kpx, size, strength, over = style["gran"]
        if dysplastic:
            per_kpx *= 0.3
        gmask = cyto if over else cyto * (1.0 - nuc)
        add_stain(cell_od, granules(rng, p.Y.shape, gmask, per_kpx, size, strength), comp)
    lo, hi = style.get("auer", (0, 0))
    for _ in range(int(rng.integers(lo, hi + 1))):
        a, rr = rng.uniform(0, 2 * np.pi), p.R * rng.uniform(0.3, 0.7)
        py, px = p.cy + rr * math.sin(a), p.cx + rr * math.cos(a)
        b = rng.uniform(0, np.pi)
        ln = rng.uniform(8, 16)
        pts = np.array([[py - ln * math.sin(b), px - ln * math.cos(b)], [py + ln * math.sin(b), px + ln * math.cos(b)]])
        add_stain(cell_od, 0.9 * capsules(p.Y, p.X, pts, np.array([1.2, 1.2])) * cyto, "auer")


def _red_cell(rng: np.random.Generator, rbc: np.ndarray, py: float, px: float, r: float) -> None:
    """Add one red cell (a disc with a central pallor) to `rbc`."""
    CH, CW = rbc.shape
    ry0, rx0 = max(0, int(py - r) - 3), max(0, int(px - r) - 3)
    ry1, rx1 = min(CH, int(py + r) + 4), min(CW, int(px + r) + 4)
    if ry1 <= ry0 or rx1 <= rx0:
        return
    RY, RX = grid(ry0, ry1, rx0, rx1)
    disc = blob(rng, RY, RX, py, px, r, 0.0, ellip=rng.uniform(0.88, 1.0), rot=rng.uniform(0, np.pi), edge=1.3)
    rho = np.sqrt((RY - np.float32(py)) ** 2 + (RX - np.float32(px)) ** 2) * np.float32(1.0 / r)
    pallor = np.float32(rng.uniform(0.45, 0.75))
    wp = np.float32(1.0 / rng.uniform(0.38, 0.5) ** 2)
    rho2 = rho * rho
    prof = np.float32(rng.uniform(0.85, 1.1)) * (0.88 + 0.22 * rho2 - pallor * np.exp(-rho2 * wp))
    rbc[ry0:ry1, rx0:rx1] += disc * prof


def _red_cells(rng: np.random.Generator, CH: int, CW: int, p: _Patch, cyto: np.ndarray) -> np.ndarray:
    """Red cells around the nucleated cell (about 7.5 um across), partly under its edge."""
    rbc = np.zeros((CH, CW), dtype=np.float32)
    placed: list[tuple[float, float, float]] = []
    target = int(rng.integers(2, 11))  # sparse to crowded smear regions, never empty
    for _ in range(80):
        if len(placed) >= target:
            break
        r = float(rng.uniform(38, 48))
        py, px = rng.uniform(MARGIN - r / 2, np.array([CH, CW]) - MARGIN + r / 2, 2)  # at least half inside the crop
        if math.hypot(py - p.cy, px - p.cx) < p.R + 0.55 * r:
            continue
        if any(math.hypot(py - qy, px - qx) < 0.8 * (r + qr) for qy, qx, qr in placed):
            continue
        placed.append((py, px, r))
        _red_cell(rng, rbc, py, px, r)
    rbc[p.sl] *= 1.0 - 0.85 * cyto
    return rbc


def _transmit(rng: np.random.Generator, od: np.ndarray) -> np.ndarray:
    """Optical density to transmitted light, in place: lamp colour, and uneven illumination / smear thickness
    as a gentle brightness ramp of up to +-7% across the field."""
    _, CH, CW = od.shape
    light = np.array([246.0, 244.0, 246.0], dtype=np.float32) * rng.uniform(0.985, 1.01, 3).astype(np.float32)
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= light[:, None, None]
    gy, gx = rng.uniform(-0.07, 0.07, 2) / np.array([CH, CW])
    od *= (1.0 + gy * (np.arange(CH, dtype=np.float32)[:, None] - CH / 2) + gx * (np.arange(CW, dtype=np.float32)[None, :] - CW / 2))[None]
    return od


def _nucleated_cell(rng: np.random.Generator, style: dict, p: _Patch, dysplastic: bool) -> tuple[np.ndarray, np.ndarray]:
    """The nucleated cell's optical density over the patch, and its cytoplasm mask."""
    cyto = _cytoplasm_mask(rng, style, p)
    nuc = nucleus(rng, style, p.Y, p.X, p.cy, p.cx, p.R)
    if style.get("cyto") is not None:
        nuc = np.minimum(nuc, cyto)
    cell_od = np.zeros((3,) + p.Y.shape, dtype=np.float32)
    if style.get("cyto") is not None:
        _stain_cytoplasm(rng, style, p, cyto, nuc, cell_od)
    _stain_nucleus(rng, style, p, nuc, cell_od)
    _stain_inclusions(rng, style, p, cyto, nuc, dysplastic, cell_od)
    return cell_od, cyto


def _edge_bar(out: np.ndarray, pad: tuple[str, int], offset: tuple[int, int]) -> None:
    """White out the field's edge in a crop: fixed in canvas coordinates, it sits at width - offset."""
    H, W = out.shape[:2]
    oy, ox = offset
    side, width = pad
    if side == "top":
        out[: max(0, width - oy)] = 255
    elif side == "bottom":
        out[min(H, H - width - oy) :] = 255
    elif side == "left":
        out[:, : max(0, width - ox)] = 255
    else:
        out[:, min(W, W - width - ox) :] = 255


class Field:
    """A scanned field around one nucleated cell: a sharp transmittance canvas plus focus and noise levels."""

    def __init__(self, label: str, rng: np.random.Generator, dysplastic: bool = False, size: tuple[int, int] = (288, 288)):
        style = style_of(label)
        self.width, self.height = size
        CH, CW = self.height + 2 * MARGIN, self.width + 2 * MARGIN
        od = np.zeros((3, CH, CW), dtype=np.float32)  # channel-first: 2D planes are much faster than HxWx3
        add_stain(od, 1.0 + 0.3 * smooth_noise(rng, (CH, CW), 48.0), "plasma")
        patch = _place_cell(rng, style, CH, CW)
        cell_od, cyto = _nucleated_cell(rng, style, patch, dysplastic)
        add_stain(od, _red_cells(rng, CH, CW, patch, cyto), "rbc")
        od[:, patch.sl[0], patch.sl[1]] += cell_od
        self.T = _transmit(rng, od)  # (3, CH, CW) transmitted light
        self.sigma0 = float(rng.uniform(0.7, 1.1))
        self.noise = float(rng.uniform(1.3, 2.0))  # shot noise at full scale (see camera.sensor_noise)
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
        y0, x0 = MARGIN + oy, MARGIN + ox
        m = int(math.ceil(3.5 * s)) + 1
        H, W = self.height, self.width
        signal = np.empty((3, H, W), dtype=np.float32)
        for c in range(3):
            region = self.T[c, y0 - m : y0 + H + m, x0 - m : x0 + W + m]
            signal[c] = ndimage.gaussian_filter(region, s, truncate=3.5)[m : m + H, m : m + W]
        noise = sensor_noise(rng, signal, self.read_sd, self.noise)
        noise += signal
        np.clip(noise, 0.0, 255.0, out=noise)
        noise += 0.5
        out = np.ascontiguousarray(noise.astype(np.uint8).transpose(1, 2, 0))
        if self.pad is not None:
            _edge_bar(out, self.pad, offset)
        return out
