"""The release as verify sees it: read lazily, once, with bounded work, and shared by every check."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.release.layout import (
    CARD,
    LEDGER,
    LEDGER_COLUMNS,
    MANIFEST,
    PARQUET_SHARD,
    SAMPLE_SHARD,
    TAR_SHARD,
    WDS_CARD,
    ManifestError,
    show,
)
from pipeline.release.parquet import SCHEMA_FIELDS
from pipeline.untrusted.files import Listing, ReleaseDir, ReleaseFileError, fixed_cap, load_manifest, read_ledger
from pipeline.untrusted.formats import CardRefused, card_header
from pipeline.untrusted.parquet_bounds import ParquetRefused, footer_checked, open_bounded
from pipeline.lifecycle.verify.options import ReadLimits

# The shard names a card's configs may point at: the full splits' and the `sample` config's (pipeline/release/sample.py)
CARD_DATA_PATH = re.compile(f"{PARQUET_SHARD.pattern}|{SAMPLE_SHARD.pattern}", re.ASCII)


class ManifestUnreadable(Exception):
    """Nothing else can be checked without the manifest."""


class Refused(Exception):
    """A part of a release verify will not read further; the message names it and says why."""


@dataclass(frozen=True)
class ShardRow:
    """A published row of a Parquet shard without its image: the per-row columns the checks compare."""

    shard: str
    index: int  # row number in its shard, from 0
    split: str
    image_id: str
    label: int
    source_file: str
    patient_id: str | None
    annotator: str | None
    group_id: str
    pixel_sha256: str
    phash: str
    extra: str | None

    def where(self) -> str:
        return f"{self.shard} row {self.index}"


# The columns of a shard, as the build writes them; any other schema is refused before a value is read
SHARD_SCHEMA = pa.schema(SCHEMA_FIELDS)
_META_COLUMNS = ["image_id", "label", "source_file", "patient_id", "annotator", "group_id", "pixel_sha256", "phash", "extra"]


def as_dict(value: object) -> dict:
    """A mapping read from the release, or {} when it is something else (that is reported where it matters)."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list:
    """A list read from the release, or [] when it is something else (that is reported where it matters)."""
    return value if isinstance(value, list) else []


def open_parquet(fh: BinaryIO, rel: str, limits: ReadLimits, schema: pa.Schema = SHARD_SCHEMA) -> pq.ParquetFile:
    """The shard, once its columns, footer, column chunks and page headers passed the limits (pipeline.untrusted.parquet_bounds)."""
    try:
        return open_bounded(fh, limits.parquet, schema)
    except ParquetRefused as exc:
        raise Refused(f"{show(rel)}: {exc}") from None


def parquet_metadata(fh: BinaryIO, rel: str, limits: ReadLimits) -> pq.FileMetaData:
    """The footer only (its own size checked): what the Hub limits are checked against."""
    try:
        return footer_checked(fh, limits.parquet).metadata
    except ParquetRefused as exc:
        raise Refused(f"{show(rel)}: {exc}") from None


