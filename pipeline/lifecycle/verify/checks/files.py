"""The files check: exactly the files manifest.json lists, with their sizes and sha256, named as the format says.

It is the one pass over every byte of a release: `mll23 publish` runs it too (`listed_file_problems`, refusing hard
links as well) instead of hashing the files a second time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.release.layout import MANIFEST, RELEASE_FILE, show
from pipeline.untrusted.files import Listing, ReleaseDir, file_problems, relpath_problem
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView



def check_files(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Every listed file as listed and nothing else (no link, no special file), and only names of the release format."""
    if not opts.files_hashed:
        yield from file_problems(view.files, view.manifest, view.listing)
    for path in sorted(view.declared):  # an unlisted file fails already
        if relpath_problem(path) is None and path != MANIFEST and not RELEASE_FILE.match(path):
            yield f"{show(path)}: listed in {MANIFEST} but not a file of the release format (see the README's output layout)"


def listed_file_problems(release_dir: Path, manifest: dict, *, allow_hard_links: bool = True) -> list[str]:
    """The first part of the files check on a manifest the caller read (publish reads it with its own rules): every
    listed file present, regular, with the listed size and sha256; no unlisted, linked or special file, nor a hard
    link unless `allow_hard_links`. The names are not held to the release format. Raises OSError when the
    directory cannot be listed."""
    release = ReleaseDir(Path(release_dir))
    listing: Listing = release.listing()
    return list(file_problems(release, manifest, listing, allow_hard_links=allow_hard_links))
