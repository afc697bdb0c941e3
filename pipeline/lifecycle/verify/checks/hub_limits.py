"""The hub-limits check: files, folders, shards and row groups within what the Hugging Face Hub accepts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipeline.release.layout import MANIFEST
from pipeline.untrusted.files import ReleaseFileError
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView, Refused, parquet_metadata


def check_hub_limits(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Files per repository and per folder, file sizes, and each shard's rows and row groups, within `opts.hub`."""
    limits = opts.hub
    files = view.present + [MANIFEST]
    if len(files) > limits.max_files:
        yield f"{len(files):,} files; the Hub takes at most {limits.max_files:,} per repository"
    per_folder = Counter(str(Path(f).parent) for f in files)
    for folder, n in sorted(per_folder.items()):
        if n > limits.max_entries_per_folder:
            yield f"{folder}/ holds {n:,} files; the Hub takes at most {limits.max_entries_per_folder:,} per folder"
    for f in files:
        try:
            view.files.size(f, max_bytes=limits.max_file_bytes)
        except ReleaseFileError as exc:
            yield str(exc).replace("for this file", "(the Hub refuses larger files)")
    for shard in view.shard_paths:
        yield from _shard_problems(view, shard, opts)


def _shard_problems(view: ReleaseView, shard: str, opts: VerifyOptions) -> Iterator[str]:
    """A shard `datasets` can load (some rows) and the dataset viewer can show (row groups small enough)."""
    limits = opts.hub
    try:
        with view.open(shard) as fh:
            meta = parquet_metadata(fh, shard, opts.read)
    except (ReleaseFileError, Refused) as exc:
        yield str(exc)
        return
    except Exception as exc:
        yield f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})"
        return
    if meta.num_rows == 0:
        yield f"{shard} has no rows (`datasets` cannot load a Parquet file of no rows)"
    for g in range(meta.num_row_groups):
        size = meta.row_group(g).total_byte_size
        if size > limits.max_row_group_bytes:
            yield (
                f"{shard} row group {g} is {size:,} bytes uncompressed; the Hub's dataset viewer refuses row groups "
                f"over {limits.max_row_group_bytes:,}"
            )
