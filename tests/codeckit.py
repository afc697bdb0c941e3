"""Release configs that differ from a given one only in how lossless images are published ([image] publish_codec)."""

from __future__ import annotations

import copy

from pipeline.config import ReleaseConfig, validate_config


def with_codec(config: ReleaseConfig, codec: str) -> ReleaseConfig:
    doc = copy.deepcopy(config.raw)
    doc["image"]["publish_codec"] = codec
    return validate_config(doc, "test config")
