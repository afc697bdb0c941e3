"""A small raw archive and config for the consumer-facing tests (loading, Croissant, pictures, rebuilds)."""

from __future__ import annotations

import copy
from pathlib import Path

from pipeline.config import ReleaseConfig, validate_config
from tests.rawkit import crop, save, simple_raw, write_annotations

LABELS = ["myeloblast", "monocyte", "eosinophil"]
SHARD_BYTES = 1_000_000  # the config minimum: a few 250 KB crops per shard, so train has several shards


def consumer_raw(raw: Path) -> None:
    """TIFF crops in three classes, one exact duplicate (other encoding) and one image that is only a PNG."""
    rows = simple_raw(raw, LABELS, per_class=8)
    save(raw / "myeloblast" / "copy.png", crop(0))  # same pixels as myeloblast/cell_000.tif
    save(raw / "monocyte" / "only_png.png", crop(4242))  # published as PNG: the release mixes .tif and .png
    rows += [
        {"image": "myeloblast/copy.png", "label": "myeloblast", "patient_id": "P00", "dysplastic": "false"},
        {"image": "monocyte/only_png.png", "label": "monocyte", "patient_id": "P03", "dysplastic": "false"},
    ]
    write_annotations(raw, rows)


def small_shards(config: ReleaseConfig) -> ReleaseConfig:
    doc = copy.deepcopy(config.raw)
    doc["shards"] = {"max_shard_bytes": SHARD_BYTES, "max_row_group_bytes": 300_000}
    return validate_config(doc, "test config")
