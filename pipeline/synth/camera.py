"""The camera's noise model: shot and read noise per Bayer site, bilinear demosaicing, noise shared by channels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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


def sensor_noise(rng: np.random.Generator, signal: np.ndarray, read_sd: float, white_sd: float) -> np.ndarray:
    """Noise of a one-chip colour camera on a 40x brightfield microscope, for a (3, H, W) ``signal`` in grey levels.

    Per Bayer site the noise is Gaussian-like with variance ``read_sd**2 + white_sd**2 * signal / 255``: read
    noise (constant) plus photon shot noise (Poisson: variance proportional to the collected light, so bright
    background is noisier than a dark nucleus); ``white_sd`` is the shot noise at full scale. The mosaic is
    then demosaiced bilinearly, which gives the 2x2-periodic texture and short-range correlation of real
    camera noise (interpolated sites carry averages of 2-4 neighbours' noise), and colour correction shares
    part of it between channels (correlation ~0.3 between channels and ~0.4 between neighbouring pixels).
    Parameters (drawn per field in pipeline.synth.field.Field): read noise 0.4-0.8 and shot noise at white 1.3-2.0 grey levels
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
