"""The card check: strict YAML, `configs` naming only the release's own shards, features of the release's types."""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Iterator

from pipeline.release.layout import CARD, TAR_SHARD, WDS_DIR, show
from pipeline.untrusted.files import relpath_problem
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import CARD_DATA_PATH, ReleaseView, as_list

# The feature types a release declares. `datasets` decodes a column by its declared type (Audio and Video hand
# the bytes to FFmpeg, Pdf to pdfplumber), so a card declaring any other type fails the release.
_CARD_DTYPES = frozenset({"image", "string", "json", "int64"})
_CONFIG_KEYS = frozenset({"config_name", "default", "data_files"})
_MAX_PATTERNS = 64


def check_card(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The cards' YAML loads strictly, and their `configs` point only at the release's own shards."""
    for rel, (_, header, error) in sorted(view.cards.items()):
        if error:
            yield error
            continue
        if rel == CARD:
            yield from _config_problems(rel, header, "", CARD_DATA_PATH, view.present)
        else:
            yield from _config_problems(rel, header, f"{WDS_DIR}/", TAR_SHARD, view.present)
        yield from _card_feature_problems(rel, header)


def _card_feature_problems(card: str, header: dict) -> Iterator[str]:
    info = header.get("dataset_info")
    if info is None:
        return
    if not isinstance(info, dict):
        yield f"{card}: YAML dataset_info is not a mapping"
        return
    for i, feature in enumerate(as_list(info.get("features"))):
        dtype = feature.get("dtype") if isinstance(feature, dict) else None
        ok = dtype in _CARD_DTYPES if isinstance(dtype, str) else isinstance(dtype, dict) and list(dtype) == ["class_label"]
        if not ok:
            yield f"{card}: YAML dataset_info.features[{i}] has dtype {show(dtype)}, which a release does not use"


def _config_problems(card: str, header: dict, base: str, allowed: re.Pattern, present: list[str]) -> Iterator[str]:
    """`datasets` globs each data_files pattern (and would fetch a URL): each must be a plain relative pattern
    whose matches are all shards of the release. Each pattern is matched against the files of its own folder
    only, and a card has a handful: 64 patterns at most (2,000 patterns against 100,000 files took minutes)."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for p in present:
        if p.startswith(base):
            by_folder[p[len(base):].rpartition("/")[0]].append(p)
    budget = _MAX_PATTERNS
    for i, config in enumerate(as_list(header.get("configs"))):
        if not isinstance(config, dict):
            yield f"{card}: YAML configs[{i}] is not a mapping"
            continue
        for key in sorted(set(config) - _CONFIG_KEYS, key=str):
            yield f"{card}: YAML configs[{i}] has key {show(key)}, which a release card does not use"
        for pattern in _data_file_patterns(config.get("data_files")):
            budget -= 1
            if budget < 0:
                yield f"{card}: YAML configs hold more than {_MAX_PATTERNS} data_files patterns: the rest were not checked"
                return
            problem = _pattern_problem(pattern, base, allowed, by_folder)
            if problem:
                yield f"{card}: YAML configs[{i}] data_files pattern {show(pattern)} {problem}"


def _data_file_patterns(data_files: object) -> Iterator[object]:
    """The patterns of a config's data_files, in every spelling `datasets` accepts (checked one by one after)."""
    if isinstance(data_files, dict):  # {split: patterns}
        data_files = [{"path": v} for v in data_files.values()]
    entries = data_files if isinstance(data_files, list) else [data_files]
    for entry in entries:
        patterns = entry.get("path") if isinstance(entry, dict) else entry
        yield from patterns if isinstance(patterns, list) else [patterns]


def _pattern_problem(pattern: object, base: str, allowed: re.Pattern, by_folder: dict[str, list[str]]) -> str | None:
    if not isinstance(pattern, str):
        return "is not a string"
    problem = relpath_problem(pattern)
    if problem:
        return problem
    head, _, last = pattern.rpartition("/")
    if any(ch in pattern for ch in "?[]{}") or "*" in head or "**" in last or "://" in pattern:
        return "uses glob syntax other than one '*' in the file name, or a URL (only plain patterns of the release's shards are read)"
    matches = [p for p in by_folder.get(head, ()) if fnmatch.fnmatchcase(p[len(base):], pattern)]
    strays = [m for m in matches if not allowed.match(m)]
    if strays:
        return f"matches {show(strays[0])}, which is not a shard of the release"
    return None
