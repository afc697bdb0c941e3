"""Exclude: dysplastic cells (kept out to keep class definitions clear) and labels the config leaves out."""

from __future__ import annotations

from pipeline.records import RawItem


def exclusion_reason(item: RawItem, excluded_labels: frozenset[str]) -> str | None:
    if item.dysplastic:
        return "dysplastic cell (annotations.csv dysplastic=true)"
    if item.label in excluded_labels:
        return f"label {item.label!r} is excluded by the release config"
    return None
