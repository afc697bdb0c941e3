"""The rebuild check (`--rebuild RAW`): a rebuild from the raw input is byte-identical to the release.

The rebuild starts from the release this one was built on (`--previous`, else the one found beside it by hash).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.build import BuildError, build_release
from pipeline.config import ConfigError, validate_config
from pipeline.lifecycle.ancestry import AncestryError
from pipeline.lifecycle.notes import NotesError
from pipeline.release.layout import MANIFEST, NOTES_DIR, list_release_files, sha256_file, show
from pipeline.untrusted.files import MAX_LISTED_FILE_BYTES, NOTES_CAP, ReleaseDir, ReleaseFileError, fixed_cap
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView


def _manifest_sha256(release_dir: Path) -> str | None:
    """sha256 of a release's manifest.json, read like any release file (siblings come from the same pull request)."""
    try:
        return ReleaseDir(release_dir).hash(MANIFEST, max_bytes=fixed_cap(MANIFEST))[1]
    except (ReleaseFileError, OSError):
        return None


def find_previous(view: ReleaseView, previous: Path | None) -> tuple[Path | None, str | None]:
    """The release this one was built on: the given directory, or a sibling whose manifest has the recorded sha256."""
    ref = view.manifest.get("previous")
    if not ref:
        return None, None
    if previous is not None:
        if _manifest_sha256(Path(previous)) != ref["manifest_sha256"]:
            return None, (
                f"--previous {previous} is not the release this one was built on "
                f"(v{ref['version']}, manifest sha256 {ref['manifest_sha256'][:16]}...)"
            )
        return Path(previous), None
    for sibling in sorted(view.dir.resolve().parent.iterdir()):
        if sibling != view.dir.resolve() and sibling.is_dir() and not sibling.is_symlink() and _manifest_sha256(sibling) == ref["manifest_sha256"]:
            return sibling, None
    return None, (
        f"this release was built on v{ref['version']} (manifest sha256 {ref['manifest_sha256'][:16]}...), "
        "which is not beside it; pass --previous with that release's directory"
    )


def check_rebuild(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Rebuild from `opts.rebuild.raw` with the config the manifest records, on the release it was built on, and
    name every file that differs."""
    request = opts.rebuild
    raw = Path(request.raw)
    config_doc = view.manifest.get("config")
    if config_doc is None:
        yield f"{MANIFEST} does not record the config it was built with, so it cannot be rebuilt"
        return
    try:
        config = validate_config(config_doc, f"{view.dir / MANIFEST} (config)")
    except ConfigError as exc:
        yield str(exc)
        return
    prev_dir, problem = find_previous(view, request.previous)
    if problem:
        yield problem
        return
    with tempfile.TemporaryDirectory(prefix="mll23-rebuild-") as tmp:
        notes_copy = Path(tmp) / "notes"
        try:
            _copy_notes(view, notes_copy)
        except ReleaseFileError as exc:
            yield str(exc)
            return
        out = Path(tmp) / "release"
        try:
            build_release(raw, out, config, workers=request.workers, previous=prev_dir, notes_dir=notes_copy)
        except (BuildError, AncestryError, NotesError, FileNotFoundError) as exc:
            yield f"the rebuild from {raw} failed: {exc}"
            return
        yield from _differences(view, out, raw)


def _copy_notes(view: ReleaseView, notes_copy: Path) -> None:
    """The maintainers' words come from the release's own notes, so the rebuild writes the same notes."""
    notes_copy.mkdir()
    for rel in view.present:
        if rel.startswith(f"{NOTES_DIR}/") and rel.count("/") == 1:
            (notes_copy / rel.split("/", 1)[1]).write_bytes(view.files.read_bytes(rel, max_bytes=NOTES_CAP))


def _differences(view: ReleaseView, out: Path, raw: Path) -> Iterator[str]:
    """Every file in which the release and its rebuild in `out` differ."""
    # another raw input explains every difference below: say that first, not as one more differing file
    recorded = view.manifest.get("raw_fingerprint")
    rebuilt = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("raw_fingerprint")
    if recorded != rebuilt:
        yield (f"{raw} is not the raw input this release was built from: its raw_fingerprint is"
               f" {str(rebuilt)[:16]}..., {MANIFEST} records {show(recorded)[:16]}... (the files that differ follow)")
    ours, theirs = set(view.present) | {MANIFEST}, set(list_release_files(out)) | {MANIFEST}
    for rel in sorted(ours - theirs):
        yield f"{rel} is in the release but not in the rebuild"
    for rel in sorted(theirs - ours):
        yield f"{rel} is in the rebuild but not in the release"
    for rel in sorted(ours & theirs):
        if view.files.hash(rel, max_bytes=MAX_LISTED_FILE_BYTES)[1] != sha256_file(out / rel):
            yield f"{rel} differs from the rebuild from {raw}"
