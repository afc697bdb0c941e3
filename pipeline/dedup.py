"""Dedup stand-in: identical pixels only (the perceptual stage lands from the dedup branch)."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from pipeline.records import DedupResult, Pair


def deduplicate(facts, load_pixels, *, phash_threshold, lookalike_threshold, policy, prefer=None) -> DedupResult:
    result = DedupResult()
    by_pixels = defaultdict(list)
    for f in facts:
        by_pixels[f.pixel_sha256].append(f)
    for digest, members in by_pixels.items():
        members.sort(key=lambda f: (not f.lossless, f.relpath))
        gid = hashlib.sha256(digest.encode()).hexdigest()[:16]
        labels = {m.label for m in members}
        for m in members:
            result.group_of[m.relpath] = gid
        if len(labels) > 1:
            for m in members:
                result.fates[m.relpath] = ("label_conflict", f"identical pixels labelled {sorted(labels)}", None)
            continue
        keep = members[0]
        result.fates[keep.relpath] = ("kept", "", None)
        for m in members[1:]:
            result.fates[m.relpath] = ("duplicate", "identical pixels", keep.relpath)
            result.pairs.append(Pair(keep.relpath, m.relpath, "exact", 0))
    return result
