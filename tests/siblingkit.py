"""Tiny synthetic archives and releases of MLL23 and its sibling datasets (Matek 2019, Acevedo 2020)."""

from __future__ import annotations

from pathlib import Path

from pipeline.build import build_release
from pipeline.config import ReleaseConfig, load_config
from pipeline.synth.generator import expected_counts, synthesize

# Tens of images per source; Acevedo's smallest classes need a larger scale to hold more than the minimum.
SCALES = {"mll23": 0.001, "matek19": 0.002, "acevedo20": 0.004}
SEEDS = {"mll23": 5, "matek19": 6, "acevedo20": 7}


def sibling_config(name: str) -> ReleaseConfig:
    return load_config(Path(name))  # a shipped config by name


def expected_published(name: str) -> dict[str, int]:
    """label -> images a correct build of the synthetic archive keeps."""
    return {label: kept for label, (_, kept) in expected_counts(sibling_config(name), SCALES[name]).items()}


def build_sibling(name: str, root: Path) -> Path:
    """synth -> build for one shipped config; returns the release directory."""
    config = sibling_config(name)
    synthesize(root / f"{name}-raw", config=config, scale=SCALES[name], seed=SEEDS[name], workers=1)
    build_release(root / f"{name}-raw", root / name, config, workers=1, cache_dir=None)
    return root / name
