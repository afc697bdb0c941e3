"""Pictures for the dataset card, drawn with Pillow and saved as lossless PNG in figures/.

- class_distribution_{split}.png: images per class in one split (bars in config class order, counts printed);
- sample_grid.png: a few published crops per class, chosen by smallest image_id (a hash, so an unbiased
  and reproducible pick);
- dedup_pairs.png: pairs the dedup looked at closely (exact and near duplicates, same-cell look-alikes),
  with the test that decided each pair, its scores against the bounds, and each side's fate, so a
  maintainer sees at a glance what was merged and what was kept apart, borderline pairs first.

No clock, no randomness and no PNG text chunks: the same release gives the same bytes (Pillow writes no
tIME chunk unless asked).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.records import Pair, ReleaseCounts, ReleaseRecord
from pipeline.release.layout import FIGURES_DIR

SAMPLES_PER_CLASS = 4
THUMB_PX = 64
PAIR_THUMB_PX = 96
PAIRS_PER_KIND = 4
DIFF_GAIN = 4  # the difference tile shows |left - right| times this, so one-level changes stay visible
# Near duplicates and look-alikes are shown borderline first (smallest margin to a bound of the tests that
# decided them: dedup.duplicate_margin / lookalike_margin), then duplicates by largest and look-alikes by
# smallest pHash distance: the pairs where a wrong threshold would show first.
KIND_ORDER = ("exact", "near_duplicate", "lookalike")
KIND_TITLE = {"exact": "identical pixels", "near_duplicate": "near duplicate", "lookalike": "same cell, other focus/crop"}
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
BAR = (70, 110, 170)
PAD = 8


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the release directory
    alt: str


def _font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (width, height), BACKGROUND)
    return img, ImageDraw.Draw(img)


# ---- class distribution ------------------------------------------------------------------------------------


def class_distribution_chart(config: ReleaseConfig, counts: ReleaseCounts, split: str) -> Image.Image:
    font, title_font = _font(12), _font(14)
    values = [counts.splits[split].of(name) for name in config.class_names]
    row_h, bar_w = 18, 360
    label_w = max(_text_width(font, name) for name in config.class_names) + PAD
    value_w = _text_width(font, f"{max(values, default=0):,}") + PAD
    width = PAD + label_w + bar_w + PAD + value_w + PAD
    top = PAD + 24
    img, draw = _canvas(width, top + row_h * len(values) + PAD)
    total = counts.splits[split].total
    draw.text((PAD, PAD), f"{split}: {total:,} images in {len(config.class_names)} classes", fill=INK, font=title_font)
    longest = max(values, default=0)
    for i, (name, value) in enumerate(zip(config.class_names, values)):
        y = top + i * row_h
        draw.text((PAD + label_w - PAD - _text_width(font, name), y + 2), name, fill=INK, font=font)
        length = round(bar_w * value / longest) if longest else 0
        x0 = PAD + label_w
        if length:
            draw.rectangle((x0, y + 3, x0 + length - 1, y + row_h - 4), fill=BAR)
        draw.text((x0 + length + 4, y + 2), f"{value:,}", fill=INK if value else MUTED, font=font)
    return img


# ---- sample grid -------------------------------------------------------------------------------------------


def choose_samples(records: Iterable[ReleaseRecord], per_class: int) -> dict[str, list[str]]:
    """label -> the per_class smallest image_ids of that label (image_ids are hashes: an unbiased pick)."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_label[r.label_name].append(r.image_id)
    return {label: sorted(ids)[:per_class] for label, ids in by_label.items()}


def thumbnail(pixels: Image.Image, size: int) -> Image.Image:
    return pixels.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


