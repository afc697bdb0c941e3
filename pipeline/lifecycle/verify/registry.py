"""The registry of verify's checks, in the order they run, and `run_checks` / `verify_release`, which run them.

Each check is a function over a lazily loaded view of the release (`ReleaseView`); it yields human-readable
failures naming the file, row or key at fault. Checks for optional parts (WebDataset shards, Croissant metadata)
are registered with a condition and run only where those files exist; the checks a caller asks for (`--notes-dir`,
`--rebuild`) run last, when asked. `verify_release` returns the failures (an empty list means the release
passed); `publish` calls it before uploading anything.

A release directory may come from anyone (the CI workflow runs verify on pull requests), so verify runs in
three stages. The manifest is read with a size cap and checked against schemas/manifest.schema.json before any
value of it is used. Then the checks that read the release themselves, through `pipeline.untrusted.files` (no
links, no special files, size caps) with bounded work: Parquet footers and decompressed sizes are checked before
any data is read, tar members by name, type and size before any byte of them is read, images only with the
decoders and bomb limits the build accepts, the card's YAML with a loader that refuses aliases and tags. The
loader checks (`datasets`, `webdataset`, `mlcroissant`), which parse the files by their own rules, run last
and only on a release that passed every check before them. Nothing read from a release is executed, expanded
as a pattern or used as a URL, and every failure is escaped for printing (`pipeline.untrusted.safetext`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.release.layout import CROISSANT
from pipeline.untrusted.files import ReleaseFileError
from pipeline.lifecycle.verify.checks.card import check_card
from pipeline.lifecycle.verify.checks.counts import check_counts
from pipeline.lifecycle.verify.checks.croissant import check_croissant
from pipeline.lifecycle.verify.checks.files import check_files
from pipeline.lifecycle.verify.checks.hub_limits import check_hub_limits
from pipeline.lifecycle.verify.checks.ledger import check_ledger
from pipeline.lifecycle.verify.checks.loaders import check_load_croissant, check_load_datasets, check_load_webdataset
from pipeline.lifecycle.verify.checks.notes import check_notes_copy
from pipeline.lifecycle.verify.checks.rebuild import check_rebuild
from pipeline.lifecycle.verify.checks.records import check_records
from pipeline.lifecycle.verify.checks.rows import check_splits, check_unique
from pipeline.lifecycle.verify.checks.tars import check_webdataset_tars
from pipeline.lifecycle.verify.checks.version import check_version
from pipeline.lifecycle.verify.options import HubLimits, ReadLimits, RebuildRequest, VerifyOptions
from pipeline.lifecycle.verify.report import CheckResult, Failure, capped, escaped
from pipeline.lifecycle.verify.view import ManifestUnreadable, ReleaseView


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    run: Callable[[ReleaseView, VerifyOptions], Iterable[str]]
    applies: Callable[[ReleaseView, VerifyOptions], bool] = lambda view, opts: True
    # Safety checks read the release themselves with bounded work; they run before any loader check.
    safety: bool = False
    # Loader checks hand the release to another library (datasets, webdataset, mlcroissant).
    loader: bool = False
    # The description as run, naming what the caller asked for (a check run on request)
    describe: Callable[[VerifyOptions], str] | None = None

    def description_for(self, opts: VerifyOptions) -> str:
        return self.describe(opts) if self.describe else self.description


def _has_tars(view: ReleaseView, opts: VerifyOptions) -> bool:
    return bool(view.tar_paths)


def _has_croissant(view: ReleaseView, opts: VerifyOptions) -> bool:
    return view.has(CROISSANT)


# The checks of every verify.
CHECKS: tuple[Check, ...] = (
    Check("files", "every file in manifest.json present, regular, with its size and sha256; no unlisted, linked or special file",
          check_files, safety=True),
    Check("card", "the cards' YAML loads without aliases or tags; configs name only the release's shards; features of the release's types",
          check_card, safety=True),
    Check("records", "every Parquet row (sample/ too) valid against schemas/record.schema.json; images decode to their pixel_sha256; sample rows are published rows",
          check_records, safety=True),
    Check("wds-tars", "the tars are the manifest's, uncompressed, with members <key>.cls/.json/.png within their size limits",
          check_webdataset_tars, _has_tars, safety=True),
    Check("croissant", "croissant.json: this version, every file with its sha256, what mlcroissant runs as the build writes it",
          check_croissant, _has_croissant, safety=True),
    Check("version", "one semantic version in manifest, config, card and notes; the card's links resolve", check_version),
    Check("counts", "counts in the card (YAML and tables), manifest, ledger and shards agree", check_counts),
    Check("ledger", "the ledger accounts for every raw input once and for every published row", check_ledger),
    Check("splits", "no patient or look-alike group in two splits", check_splits),
    Check("unique", "no image_id (or pixel_sha256) twice", check_unique),
    Check("hub-limits", "files, folders, shards and row groups within the Hub's limits", check_hub_limits),
    Check("load-datasets", "datasets.load_dataset reads the release (also streaming)", check_load_datasets, loader=True),
    Check("load-webdataset", "wds/ reads with webdataset's tar reader and datasets, matching the Parquet shards",
          check_load_webdataset, _has_tars, loader=True),
    Check("load-croissant", "croissant.json loads with mlcroissant: one record per image, with its label",
          check_load_croissant, _has_croissant, loader=True),
)

# The checks a caller asks for (`--notes-dir`, `--rebuild`): after every other check, whatever it found.
REQUESTED_CHECKS: tuple[Check, ...] = (
    Check("notes-copy", "the release notes equal their editable copy", check_notes_copy,
          lambda view, opts: opts.notes_dir is not None,
          describe=lambda opts: f"the release notes equal the editable copy in {opts.notes_dir}"),
    Check("rebuild", "a rebuild from the raw input is byte-identical", check_rebuild,
          lambda view, opts: opts.rebuild is not None,
          describe=lambda opts: f"a rebuild from {opts.rebuild.raw} is byte-identical"),
)


def _run(check: Check, view: ReleaseView, opts: VerifyOptions) -> CheckResult:
    result = CheckResult(check.name, check.description_for(opts))
    try:
        result.failures = capped(check.name, check.run(view, opts))
    except Exception as exc:  # a check that cannot finish is a failed check, reported like the others
        result.failures.append(escaped(check.name, f"could not complete: {type(exc).__name__}: {exc}"))
    return result


def _options(
    limits: HubLimits | None,
    read_limits: ReadLimits | None,
    full_load_max_bytes: int | None,
    notes_dir: Path | None,
    rebuild: RebuildRequest | None,
    files_hashed: bool,
) -> VerifyOptions:
    opts = VerifyOptions(hub=limits or HubLimits(), read=read_limits or ReadLimits(), notes_dir=notes_dir, rebuild=rebuild,
                         files_hashed=files_hashed)
    if full_load_max_bytes is not None:
        opts = replace(opts, full_load_max_bytes=full_load_max_bytes)
    return opts


def run_checks(
    release_dir: Path,
    *,
    rebuild_raw: Path | None = None,
    previous: Path | None = None,
    workers: int | None = None,
    limits: HubLimits | None = None,
    skip: Iterable[str] = (),
    notes_dir: Path | None = None,
    full_load_max_bytes: int | None = None,
    read_limits: ReadLimits | None = None,
    files_hashed: bool = False,
) -> list[CheckResult]:
    """Every applicable check, in order, with its failures (none: it passed). The loader checks run only when
    every check before them passed; `skip` names checks the caller has done itself or does not want, and skipping
    a safety check leaves its guarantee to the caller. `files_hashed`: the caller ran `listed_file_problems` (publish
    does, with hard links refused), so the files check holds only the names to the release format."""
    rebuild = RebuildRequest(rebuild_raw, previous, workers) if rebuild_raw is not None else None
    opts = _options(limits, read_limits, full_load_max_bytes, notes_dir, rebuild, files_hashed)
    view = ReleaseView(Path(release_dir), opts.read)
    try:
        os.close(view.files.root_fd())
        view.manifest  # noqa: B018 - nothing else is checked without it
    except (ManifestUnreadable, ReleaseFileError) as exc:
        return [CheckResult("manifest", "manifest.json present, readable and of the manifest schema", [escaped("manifest", str(exc))])]
    skip = set(skip)
    results: list[CheckResult] = []
    for check in CHECKS + REQUESTED_CHECKS:
        if check.name in skip or not check.applies(view, opts):
            continue
        if check.loader and any(r.failures for r in results):
            failed = ", ".join(r.name for r in results if r.failures)
            results.append(CheckResult(check.name, check.description, skipped=f"not run: the release failed {failed}"))
            continue
        results.append(_run(check, view, opts))
    return results


def verify_release(release_dir: Path, **options) -> list[Failure]:
    """All failures of a release; empty when it passes. Options as for `run_checks`."""
    return [f for result in run_checks(release_dir, **options) for f in result.failures]


def verify_messages(release_dir: Path, **options) -> list[str]:
    """The failures as text, one per problem ('[check] message'): what `mll23 publish` refuses a release for."""
    return [str(f) for f in verify_release(release_dir, **options)]
