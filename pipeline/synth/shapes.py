"""Soft masks a field is drawn from: smooth noise, irregular ellipses, capsules, nuclei of each shape, granules."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grain: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with features about ``grain`` px wide (bicubic upsampling)."""
    grain = max(1.0, float(grain))
    gh, gw = int(math.ceil(shape[0] / grain)) + 1, int(math.ceil(shape[1] / grain)) + 1
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    big = Image.fromarray(g, "F").resize((int(gw * grain), int(gh * grain)), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)[: shape[0], : shape[1]]


def soft(inside: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased mask from a signed distance (positive inside)."""
    return np.clip(inside * (1.0 / edge) + 0.5, 0.0, 1.0)


def grid(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]


def blob(rng, Y, X, cy, cx, r, amp, ellip=1.0, rot=0.0, edge=1.0, indent=0.0) -> np.ndarray:
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
    return soft(np.float32(r) * rr - rho, edge)


def capsules(Y, X, pts: np.ndarray, radii: np.ndarray, edge: float = 1.0) -> np.ndarray:
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
    return soft(inside, edge)


def _cleaved(rng, Y, X, ny, nx, rn) -> np.ndarray:
    """A round nucleus with a cleft across it (neoplastic lymphocytes)."""
    m = blob(rng, Y, X, ny, nx, rn, 0.08, ellip=rng.uniform(0.85, 1.0), rot=rng.uniform(0, np.pi))
    a = rng.uniform(0, np.pi)
    d = np.abs((Y - ny) * math.cos(a) - (X - nx) * math.sin(a))
    along = (Y - ny) * math.sin(a) + (X - nx) * math.cos(a)
    cleft = soft(1.2 - d) * soft(along + rn * rng.uniform(-0.9, -0.2), 2.0)
    return m * (1.0 - 0.85 * cleft)


def _band(rng, Y, X, ny, nx, R) -> np.ndarray:
    """A curved band of even thickness (band neutrophils)."""
    rho0 = R * rng.uniform(0.45, 0.55)
    span = rng.uniform(2.6, 4.2)
    a0 = rng.uniform(0, 2 * np.pi)
    ts = np.linspace(-span / 2, span / 2, 11) + a0
    rad = rho0 * (1 + 0.08 * rng.standard_normal(len(ts)))
    pts = np.stack([ny + rad * np.sin(ts), nx + rad * np.cos(ts)], axis=1)
    th = R * rng.uniform(0.13, 0.18) * (1 + 0.1 * rng.standard_normal(len(ts)))
    return capsules(Y, X, pts, th)


def _lobed(rng, kind, Y, X, ny, nx, rn, R) -> np.ndarray:
    """A chain of lobes, joined by filaments unless butterfly-shaped (segmented, bilobed, butterfly)."""
    # the segmented count is drawn for every lobed kind: the random stream, and so the archive, depends on it
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
        lobes = np.maximum(lobes, blob(rng, Y, X, py, px, r, 0.08, ellip=rng.uniform(0.7, 0.95), rot=rng.uniform(0, np.pi)))
    if kind == "butterfly":
        return lobes
    fil = capsules(Y, X, np.array(pts), np.full(n, rng.uniform(1.3, 2.4) if kind == "segmented" else rn * 0.3))
    return np.maximum(lobes, fil)


def nucleus(rng, style, Y, X, cy, cx, R) -> np.ndarray:
    """Soft mask of the nucleus of a cell of radius R centred at (cy, cx), of the style's shape."""
    kind = style["nuc"]
    rn = R * rng.uniform(*style["nfrac"])
    ang = rng.uniform(0, 2 * np.pi)
    off = R * rng.uniform(*style["ecc"])
    ny, nx = cy + off * math.sin(ang), cx + off * math.cos(ang)
    if kind == "round":
        return blob(rng, Y, X, ny, nx, rn, 0.05, ellip=rng.uniform(0.88, 1.0), rot=rng.uniform(0, np.pi))
    if kind == "oval":
        return blob(rng, Y, X, ny, nx, rn, 0.06, ellip=rng.uniform(0.7, 0.85), rot=rng.uniform(0, np.pi))
    if kind == "kidney":
        return blob(rng, Y, X, ny, nx, rn, 0.05, ellip=rng.uniform(0.8, 0.95), rot=rng.uniform(0, 2 * np.pi), indent=rng.uniform(*style.get("indent", (0.25, 0.4))))
    if kind == "cleaved":
        return _cleaved(rng, Y, X, ny, nx, rn)
    if kind == "smudge":
        return blob(rng, Y, X, cy, cx, R * rng.uniform(0.75, 0.95), 0.35, ellip=rng.uniform(0.6, 0.9), rot=rng.uniform(0, np.pi), edge=3.0)
    if kind == "band":
        return _band(rng, Y, X, ny, nx, R)
    if kind in ("segmented", "bilobed", "butterfly"):
        return _lobed(rng, kind, Y, X, ny, nx, rn, R)
    raise ValueError(kind)


def granules(rng, shape, mask, per_kpx, size, strength) -> np.ndarray:
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
