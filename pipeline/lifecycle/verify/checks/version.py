"""The version check: one semantic version in manifest, config, card and notes; the card's links resolve.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pipeline.release.layout import CARD, MANIFEST, VersionError, show, version_key
from pipeline.untrusted.files import ReleaseFileError, relpath_problem
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView

# A Markdown link target: no brackets, parentheses or spaces inside, so every scan stops at the next `(`, `]`
# or `)` and the search stays linear (the old `[^)#?]+` rescanned a README of "](" from every "(").
_LINK = re.compile(r"\]\(([^()\[\]#?\s]+)\)")


def check_version(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """A semantic version, the same in the manifest, its config, the card and the notes; the card's links resolve."""
    version = view.manifest["version"]
    try:
        version_key(version)
    except VersionError as exc:
        yield f"{MANIFEST}: version {exc}"
    config = view.manifest.get("config")
    if config is not None and config.get("version") != version:
        yield f"{MANIFEST}: version {version} but its config says {show(config.get('version'))}"
    if f"Version **{version}**" not in view.card_text:
        yield f"{CARD} does not state version {version} (expected 'Version **{version}**')"
    notes = view.manifest.get("release_notes")
    if notes:
        yield from _notes_problems(view, notes, version)
    yield from _link_problems(view)


def _notes_problems(view: ReleaseView, notes: str, version: str) -> Iterator[str]:
    """The notes the manifest names are in the release, are this version's, and the card links them."""
    if relpath_problem(notes) or not view.has(notes):
        yield f"{show(notes)} (the release notes named in {MANIFEST}) is missing"
    else:
        try:
            text = view.read_text(notes)
        except ReleaseFileError as exc:
            yield str(exc)
        else:
            if not text.startswith(f"# {view.manifest['name']} v{version}\n"):
                yield f"{show(notes)} is not the notes of {show(view.manifest['name'])} v{version} (its first line says otherwise)"
    if f"]({notes})" not in view.card_text:
        yield f"{CARD} does not link the release notes {show(notes)}"


def _link_problems(view: ReleaseView) -> Iterator[str]:
    """Every relative link of the card names a file or folder of the release."""
    folders = {p.rsplit("/", 1)[0] for p in view.present if "/" in p}
    for target in sorted(set(_LINK.findall(view.card_text))):
        if "://" in target or target.startswith("mailto:"):
            continue
        if relpath_problem(target.rstrip("/")) is not None or (target not in view.present_set and target.rstrip("/") not in folders):
            yield f"{CARD} links {show(target)}, which is not a file of the release"
