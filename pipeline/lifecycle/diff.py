"""What changed between two releases: images added, removed, relabelled or moved; counts; cleaning; config.

The diff reads only manifest.json and ledger.csv of each release (never the images), so comparing two
releases is quick whatever their size. `mll23 diff OLD NEW` prints `render_diff`; the release notes embed
the very same text.

Either release may come from a pull request, so both files are read as verify reads them
(pipeline.untrusted.files: no links or special files, size caps, the manifest schema, ledger rows of exactly the
build's columns), and every value of a release is escaped where it is rendered (a ledger name holding a newline
and `::error::` would otherwise forge a line of the CI log, or of the notes a build writes from it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config import SPLITS
from pipeline.release.layout import MANIFEST, ManifestError
from pipeline.untrusted.files import ReleaseDir, ReleaseFileError, load_manifest, read_ledger
from pipeline.untrusted.safetext import printable

# Config keys every release changes; the notes' heading already states them.
_CONFIG_KEYS_IN_HEADING = frozenset({"version", "release_date"})
_VALUE_WIDTH = 70


class DiffError(ValueError):
    """A directory is not a release that can be compared; the message names the file."""


@dataclass(frozen=True)
class KeptImage:
    image_id: str
    label: str
    split: str
    source_file: str


@dataclass(frozen=True)
class InputFate:
    source_file: str
    input_kind: str
    label: str
    fate: str
    reason: str
    duplicate_of: str


@dataclass
class ReleaseSummary:
    """The part of a release the diff looks at: its manifest and its ledger."""

    name: str
    version: str
    release_date: str
    tool_version: str
    config: dict | None  # None for a release whose manifest does not record its config
    config_sha256: str
    class_names: list[str]
    counts: dict
    kept: dict[str, KeptImage] = field(default_factory=dict)  # image_id -> published image
    inputs: dict[str, InputFate] = field(default_factory=dict)  # source_file -> fate


def summary_from_parts(manifest: dict, ledger_rows: list[dict[str, str]]) -> ReleaseSummary:
    tool = manifest.get("tool")
    tool_version = tool.get("version") if isinstance(tool, dict) else None
    summary = ReleaseSummary(
        name=manifest.get("name", ""),
        version=manifest.get("version", ""),
        release_date=manifest.get("release_date", ""),
        tool_version=tool_version if isinstance(tool_version, str) else "",
        config=manifest.get("config"),
        config_sha256=manifest.get("config_sha256", ""),
        class_names=list(manifest.get("class_names", [])),
        counts=manifest.get("counts", {}),
    )
    for row in ledger_rows:
        summary.inputs[row["source_file"]] = InputFate(
            row["source_file"], row["input"], row["label"], row["fate"], row["reason"], row["duplicate_of"]
        )
        if row["fate"] == "kept":
            summary.kept[row["image_id"]] = KeptImage(row["image_id"], row["label"], row["split"], row["source_file"])
    return summary


def summary_from_dir(release_dir: Path) -> ReleaseSummary:
    release = ReleaseDir(Path(release_dir))
    if not os.path.lexists(Path(release_dir) / MANIFEST):
        raise DiffError(printable(f"{release_dir}: no {MANIFEST}; is this a release directory?"))
    try:
        return summary_from_parts(load_manifest(release), read_ledger(release))
    except (ManifestError, ReleaseFileError) as exc:
        # release_files leaves escaping to where a message is printed: here
        raise DiffError(printable(f"{release_dir}: {exc}", limit=2000)) from None


@dataclass(frozen=True)
class Relabel:
    image_id: str
    old_label: str
    new_label: str
    split: str


@dataclass(frozen=True)
class Moved:
    image_id: str
    old: str
    new: str


@dataclass(frozen=True)
class Removed:
    image: KeptImage
    why: str


@dataclass(frozen=True)
class FateChange:
    source_file: str
    before: str  # "fate: reason", or "" when the input was not in that release
    after: str


@dataclass(frozen=True)
class CountChange:
    key: str
    old: int
    new: int


@dataclass
class ReleaseDiff:
    old_version: str
    new_version: str
    old_date: str
    new_date: str
    added: list[KeptImage]
    removed: list[Removed]
    relabelled: list[Relabel]
    split_changes: list[Moved]
    renamed: list[Moved]  # same pixels, published from another raw file
    per_class: list[CountChange]
    per_split: list[CountChange]
    fates: list[CountChange]
    fate_changes: list[FateChange]
    config_changes: list[tuple[str, str, str]]  # (key, old value, new value)
    config_note: str  # set when the configs differ but the old manifest does not record its config
    tool_change: tuple[str, str] | None

    def to_json(self) -> dict:
        return asdict(self)


def _fate_text(f: InputFate | None) -> str:
    if f is None:
        return ""
    text = f.fate + (f": {f.reason}" if f.reason else "")
    # name the kept copy unless the reason already does
    return text + (f" (of {f.duplicate_of})" if f.duplicate_of and f.duplicate_of not in f.reason else "")


def _why_removed(image: KeptImage, new: ReleaseSummary) -> str:
    after = new.inputs.get(image.source_file)
    if after is None:
        return "raw file no longer in the input"
    if after.fate == "kept":
        # the file is still published, but with other pixels (it was replaced in place)
        return "raw file changed: its pixels differ now"
    return _fate_text(after)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k in sorted(value):
            out.update(_flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _short(value: object) -> str:
    if value is None:
        return "(unset)"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def config_changes(old: dict | None, new: dict | None) -> list[tuple[str, str, str]]:
    if old is None or new is None:
        return []
    a, b = _flatten(old), _flatten(new)
    keys = sorted((set(a) | set(b)) - _CONFIG_KEYS_IN_HEADING)
    return [(k, _short(a.get(k)), _short(b.get(k))) for k in keys if a.get(k) != b.get(k)]


def _count_changes(keys: list[str], old: dict[str, int], new: dict[str, int]) -> list[CountChange]:
    return [CountChange(k, old.get(k, 0), new.get(k, 0)) for k in keys]


def _kept_per(summary: ReleaseSummary, attr: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for image in summary.kept.values():
        key = getattr(image, attr)
        out[key] = out.get(key, 0) + 1
    return out


def _fates(summary: ReleaseSummary) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in summary.inputs.values():
        out[f.fate] = out.get(f.fate, 0) + 1
    return out


def _fate_changes(old: ReleaseSummary, new: ReleaseSummary) -> list[FateChange]:
    """Raw inputs whose cleaning outcome changed; published images are covered by added/removed instead."""
    changes = []
    for path in sorted(set(old.inputs) | set(new.inputs)):
        a, b = old.inputs.get(path), new.inputs.get(path)
        if a is not None and b is not None:
            if a.fate == "kept" and b.fate == "kept":
                continue
            if _fate_text(a) == _fate_text(b):
                continue
        elif (a or b).fate == "kept":
            continue
        changes.append(FateChange(path, _fate_text(a), _fate_text(b)))
    return changes


def diff_summaries(old: ReleaseSummary, new: ReleaseSummary) -> ReleaseDiff:
    added = sorted((new.kept[i] for i in set(new.kept) - set(old.kept)), key=lambda k: (k.label, k.image_id))
    removed = sorted(
        (Removed(old.kept[i], _why_removed(old.kept[i], new)) for i in set(old.kept) - set(new.kept)),
        key=lambda r: (r.image.label, r.image.image_id),
    )
    both = sorted(set(old.kept) & set(new.kept))
    relabelled = [Relabel(i, old.kept[i].label, new.kept[i].label, new.kept[i].split) for i in both if old.kept[i].label != new.kept[i].label]
    split_changes = [Moved(i, old.kept[i].split, new.kept[i].split) for i in both if old.kept[i].split != new.kept[i].split]
    renamed = [Moved(i, old.kept[i].source_file, new.kept[i].source_file) for i in both if old.kept[i].source_file != new.kept[i].source_file]
    classes = list(new.class_names) + [c for c in old.class_names if c not in new.class_names]
    fate_names = ["kept", "duplicate", "label_conflict", "excluded", "invalid"]
    fate_names += sorted((set(_fates(old)) | set(_fates(new))) - set(fate_names))
    configs_differ = old.config_sha256 != new.config_sha256
    changes = config_changes(old.config, new.config)
    note = ""
    if configs_differ and (old.config is None or new.config is None):
        note = f"config sha256 {old.config_sha256[:12]} -> {new.config_sha256[:12]}; the older manifest does not record the config itself"
    return ReleaseDiff(
        old_version=old.version,
        new_version=new.version,
        old_date=old.release_date,
        new_date=new.release_date,
        added=added,
        removed=removed,
        relabelled=relabelled,
        split_changes=split_changes,
        renamed=renamed,
        per_class=_count_changes(classes, _kept_per(old, "label"), _kept_per(new, "label")),
        per_split=_count_changes(list(SPLITS), _kept_per(old, "split"), _kept_per(new, "split")),
        fates=_count_changes(fate_names, _fates(old), _fates(new)),
        fate_changes=_fate_changes(old, new),
        config_changes=changes,
        config_note=note,
        tool_change=(old.tool_version, new.tool_version) if old.tool_version != new.tool_version else None,
    )


def diff_releases(old_dir: Path, new_dir: Path) -> ReleaseDiff:
    return diff_summaries(summary_from_dir(old_dir), summary_from_dir(new_dir))


# ---- rendering (Markdown: the notes embed it, and it reads fine in a terminal) -------------------------


def _signed(n: int) -> str:
    return f"+{n:,}" if n > 0 else (f"{n:,}" if n < 0 else "0")


def _safe(value: object) -> str:
    """A value of a release as one line of visible characters (pipeline.untrusted.safetext), backslashes kept: ledger
    names are ingest's readable names, whose backslashes already are escapes."""
    return "\\".join(printable(part, limit=0) for part in str(value).split("\\"))


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_safe(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _count_table(first: str, changes: list[CountChange], old_v: str, new_v: str) -> str:
    rows = [[c.key, f"{c.old:,}", f"{c.new:,}", _signed(c.new - c.old)] for c in changes]
    old_total, new_total = sum(c.old for c in changes), sum(c.new for c in changes)
    rows.append(["**total**", f"{old_total:,}", f"{new_total:,}", _signed(new_total - old_total)])
    return markdown_table([first, old_v, new_v, "change"], rows)


def _section(title: str, items: list, header: list[str], row, empty: str) -> str:
    if not items:
        return f"### {title}\n\n{empty}\n"
    return f"### {title} ({len(items):,})\n\n" + markdown_table(header, [row(i) for i in items]) + "\n"


def render_diff(d: ReleaseDiff) -> str:
    """The diff as Markdown; identical input gives identical text (every list is sorted)."""
    old_v, new_v = f"v{d.old_version}", f"v{d.new_version}"
    parts = [
        f"## Changes from {old_v} ({_safe(d.old_date)}) to {new_v} ({_safe(d.new_date)})\n",
        "Images are identified by `image_id` (the first 16 hex digits of the sha256 of their decoded pixels).\n",
        _section("Images added", d.added, ["image_id", "label", "split", "source file"],
                 lambda k: [f"`{k.image_id}`", k.label, k.split, k.source_file], "No image added."),
        _section("Images removed", d.removed, ["image_id", "label", "split", "why"],
                 lambda r: [f"`{r.image.image_id}`", r.image.label, r.image.split, r.why], "No image removed."),
        _section("Label changes", d.relabelled, ["image_id", "old label", "new label", "split"],
                 lambda r: [f"`{r.image_id}`", r.old_label, r.new_label, r.split], "No label changed."),
        _section("Split changes", d.split_changes, ["image_id", "old split", "new split"],
                 lambda m: [f"`{m.image_id}`", m.old, m.new],
                 f"Every image of {old_v} that is still published keeps its split."),
    ]
    if d.split_changes:
        parts.append(
            "An image changes split only when a new patient or look-alike link joins it to images of another "
            "split; the joined unit goes to the split nearest training (train, then validation, then test), "
            "so no image of an earlier training split enters an evaluation split.\n"
        )
    parts += [
        _section("Published from another raw file", d.renamed, ["image_id", "old source file", "new source file"],
                 lambda m: [f"`{m.image_id}`", m.old, m.new], "Every image kept is published from the same raw file."),
        "### Counts per class\n\n" + _count_table("class", [c for c in d.per_class if c.old or c.new], old_v, new_v) + "\n",
        "### Counts per split\n\n" + _count_table("split", d.per_split, old_v, new_v) + "\n",
        "### Cleaning: fate of the raw inputs\n\n" + _count_table("fate", d.fates, old_v, new_v) + "\n",
        _section("Dedup, exclusion and validity changes", d.fate_changes, ["raw input", old_v, new_v],
                 lambda f: [f.source_file, f.before or "(not in the raw input)", f.after or "(not in the raw input)"],
                 "No raw input changed its cleaning outcome."),
    ]
    if d.config_changes:
        parts.append(_section("Config changes", d.config_changes, ["key", old_v, new_v],
                              lambda c: [f"`{c[0]}`", f"`{c[1]}`", f"`{c[2]}`"], ""))
    elif d.config_note:
        parts.append(f"### Config changes\n\n{_safe(d.config_note)}.\n")
    else:
        parts.append("### Config changes\n\nNo config change besides the version and release date.\n")
    if d.tool_change:
        parts.append(f"### Tool\n\nBuilt with mll23-pipeline {_safe(d.tool_change[1])} (was {_safe(d.tool_change[0])}).\n")
    return "\n".join(parts)
