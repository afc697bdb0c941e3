"""The checks across the published rows: no patient or look-alike group in two splits, no image twice."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator

from pipeline.config import SPLITS
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView


def check_splits(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """No patient and no look-alike group in two splits: they would leak between training and evaluation."""
    for attr, what in (("patient_id", "patient"), ("group_id", "look-alike group")):
        where: dict[str, Counter] = defaultdict(Counter)
        for r in view.rows:
            if getattr(r, attr):
                where[getattr(r, attr)][r.split] += 1
        for key, splits in sorted(where.items()):
            if len(splits) > 1:
                spread = ", ".join(f"{n} in {s}" for s, n in sorted(splits.items(), key=lambda x: SPLITS.index(x[0])))
                yield f"{what} {key} is in {len(splits)} splits ({spread})"


def check_unique(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """No image published twice, by its id or by its pixels."""
    for attr in ("image_id", "pixel_sha256"):
        seen: dict[str, list[str]] = defaultdict(list)
        for r in view.rows:
            seen[getattr(r, attr)].append(r.where())
        for key, places in sorted(seen.items()):
            if len(places) > 1:
                yield f"{attr} {key} appears {len(places)} times: {', '.join(places[:5])}"
