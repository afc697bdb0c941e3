"""WebDataset shards beside the Parquet ones: wds/{split}-{i:06d}.tar, one sample per published image.

A sample is three adjacent tar members named after its key (the image_id: 16 hex digits, no dots, because
both `webdataset` and `datasets` split a member name at its first dot into key and column):

    {key}.cls    the label index as ASCII digits (both libraries decode `.cls` to an int)
    {key}.json   the record's metadata (the dict validated against schemas/record.schema.json)
    {key}.png    the published image bytes, the same bytes as the Parquet `image` column, whatever
                 their format (PNG, or a source's own TIFF or JPEG bytes: Pillow opens them by content)

Every tar header is fixed (mtime = MEMBER_MTIME, uid/gid 0, no user or group names, mode 0644, POSIX ustar
format), so a rebuild from the same input gives the same bytes; `webdataset.TarWriter` would stamp the current
time instead. The mtime is a constant, not the release date: a re-release that changes only its date then
leaves every tar byte for byte as it was, so the Hub's chunk store (Xet) and consumers' caches keep them. Samples are written as they arrive: one sample's bytes in memory at a time.
"""

from __future__ import annotations

import calendar
import datetime
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.runtime.overlap import HashingWriter
from pipeline.release.parquet import check_shard_size
from pipeline.records import ReleaseRecord
from pipeline.release.layout import WDS_DIR

IMAGE_FIELD = "png"
MEMBER_MODE = 0o644


# 2000-01-01T00:00:00Z: the only time a tar header carries (not 0, which some tools show as "1970" or warn of)
MEMBER_MTIME = calendar.timegm(datetime.date(2000, 1, 1).timetuple())


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def brace_pattern(split: str, n_shards: int) -> str | None:
    """A pattern `webdataset.WebDataset` expands to the split's shards (relative to the release directory)."""
    if n_shards == 0:
        return None
    return f"{WDS_DIR}/{split}-{{{0:06d}..{n_shards - 1:06d}}}.tar"


def sample_members(record: ReleaseRecord, image: bytes) -> list[tuple[str, bytes]]:
    """The members of one sample, sorted by name; the key is the image_id."""
    key = record.image_id
    if not key or "." in key or "/" in key:
        raise ValueError(f"{record.source_file}: WebDataset key {key!r} must be non-empty without dots or slashes")
    members = [(f"{key}.cls", str(record.label).encode("ascii")), (f"{key}.json", metadata_json(record)), (f"{key}.{IMAGE_FIELD}", image)]
    return sorted(members)


def metadata_json(record: ReleaseRecord) -> bytes:
    return json.dumps(record.metadata(), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _member_bytes(size: int) -> int:
    return tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def sample_bytes(record: ReleaseRecord, image_bytes: int) -> int:
    """The bytes one sample takes in a tar (headers and padding included) when its image has ``image_bytes``."""
    return sum(_member_bytes(n) for n in (len(str(record.label)), len(metadata_json(record)), image_bytes))


# Closing a shard appends two zero blocks and pads the file to a whole tar record: at most this much.
TAR_END_BYTES = 2 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE


@dataclass(frozen=True)
class TarShard:
    path: str  # relative to the release directory, POSIX
    num_examples: int
    sha256: str = ""  # of the tar file, taken while it was written
    size: int = 0


@dataclass
class ShardedTarWriter:
    """Streams one split's samples into tar shards of the planned row counts; use as a context manager."""

    release_dir: Path
    split: str
    shard_rows: Sequence[int]  # samples in each shard (pipeline/release/shards.py), the same as the Parquet shards'
    max_shard_bytes: int  # checked on every finished shard, every byte of the file
    mtime: int
    on_shard: Callable[[Path], None] | None = None  # called with each shard's path as soon as it is complete
    shards: list[TarShard] = field(default_factory=list, init=False)
    _tar: tarfile.TarFile | None = field(default=None, init=False)
    _sink: HashingWriter | None = field(default=None, init=False)
    _shard_samples: int = field(default=0, init=False)
    _keys: set[str] = field(default_factory=set, init=False)

    def __enter__(self) -> ShardedTarWriter:
        (self.release_dir / WDS_DIR).mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._close_shard()
        if exc_type is None and [s.num_examples for s in self.shards] != list(self.shard_rows):
            raise ValueError(f"split {self.split}: wrote tars of {[s.num_examples for s in self.shards]} samples, the plan was {list(self.shard_rows)}")

    def add(self, record: ReleaseRecord, image: bytes) -> bytes:
        """Append one sample; returns the image bytes so it can sit in the Parquet writer's read chain."""
        if record.image_id in self._keys:
            raise ValueError(f"{record.source_file}: image_id {record.image_id} already written to split {self.split}")
        self._keys.add(record.image_id)
        if self._tar is not None and self._shard_samples == self.shard_rows[len(self.shards)]:
            self._close_shard()
        if self._tar is None:
            if len(self.shards) == len(self.shard_rows):
                raise ValueError(f"split {self.split}: more samples than the shard plan's {sum(self.shard_rows)}")
            self._open_shard()
        for name, data in sample_members(record, image):
            self._tar.addfile(self._header(name, len(data)), io.BytesIO(data))
        self._shard_samples += 1
        return image

    def _header(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = self.mtime
        info.mode = MEMBER_MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        return info

    def _open_shard(self) -> None:
        path = self.release_dir / WDS_DIR / shard_name(self.split, len(self.shards))
        # Hashed on the way out (no re-reading for the manifest); members copied in one piece, not 16 kB ones.
        self._sink = HashingWriter(path)
        self._tar = tarfile.open(path, "w", fileobj=self._sink, format=tarfile.USTAR_FORMAT, copybufsize=1 << 20)
        self._shard_samples = 0

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._sink.close()
        size, digest = self._sink.digest()
        check_shard_size(self._sink.path, size, self.max_shard_bytes)
        self.shards.append(TarShard(f"{WDS_DIR}/{shard_name(self.split, len(self.shards))}", self._shard_samples, digest, size))
        self._tar = None
        if self.on_shard is not None:
            self.on_shard(self.release_dir / self.shards[-1].path)


def manifest_entry(split: str, shards: list[TarShard]) -> dict:
    """What manifest.json says about one split's WebDataset shards."""
    return {
        "num_examples": sum(s.num_examples for s in shards),
        "pattern": brace_pattern(split, len(shards)),
        "shards": [{"path": s.path, "num_examples": s.num_examples} for s in shards],
    }
