"""Release ancestry: what an earlier release pins down for the next build (`--previous`).

(Ancestry of releases, not the blood-cell lineage that the config, card and Croissant name per class.)

An image is identified by `image_id`, the first 16 hex digits of the sha256 of its decoded RGB pixels, so
it keeps its id as long as its pixels are unchanged, whatever the file is called or how it is encoded.
From the previous release a build takes:

- the split of every image ever published (the previous release's kept images, plus the images it had
  already retired, which its manifest remembers under `retired`), so an image that survives, or comes
  back, lands in the split it had before;
- which file represented each published image, so that when a duplicate group changes (a new copy
  arrives, a copy disappears) the image that was published stays the published one.

The previous release is read as verify reads a release (pipeline.untrusted.files): `verify --rebuild` finds it
beside the release of a pull request, so its author controls it as much as the release itself.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.release.layout import LEDGER, MANIFEST, ManifestError, VersionError, version_key
from pipeline.untrusted.files import TEXT_CAPS, ReleaseDir, ReleaseFileError, load_manifest, read_ledger
from pipeline.records import ImageFacts
from pipeline.stages.split import SplitItem, units


class AncestryError(ValueError):
    """The previous release cannot be used as the base of this build; the message says why."""


@dataclass(frozen=True)
class PublishedImage:
    image_id: str
    split: str
    source_file: str  # the raw file that represented it ("" for an image retired before that release)


@dataclass
class PreviousRelease:
    path: Path
    name: str
    version: str
    manifest_sha256: str
    # image_id -> split for every image ever published up to that release (its kept ones and its retired ones)
    splits: dict[str, str] = field(default_factory=dict)
    # image_id -> the version that last published it, for images not in that release
    retired_in: dict[str, str] = field(default_factory=dict)
    # image_id -> its record in that release, for the images it published
    published: dict[str, PublishedImage] = field(default_factory=dict)

    def reference(self) -> dict:
        """What the new manifest records about its base release (verify --rebuild finds it by this hash)."""
        return {"version": self.version, "manifest_sha256": self.manifest_sha256}


def load_previous(path: Path, config: ReleaseConfig) -> PreviousRelease:
    """Read an earlier release directory; refuse one that is not an earlier version of this dataset."""
    path = Path(path)
    release = ReleaseDir(path)
    manifest = _base_manifest(path, release)
    _check_base_of(config, manifest, path)
    manifest_sha256, rows = _base_ledger(path, release, manifest)
    previous = PreviousRelease(path=path, name=manifest["name"], version=manifest["version"], manifest_sha256=manifest_sha256)
    for image_id, info in sorted(manifest.get("retired", {}).items()):
        previous.splits[image_id] = info["split"]
        previous.retired_in[image_id] = info["last_version"]
    for row in rows:
        if row["fate"] == "kept":
            image = PublishedImage(row["image_id"], row["split"], row["source_file"])
            previous.published[image.image_id] = image
            previous.splits[image.image_id] = image.split
    return previous


def _base_manifest(path: Path, release: ReleaseDir) -> dict:
    if not os.path.lexists(path / MANIFEST):  # a link or a FIFO there is reported as what it is, below
        raise AncestryError(f"--previous {path}: no {MANIFEST} there; pass the directory of an earlier release")
    try:
        return load_manifest(release)
    except ManifestError as exc:
        raise AncestryError(f"--previous {path}: {exc}") from None


def _check_base_of(config: ReleaseConfig, manifest: dict, path: Path) -> None:
    """The previous release must be of this dataset and of an older version."""
    name, version = manifest["name"], manifest["version"]
    if name != config.name:
        raise AncestryError(f"--previous {path} is a release of {name!r}, this build makes {config.name!r}")
    try:
        newer = version_key(config.version) > version_key(version)
    except VersionError as exc:  # both schemas require semver: only a hand-edited config gets here
        raise AncestryError(f"--previous {path}: {exc}") from None
    if not newer:
        raise AncestryError(
            f"version {config.version} is not newer than the previous release's {version}; "
            "raise the version in the config or with --version"
        )


def _base_ledger(path: Path, release: ReleaseDir, manifest: dict) -> tuple[str, list[dict[str, str]]]:
    """The manifest's sha256 (the new release records it) and the ledger rows, which must match the manifest."""
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    try:
        ledger_sha256 = release.hash(LEDGER, max_bytes=TEXT_CAPS[LEDGER])[1] if LEDGER in listed else None
        manifest_sha256 = release.hash(MANIFEST, max_bytes=TEXT_CAPS[MANIFEST])[1]
        rows = read_ledger(release) if ledger_sha256 == listed.get(LEDGER) else None
    except ReleaseFileError as exc:
        raise AncestryError(f"--previous {path}: {exc}") from None
    if rows is None:
        raise AncestryError(f"--previous {path}: {LEDGER} is missing or does not match its sha256 in {MANIFEST}")
    return manifest_sha256, rows


