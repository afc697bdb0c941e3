"""The wds-tars check: the WebDataset tars are the manifest's, and every member one the format has.

Each member is judged by its header before any of its bytes is read.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator

from pipeline.release.layout import MANIFEST, TAR_SHARD, WDS_DIR, show
from pipeline.release.wds import brace_pattern, shard_name
from pipeline.untrusted.files import ReleaseFileError, relpath_problem
from pipeline.untrusted.formats import MAX_LISTED_MEMBERS, MEMBERS_PER_SAMPLE, tar_problems
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView, as_dict, as_list


def check_webdataset_tars(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The manifest's WebDataset entries name the release's own tars, and every member of every tar is a regular
    file `<key>.<suffix>` with a suffix of the format, within its size limit (both from the headers, before any
    member is read) and holding what its suffix says (pipeline.untrusted.formats.tar_problems)."""
    tars = set(view.tar_paths)
    named = set()
    for split, info in sorted(view.manifest["splits"].items()):
        entry = as_dict(info.get("webdataset"))
        shards = as_list(entry.get("shards"))
        paths = [s.get("path") for s in shards]
        expected = [f"{WDS_DIR}/{shard_name(split, i)}" for i in range(len(shards))]
        if paths != expected:
            yield f"{MANIFEST}: splits.{split}.webdataset.shards are {show(paths)}, the release format names them {expected}"
        if entry.get("pattern") != brace_pattern(split, len(shards)):
            yield f"{MANIFEST}: splits.{split}.webdataset.pattern is {show(entry.get('pattern'))}, expected {brace_pattern(split, len(shards))}"
        named.update(p for p in paths if isinstance(p, str))
    for rel in sorted(named - tars):
        if relpath_problem(rel) is None:
            yield f"{show(rel)} is named in {MANIFEST} splits but is not a tar of the release"
    yield from _member_problems(view, sorted(tars), opts)


def _member_problems(view: ReleaseView, tars: list[str], opts: VerifyOptions) -> Iterator[str]:
    """A tar holds its split's published images, three members each: the Parquet rows (read with their own
    bounds) bound how many headers are walked, so a tar of a million empty members is refused after a few.
    A few more than that are read, so that the first strays are named (the member check stops at that many)."""
    split_rows = Counter(r.split for r in view.rows)
    for rel in tars:
        split = TAR_SHARD.match(rel).group(1)
        expected = MEMBERS_PER_SAMPLE * split_rows[split]
        limits = dataclasses.replace(
            opts.read.tar,
            members=min(opts.read.tar.members, expected + MAX_LISTED_MEMBERS),
            members_why=f" (the {split_rows[split]:,} {split} rows of the Parquet shards make {expected:,})",
        )
        try:
            with view.open(rel) as fh:
                yield from tar_problems(fh, rel, limits)
        except ReleaseFileError as exc:
            yield str(exc)
