"""The notes-copy check (`--notes-dir`): the release notes a release carries equal their editable copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.release.layout import MANIFEST, show
from pipeline.untrusted.files import NOTES_CAP, ReleaseDir, ReleaseFileError, relpath_problem
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView


def check_notes_copy(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The maintainers edit notes_dir/vX.Y.Z.md; the release carries what they wrote at build time."""
    rel = view.manifest.get("release_notes")
    if not rel:
        yield f"{MANIFEST} names no release notes"
        return
    if relpath_problem(rel):
        yield f"{MANIFEST}: release_notes {show(rel)} is not a path inside the release"
        return
    notes_dir = Path(opts.notes_dir)
    name = rel.rsplit("/", 1)[-1]
    editable = notes_dir / name
    try:  # the notes directory is in the same repository as the release, so it is read the same way
        theirs = ReleaseDir(notes_dir).read_bytes(name, max_bytes=NOTES_CAP)
    except ReleaseFileError as exc:
        yield f"{editable} is missing or not readable ({exc}); the release carries {show(rel)}: keep its editable copy there"
        return
    try:
        same = view.files.read_bytes(rel, max_bytes=NOTES_CAP) == theirs
    except ReleaseFileError:
        same = False
    if not same:
        yield f"{editable} differs from {show(rel)} in the release: rebuild the release so that it carries the edited notes"
