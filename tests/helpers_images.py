"""Shared by the synth and dedup tests: small synthetic archives (made once per test session) and their facts."""

from __future__ import annotations

import atexit
import csv
import shutil
import tempfile
from functools import cache
from pathlib import Path

from pipeline.config import ReleaseConfig, load_config
from pipeline.stages.decode import decode_file, load_rgb
from pipeline.records import ImageFacts

SIZE = (288, 288)
ORIGINAL_KINDS = ("original", "dysplastic", "conflict_original")

_ROOT = Path(tempfile.mkdtemp(prefix="mll23-test-archives-"))
atexit.register(shutil.rmtree, _ROOT, True)


@cache
def config() -> ReleaseConfig:
    return load_config()


def archive(scale: float = 0.01, seed: int = 0, workers: int = 1) -> Path:
    """A synthetic raw archive, written once per (scale, seed, workers) per session. Do not modify it."""
    return _archive(float(scale), int(seed), int(workers))


@cache
def _archive(scale: float, seed: int, workers: int) -> Path:
    from pipeline.synth.generator import synthesize

    out = _ROOT / f"s{scale}-seed{seed}-w{workers}"
    synthesize(out, config=config(), scale=scale, seed=seed, workers=workers)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def truth(root: Path) -> dict[str, dict[str, str]]:
    return {r["image"]: r for r in read_csv(root / "synth_truth.csv")}


def annotations(root: Path) -> dict[str, dict[str, str]]:
    return {r["image"]: r for r in read_csv(root / "annotations.csv")}


@cache
def facts_of(root: Path) -> tuple[ImageFacts, ...]:
    out = []
    for rel, row in sorted(annotations(root).items()):
        f = decode_file(root / rel, rel, row["label"], SIZE)
        assert isinstance(f, ImageFacts), f
        out.append(f)
    return tuple(out)


@cache
def centre_hashes_of(root: Path) -> dict[str, int]:
    """What decode would add per image (computed here from the pixels, as decode does once per image)."""
    from pipeline.stages.similarity import centre_hash

    return {rel: centre_hash(load_rgb(root / rel, SIZE)) for rel in sorted(annotations(root))}


def loader(root: Path, calls: list[str] | None = None):
    def load(rel: str):
        if calls is not None:
            calls.append(rel)
        return load_rgb(root / rel, SIZE)

    return load