def retired_images(previous: PreviousRelease | None, kept_ids: set[str]) -> dict[str, dict[str, str]]:
    """Images published at some earlier release and not in this one, with their split, for the manifest.

    Remembering them means an image that is dropped (say, a label conflict) and later comes back returns
    to its old split instead of being placed afresh, possibly in test after having been in train.
    """
    if previous is None:
        return {}
    out = {}
    for image_id, split in sorted(previous.splits.items()):
        if image_id in kept_ids:
            continue
        last = previous.retired_in.get(image_id, previous.version)
        out[image_id] = {"split": split, "last_version": last}
    return out


# ---- duplicate groups: keep the image that was published ----------------------------------------------


def _preference(f: ImageFacts, previous: PreviousRelease) -> tuple[int, int]:
    """Lower is better: the very file published before, then a file with the pixels published before."""
    image_id = f.pixel_sha256[:16]
    published = previous.published.get(image_id)
    same_file = published is not None and published.source_file == f.relpath
    return (0 if same_file else 1, 0 if image_id in previous.splits else 1)


def dedup_preference(previous: PreviousRelease) -> Callable[[ImageFacts], tuple]:
    """dedup's `prefer` key: in a duplicate group, keep what was published; otherwise the usual lossless first."""
    return lambda f: (*_preference(f, previous), not f.lossless)


# ---- splits: units that join images of different earlier splits --------------------------------------


@dataclass(frozen=True)
class SplitMove:
    """An image published before that had to change split, and why."""

    image_id: str
    old_split: str
    new_split: str
    unit_splits: tuple[tuple[str, int], ...]  # earlier splits of the unit's members: (split, images)

    def describe(self) -> str:
        spread = ", ".join(f"{n} in {s}" for s, n in self.unit_splits)
        return (
            f"image {self.image_id} moves from {self.old_split} to {self.new_split}: a patient or look-alike link now "
            f"joins it to images published in other splits ({spread})"
        )


def split_moves(items: list[SplitItem], assignment: dict[str, str], previous_splits: dict[str, str]) -> list[SplitMove]:
    """Every previously published image whose split changed, because its unit straddles earlier splits."""
    moves = []
    for unit_items in units(items).values():
        earlier = Counter(previous_splits[it.key] for it in unit_items if it.key in previous_splits)
        if len(earlier) < 2:
            continue
        spread = tuple((s, earlier[s]) for s in SPLITS if earlier[s])
        for it in unit_items:
            old = previous_splits.get(it.key)
            if old is not None and old != assignment[it.key]:
                moves.append(SplitMove(it.key, old, assignment[it.key], spread))
    return sorted(moves, key=lambda m: m.image_id)


def manifest_fields(config: ReleaseConfig, previous: PreviousRelease | None, kept_ids: set[str], notes_relpath: str) -> dict:
    """What a release's manifest says about its ancestry: enough to diff it, rebuild it and build its successor."""
    return {
        "config": config.raw,
        "previous": previous.reference() if previous else None,
        "retired": retired_images(previous, kept_ids),
        "release_notes": notes_relpath,
    }