class ReleaseView:
    """One release directory, read through `pipeline.untrusted.files` within `limits`: each part (manifest,
    listing, rows, ledger, cards) is read when a check first asks for it, then shared."""

    def __init__(self, release_dir: Path, limits: ReadLimits | None = None) -> None:
        self.dir = Path(release_dir)
        self.files = ReleaseDir(self.dir)
        self.limits = limits or ReadLimits()
        self.read_errors: list[str] = []  # files a check needed but could not read
        self.ledger_error: str | None = None  # why ledger.csv could not be read
        self.ledger_columns: list[str] = []

    @cached_property
    def manifest(self) -> dict:
        try:
            return load_manifest(self.files)
        except ManifestError as exc:
            if not os.path.lexists(self.dir / MANIFEST):
                raise ManifestUnreadable(f"{MANIFEST} is missing: nothing can be checked without it") from None
            raise ManifestUnreadable(str(exc)) from None

    @cached_property
    def listing(self) -> Listing:
        return self.files.listing()

    @cached_property
    def present(self) -> list[str]:
        """Regular files of the release except manifest.json, sorted."""
        return [p for p in self.listing.files if p != MANIFEST]

    @cached_property
    def present_set(self) -> frozenset[str]:
        """`present` for lookups: a release may hold 200,000 names and its card as many links."""
        return frozenset(self.present)

    @cached_property
    def declared(self) -> dict[str, int]:
        return {e["path"]: e["size"] for e in self.manifest["files"]}

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    def cap(self, rel: str) -> int:
        """The most verify reads of `rel`: its fixed cap, and no more than the manifest declares."""
        fixed = fixed_cap(rel)
        return min(fixed, self.declared.get(rel, fixed))

    @contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        with self.files.open(rel, max_bytes=self.cap(rel)) as fh:
            yield fh

    def read_text(self, rel: str) -> str:
        return self.files.read_text(rel, max_bytes=self.cap(rel))

    def has(self, rel: str) -> bool:
        return rel in self.present_set

    @cached_property
    def shard_paths(self) -> list[str]:
        """Parquet shards actually present (what `datasets` would load), listed or not."""
        return [p for p in self.present if PARQUET_SHARD.match(p)]

    @cached_property
    def shard_schema(self) -> pa.Schema:
        """The columns the build writes; a harmonised release (`mll23 harmonise`) adds its per-source columns."""
        if "harmonised_from" in self.manifest:
            from pipeline.lifecycle.harmonise import SOURCE_FIELDS

            return pa.schema(SCHEMA_FIELDS + SOURCE_FIELDS)
        return SHARD_SCHEMA

    @cached_property
    def sample_paths(self) -> list[str]:
        return [p for p in self.present if SAMPLE_SHARD.match(p)]

    @cached_property
    def tar_paths(self) -> list[str]:
        return [p for p in self.present if TAR_SHARD.match(p)]

    @cached_property
    def rows(self) -> list[ShardRow]:
        """The published rows of every shard that could be read; why the others could not is in `read_errors`."""
        rows: list[ShardRow] = []
        held = 0
        for shard in self.shard_paths:
            try:
                ours, shard_bytes = self._shard_rows(shard, len(rows), held)
            except (ReleaseFileError, Refused) as exc:
                self.read_errors.append(str(exc))
                continue
            except Exception as exc:  # a damaged shard is a finding, not a crash
                self.read_errors.append(f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})")
                continue
            rows.extend(ours)
            held += shard_bytes
        return rows

    def _shard_rows(self, shard: str, rows_before: int, bytes_before: int) -> tuple[list[ShardRow], int]:
        """One shard's rows and the bytes of their columns, refused when the shards so far would hold too many."""
        split = PARQUET_SHARD.match(shard).group(1)
        with self.open(shard) as fh:
            parquet = open_parquet(fh, shard, self.limits, self.shard_schema)
            if rows_before + parquet.metadata.num_rows > self.limits.max_rows:
                raise Refused(f"{show(shard)}: the shards hold more than {self.limits.max_rows:,} rows: not read")
            ours: list[ShardRow] = []
            shard_bytes = 0
            # a row group at a time, counting what is kept: every row group may be within the Parquet
            # limits while all of them together, as Python objects, are not
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g, columns=_META_COLUMNS)
                shard_bytes += table.nbytes
                if bytes_before + shard_bytes > self.limits.meta_bytes:
                    raise Refused(
                        f"{show(shard)}: the shards' per-row columns ({', '.join(_META_COLUMNS)}) hold more than "
                        f"{self.limits.meta_bytes:,} bytes: not read"
                    )
                ours.extend([ShardRow(shard=shard, index=len(ours) + i, split=split, **r) for i, r in enumerate(table.to_pylist())])
                del table
        return ours, shard_bytes

    @cached_property
    def ledger(self) -> list[dict[str, str]]:
        if not self.has(LEDGER):
            self.read_errors.append(f"{LEDGER} is missing")
            return []
        try:
            rows = read_ledger(self.files, max_rows=self.limits.max_rows, max_bytes=self.cap(LEDGER))
            self.ledger_columns = list(LEDGER_COLUMNS)
            return rows
        except ReleaseFileError as exc:
            self.ledger_error = str(exc)
        self.read_errors.append(self.ledger_error)
        return []

    @cached_property
    def cards(self) -> dict[str, tuple[str, dict, str | None]]:
        """README.md and wds/README.md (where present): (text, YAML header, why they could not be read)."""
        out = {}
        for rel in (CARD, WDS_CARD):
            if not self.has(rel):
                continue
            try:
                text = self.read_text(rel)
                out[rel] = (text, card_header(text, self.limits.yaml_depth), None)
            except (ReleaseFileError, CardRefused) as exc:
                out[rel] = ("", {}, f"{show(rel)}: {exc}" if isinstance(exc, CardRefused) else str(exc))
        return out

    @property
    def card_text(self) -> str:
        return self.cards.get(CARD, ("", {}, None))[0]

    @property
    def card_yaml(self) -> dict:
        return self.cards.get(CARD, ("", {}, None))[1]

