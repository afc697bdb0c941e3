"""A tiny synthetic raw archive and config for the consumer-facing tests (loading, Croissant, pictures, rebuilds)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from pipeline.config import ReleaseConfig, validate_config
from pipeline.synth.generator import synthesize
from tests.rawkit import crop, save, simple_raw, write_annotations

SCALE = 0.002  # about 110 raw crops in all 18 classes, with every planted duplicate and look-alike kind
SEED = 3
SHARD_BYTES = 2_000_000  # a few 250 KB crops per shard, so train has several Parquet and tar shards
PNG_ONLY = "monocyte/only_png.png"


def consumer_raw(raw: Path, config: ReleaseConfig) -> None:
    """synthesize() at a tiny scale, plus one image that exists only as a PNG: it is published as PNG bytes,
    so the release mixes `.tif` and `.png` samples and both WebDataset member names are exercised."""
    synthesize(raw, config=config, scale=SCALE, seed=SEED, workers=2)
    save(raw / PNG_ONLY, crop(4242))
    with open(raw / "annotations.csv", "a", encoding="utf-8", newline="") as fh:
        fh.write(f"{PNG_ONLY},monocyte,PNG0001,,false\n")


def mixed_format_raw(raw: Path) -> None:
    """A smaller hand-made archive (three classes of distinct TIFF crops plus PNG_ONLY) for tests about the
    Hub round trip rather than the data: it builds in a fraction of the synthetic archive's time."""
    rows = simple_raw(raw, ["myeloblast", "monocyte", "eosinophil"], per_class=8, annotate=False)
    save(raw / PNG_ONLY, crop(4242))
    rows.append({"image": PNG_ONLY, "label": "monocyte", "patient_id": "PNG0001", "dysplastic": "false"})
    write_annotations(raw, rows)


def small_shards(config: ReleaseConfig) -> ReleaseConfig:
    doc = copy.deepcopy(config.raw)
    doc["shards"] = {"max_shard_bytes": SHARD_BYTES, "max_row_group_bytes": 600_000}
    return validate_config(doc, "test config")


def consumer_env(hub_url: str, home: Path) -> dict[str, str]:
    """The whole environment of a consumer subprocess: the local Hub, a throw-away HF home, no progress bars."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(home / "hf_home"),
        "HF_DATASETS_CACHE": str(home / "hf_datasets"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
