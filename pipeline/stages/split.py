"""Split: deterministic train/validation/test assignment, stratified by label and grouped.

Images that share a patient or a look-alike group form one unit and always land in one split. Units are
placed greedily where their classes are most under target. Units that already had a split in a previous
release keep it, so a model trained on an earlier train split never meets those images in a later test split.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.config import SPLITS
from pipeline.stages.groups import UnionFind


@dataclass(frozen=True)
class SplitItem:
    key: str  # the image's stable id
    label: str
    group_id: str  # look-alike group
    patient_id: str | None


def units(items: Sequence[SplitItem]) -> dict[str, list[SplitItem]]:
    """Connected units: images joined by a shared patient or look-alike group."""
    uf: UnionFind[str] = UnionFind()
    for it in items:
        uf.union("i:" + it.key, "g:" + it.group_id)
        if it.patient_id:
            uf.union("i:" + it.key, "p:" + it.patient_id)
    out: dict[str, list[SplitItem]] = defaultdict(list)
    for it in items:
        out[uf.find("i:" + it.key)].append(it)
    return out


def _order_key(unit_items: list[SplitItem], seed: int) -> tuple[int, str]:
    # Large units first (they are the hardest to place), ties broken by a seeded hash, not by input order.
    ident = min(it.key for it in unit_items)
    return (-len(unit_items), hashlib.sha256(f"{seed}:{ident}".encode()).hexdigest())


def assign_splits(
    items: Sequence[SplitItem],
    fractions: Mapping[str, float],
    seed: int,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """image key -> split. previous maps keys of an earlier release to their split; those stay put."""
    previous = previous or {}
    per_class_total = Counter(it.label for it in items)
    target = {s: {c: n * fractions[s] for c, n in per_class_total.items()} for s in SPLITS}
    filled = {s: Counter() for s in SPLITS}
    assignment: dict[str, str] = {}

    pending = []
    for unit_items in units(items).values():
        earlier = Counter(previous[it.key] for it in unit_items if it.key in previous)
        if earlier:
            # A unit keeps the split of its earlier members. Where a new patient or look-alike link joins
            # members of different earlier splits, the unit goes to the one nearest training (train, then
            # validation, then test): an image a model was trained or tuned on must never reappear in a
            # later evaluation split, whereas the reverse move only takes images out of evaluation.
            split = min(earlier, key=SPLITS.index)
            _place(unit_items, split, assignment, filled)
        else:
            pending.append(unit_items)

    for unit_items in sorted(pending, key=lambda u: _order_key(u, seed)):
        need = Counter(it.label for it in unit_items)

        def deficit(split: str) -> tuple[float, float]:
            gap = sum(n * (target[split][c] - filled[split][c]) / max(per_class_total[c], 1) for c, n in need.items())
            return (gap, fractions[split])

        best = max((s for s in SPLITS if fractions[s] > 0), key=deficit)
        _place(unit_items, best, assignment, filled)
    return assignment


def _place(unit_items, split, assignment, filled) -> None:
    for it in unit_items:
        assignment[it.key] = split
        filled[split][it.label] += 1
