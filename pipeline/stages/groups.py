"""Groups of items joined by pairs (one union-find): dedup's duplicate and look-alike groups, split's units."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

Item = TypeVar("Item", bound=Hashable)


class UnionFind(Generic[Item]):
    """Disjoint sets of comparable items. A set's root is always its smallest member, so roots and groups
    do not depend on the order of the unions (nor on which paths were compressed)."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        # Items given here come first in groups(), in this order; others join when first met.
        self._parent: dict[Item, Item] = {x: x for x in items}

    def find(self, x: Item) -> Item:
        parent = self._parent
        root = parent.setdefault(x, x)
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Item, b: Item) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[Item, list[Item]]:
        """Root -> members, both in the order the items were first met."""
        out: dict[Item, list[Item]] = {}
        for x in list(self._parent):
            out.setdefault(self.find(x), []).append(x)
        return out