class SampleGrid:
    """Collects the chosen crops while the release is written, so no image is read a second time."""

    def __init__(self, records: list[ReleaseRecord], class_names: list[str], per_class: int = SAMPLES_PER_CLASS, size: int = THUMB_PX):
        self.class_names = class_names
        self.per_class = per_class
        self.size = size
        self.chosen = choose_samples(records, per_class)
        self._wanted = {image_id for ids in self.chosen.values() for image_id in ids}
        self._thumbs: dict[str, Image.Image] = {}

    def offer(self, record: ReleaseRecord, image: bytes) -> None:
        if record.image_id in self._wanted:
            with Image.open(io.BytesIO(image)) as img:
                self._thumbs[record.image_id] = thumbnail(img, self.size)

    def render(self) -> Image.Image:
        font, title_font = _font(12), _font(14)
        title = f"{self.per_class} crops per class, {self.size} px (smallest image_id, a hash: an unbiased pick)"
        labels = [c for c in self.class_names if self.chosen.get(c)]
        label_w = max((_text_width(font, c) for c in labels), default=0) + 2 * PAD
        cell = self.size + 4
        title_h = 24
        width = max(label_w + cell * self.per_class + PAD, _text_width(title_font, title) + 2 * PAD)
        img, draw = _canvas(width, title_h + cell * max(len(labels), 1) + PAD)
        draw.text((PAD, PAD), title, fill=INK, font=title_font)
        if not labels:
            draw.text((PAD, title_h + PAD), "no published images", fill=MUTED, font=font)
        for row, label in enumerate(labels):
            y = title_h + row * cell
            draw.text((PAD, y + self.size // 2 - 6), label, fill=INK, font=font)
            for col, image_id in enumerate(self.chosen[label]):
                img.paste(self._thumbs[image_id], (label_w + col * cell, y + 2))
        return img


# ---- dedup pairs -------------------------------------------------------------------------------------------


def _kind_rank(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind), "") if kind in KIND_ORDER else (len(KIND_ORDER), kind)


def select_pairs(pairs: Iterable[Pair], per_kind: int) -> list[Pair]:
    by_kind: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_kind[p.kind].append(p)
    chosen: list[Pair] = []
    for kind in sorted(by_kind, key=_kind_rank):
        # at equal margins (or none recorded), duplicates with the largest pHash distance and look-alikes
        # with the smallest come first
        sign = 1 if kind == "lookalike" else -1
        ordered = sorted(by_kind[kind], key=lambda p: (p.margin, sign * p.hamming, p.a, p.b))
        chosen += ordered[:per_kind]
    return chosen


def _fit(font, text: str, width: int) -> str:
    """Text cut from the left with an ellipsis so it fits width (the end of a path says most)."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, "…" + text) > width:
        text = text[1:]
    return "…" + text


def difference_tile(a: np.ndarray, b: np.ndarray, size: int) -> Image.Image:
    """Largest per-channel difference of two images, amplified: black where the pixels agree."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) * DIFF_GAIN
    return thumbnail(Image.fromarray(np.clip(diff, 0, 255).astype(np.uint8), mode="L"), size)


def pair_gallery(
    pairs: list[Pair],
    fates: dict[str, tuple[str, str, str | None]],
    load_pixels: Callable[[str], np.ndarray],
    per_kind: int = PAIRS_PER_KIND,
    size: int = PAIR_THUMB_PX,
) -> Image.Image:
    font, title_font = _font(12), _font(14)
    shown = select_pairs(pairs, per_kind)
    totals: dict[str, int] = defaultdict(int)
    for p in pairs:
        totals[p.kind] += 1
    caption_w = 420
    row_h = size + 3 * PAD
    width = PAD + 3 * (size + PAD) + caption_w
    title_h = 44
    img, draw = _canvas(width, title_h + row_h * max(len(shown), 1))
    summary = ", ".join(f"{totals[k]} {KIND_TITLE.get(k, k)}" for k in sorted(totals, key=_kind_rank)) or "none"
    draw.text((PAD, PAD), "Pairs the dedup compared closely: left, right, difference x" + str(DIFF_GAIN), fill=INK, font=title_font)
    draw.text((PAD, PAD + 18), _fit(font, f"{summary}; up to {per_kind} of each shown", width - 2 * PAD), fill=MUTED, font=font)
    if not shown:
        draw.text((PAD, title_h + PAD), "The dedup found no duplicate or look-alike pairs in this input.", fill=MUTED, font=font)
    for row, pair in enumerate(shown):
        y = title_h + row * row_h
        left, right = load_pixels(pair.a), load_pixels(pair.b)
        tiles = [thumbnail(Image.fromarray(left), size), thumbnail(Image.fromarray(right), size), difference_tile(left, right, size)]
        for col, tile in enumerate(tiles):
            img.paste(tile, (PAD + col * (size + PAD), y + PAD))
        x = PAD + 3 * (size + PAD)
        lines = [f"{KIND_TITLE.get(pair.kind, pair.kind)}, pHash distance {pair.hamming}"]
        lines += [_fit(font, part, caption_w - PAD) for part in _score_lines(pair)]
        for side, rel in (("left", pair.a), ("right", pair.b)):
            fate = fates.get(rel, ("", "", None))[0] or "?"
            lines.append(_fit(font, f"{side}: {fate}", caption_w - PAD))
            lines.append(_fit(font, f"  {rel}", caption_w - PAD))
        for i, line in enumerate(lines):
            draw.text((x, y + PAD + i * 14), line, fill=INK if i == 0 else MUTED, font=font)
    return img


def _score_lines(pair: Pair) -> list[str]:
    """The deciding test and its scores (dedup.describe_*), split at "; " into at most two lines."""
    if not pair.decided_by or pair.kind == "exact":
        return [f"decided by: {pair.decided_by or 'not recorded'}"]
    parts = pair.score.split("; ")
    head = f"margin {pair.margin:.2f}: {parts[0]}"
    return [head, "; ".join(parts[1:])] if len(parts) > 1 else [head]


# ---- writing and the card section --------------------------------------------------------------------------


def write_figures(
    release_dir: Path,
    config: ReleaseConfig,
    counts: ReleaseCounts,
    grid: SampleGrid,
    pairs: list[Pair],
    fates: dict[str, tuple[str, str, str | None]],
    load_pixels: Callable[[str], np.ndarray],
) -> list[Figure]:
    out = release_dir / FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[Figure, Image.Image]] = [
        (Figure(f"{FIGURES_DIR}/class_distribution_{s}.png", f"Images per class in the {s} split"), class_distribution_chart(config, counts, s))
        for s in SPLITS
    ]
    figures.append((Figure(f"{FIGURES_DIR}/sample_grid.png", "Sample crops of every class"), grid.render()))
    figures.append((Figure(f"{FIGURES_DIR}/dedup_pairs.png", "Duplicate and look-alike pairs found by the dedup"), pair_gallery(pairs, fates, load_pixels)))
    for figure, img in figures:
        (release_dir / figure.path).write_bytes(png_bytes(img))
    return [f for f, _ in figures]


def card_section(figures: list[Figure]) -> str:
    links = "\n\n".join(f"![{f.alt}]({f.path})" for f in figures)
    return f"""
## Pictures

Class distribution per split, a few crops of every class, and the pairs the dedup compared most closely
(duplicates it merged and look-alikes of the same cell it kept, each with their pixel difference, the test
that decided the pair and its scores against the bounds, borderline pairs first), drawn from this release's
data. `ledger.csv` gives the same test and scores for every duplicate, label conflict and look-alike group.

{links}
"""
