"""The card's `sample` config: a small stratified subset of every split for quick tries and the Hub's viewer.

Per split and class, the images with the smallest `image_id` (a hash of the pixels: an unbiased pick that is
the same on every rebuild), ``fraction`` of the class rounded, and at least one of every class the split has.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pipeline.records import ReleaseRecord


def sample_size(n: int, fraction: float) -> int:
    return max(1, round(n * fraction)) if n else 0


def sample_ids(records: Iterable[ReleaseRecord], fraction: float) -> frozenset[str]:
    """image_ids of the sample rows."""
    by_stratum: dict[tuple[str, int], list[str]] = defaultdict(list)
    for r in records:
        by_stratum[(r.split, r.label)].append(r.image_id)
    return frozenset(i for ids in by_stratum.values() for i in sorted(ids)[: sample_size(len(ids), fraction)])
