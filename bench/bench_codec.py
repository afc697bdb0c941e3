"""How to publish the images: bytes, encode and decode time per lossless codec, and what they mean for a release.

    python bench/bench_codec.py [--crops 300] [--seed 0] [--images 41621] [--mbit 50]

Renders ``--crops`` synthetic crops with `mll23 synth`'s field model (its sensor-noise model included: shot
and read noise, Bayer demosaicing texture; pipeline/synth/camera.py ``sensor_noise``), every class in turn, and
encodes each with every codec in one run, on one core (no process pool, one thread). Per codec it prints:

- bytes per image (mean) and the ratio to the uncompressed TIFF the archive holds;
- encode and decode time per image (median of the crops; each crop goes through every codec in turn, so load
  from other jobs hits all codecs alike; a decode is the fastest of ``--decode-repeats``; decode = Pillow
  open + load + numpy array, which is what `datasets`' Image feature and a webdataset Pillow decoder do);
- the release size with both formats (Parquet and WebDataset tars carry the same image bytes, so 2x the image
  bytes; per-row metadata, Parquet footers and tar headers, about 1 kB a row, are left out) extrapolated to
  ``--images`` images, the time to download it at ``--mbit`` Mbit/s, the one-off encode time of a build on
  one core, and a consumer's decode time per epoch (``--images`` decodes on one core).

Every codec's decoded pixels are compared with the source pixels (a codec that is not lossless would fail).
Timings depend on the machine and its load; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.synth.field import Field  # noqa: E402
from pipeline.config import load_config  # noqa: E402


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[Image.Image], bytes]


def _saver(fmt: str, **kw) -> Callable[[Image.Image], bytes]:
    def encode(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    return encode


def codecs() -> list[Codec]:
    out = [
        Codec("TIFF, uncompressed (the archive's originals)", _saver("TIFF")),
        Codec("PNG level 1", _saver("PNG", compress_level=1)),
        Codec("PNG level 6", _saver("PNG", compress_level=6)),
        Codec("PNG level 9", _saver("PNG", compress_level=9)),
        Codec("TIFF LZW", _saver("TIFF", compression="tiff_lzw")),
        Codec("TIFF deflate", _saver("TIFF", compression="tiff_adobe_deflate")),
    ]
    if features.check("webp"):
        out.append(Codec("WebP lossless", _saver("WEBP", lossless=True)))
    return out


def crops(n: int, seed: int) -> list[np.ndarray]:
    """``n`` crops of the MLL23 config's classes in turn, each from its own field (synth's renderer)."""
    classes = load_config(None).class_names
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out.append(Field(classes[i % len(classes)], rng).render(rng))
    return out


def decode(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    return np.asarray(img)


def measure(all_codecs: list[Codec], arrays: list[np.ndarray], decode_repeats: int) -> list[tuple[str, dict]]:
    """Each crop through every codec in turn (interleaved, so a change in the machine's load hits every codec
    alike); per crop the decode is timed ``decode_repeats`` times and the fastest kept."""
    sizes: dict[str, list[int]] = {c.name: [] for c in all_codecs}
    enc: dict[str, list[float]] = {c.name: [] for c in all_codecs}
    dec: dict[str, list[float]] = {c.name: [] for c in all_codecs}
    for arr in arrays:
        img = Image.fromarray(arr, "RGB")
        for codec in all_codecs:
            t0 = time.perf_counter()
            data = codec.encode(img)
            enc[codec.name].append(time.perf_counter() - t0)
            times = []
            for _ in range(decode_repeats):
                t1 = time.perf_counter()
                pixels = decode(data)
                times.append(time.perf_counter() - t1)
            if not np.array_equal(pixels, arr):
                raise SystemExit(f"{codec.name}: decoded pixels differ from the source: not lossless")
            sizes[codec.name].append(len(data))
            dec[codec.name].append(min(times))
    return [
        (c.name, {"bytes": statistics.fmean(sizes[c.name]), "encode_s": statistics.median(enc[c.name]), "decode_s": statistics.median(dec[c.name])})
        for c in all_codecs
    ]


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def table(results: list[tuple[str, dict]], images: int, mbit: float) -> str:
    base = results[0][1]["bytes"]
    lines = [
        "| codec | bytes/image | vs TIFF | encode ms/image | decode ms/image | GB, one format | release GB (both formats) | download both at "
        f"{mbit:g} Mbit/s | build encode, 1 core | consumer decode per epoch, 1 core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results:
        release = 2 * r["bytes"] * images
        lines.append(
            f"| {name} | {r['bytes']:,.0f} | {r['bytes'] / base:.3f} | {r['encode_s'] * 1e3:.1f} | {r['decode_s'] * 1e3:.2f} | "
            f"{release / 2e9:.2f} | {release / 1e9:.2f} | {_hms(release * 8 / (mbit * 1e6))} | {_hms(r['encode_s'] * images)} | {_hms(r['decode_s'] * images)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=41_621, help="release size to extrapolate to (MLL23's published count)")
    ap.add_argument("--mbit", type=float, default=50.0, help="download bandwidth, Mbit/s")
    ap.add_argument("--decode-repeats", type=int, default=3, help="decodes per crop and codec; the fastest counts")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    arrays = crops(args.crops, args.seed)
    print(f"{args.crops} crops rendered in {time.perf_counter() - t0:.1f} s; Pillow {PIL.__version__}, numpy {np.__version__}")
    results = measure(codecs(), arrays, args.decode_repeats)
    print(f"every codec decoded to the source pixels; {args.crops} crops, seed {args.seed}, extrapolated to {args.images:,} images")
    print(table(results, args.images, args.mbit))


if __name__ == "__main__":
    main()
