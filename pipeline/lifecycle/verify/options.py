"""What a verify may read (limits of the Hub and of verify itself) and what it was asked to do beyond the checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.untrusted.formats import TarLimits
from pipeline.untrusted.parquet_bounds import ParquetLimits


@dataclass(frozen=True)
class HubLimits:
    """What the Hugging Face Hub accepts (docs: 'Repository limitations and recommendations')."""

    max_file_bytes: int = 50 * 1000**3  # the Hub refuses a file above 50 GB
    # the dataset viewer refuses a Parquet row group above 286.10 MiB uncompressed ("TooBigContentError")
    max_row_group_bytes: int = 300_000_000
    max_entries_per_folder: int = 10_000
    max_files: int = 100_000


@dataclass(frozen=True)
class ReadLimits:
    """How much verify reads or decodes from one part of a release before refusing it unread (a real release is
    far below each: row groups under 32 MB, images under 16 MB, a ledger of 41,906 rows is 6 MB)."""

    parquet: ParquetLimits = field(default_factory=ParquetLimits)
    # rows of all shards, and of the ledger, held in memory as Python objects (MLL23 has 41,906 raw images)
    max_rows: int = 500_000
    # decoded bytes of the shards' per-row text columns held with them (MLL23's are some 10 MB)
    meta_bytes: int = 128 << 20
    # rows with failures the records check reports before it stops: each costs a record validation, and a
    # shard of 500,000 wrong rows took 69 s
    max_failing_rows: int = 1000
    tar: TarLimits = field(default_factory=TarLimits)
    yaml_depth: int = 64


@dataclass(frozen=True)
class RebuildRequest:
    """`mll23 verify --rebuild RAW`: rebuild from `raw` (on `previous`, else the release found beside this one)."""

    raw: Path
    previous: Path | None = None
    workers: int | None = None


@dataclass(frozen=True)
class VerifyOptions:
    """Everything a check may consult besides the release: the limits, and what the caller asked for."""

    hub: HubLimits = field(default_factory=HubLimits)
    # A non-streaming `load_dataset` copies the whole release into a cache: beyond this size (a CI runner's
    # disk may not hold the release twice) the load check reads every row in streaming mode instead.
    full_load_max_bytes: int = 2_000_000_000
    read: ReadLimits = field(default_factory=ReadLimits)
    notes_dir: Path | None = None  # `--notes-dir`: also compare the release notes with their editable copy
    rebuild: RebuildRequest | None = None  # `--rebuild`: also rebuild and compare byte for byte
    # The caller ran the files check's pass over every byte itself (publish's self-check, `listed_file_problems`):
    # the files check then holds only the names to the release format, so a publish hashes each file once.
    files_hashed: bool = False
