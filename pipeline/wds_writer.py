"""WebDataset shards beside the Parquet ones: wds/{split}-{i:06d}.tar, one sample per published image.

A sample is three adjacent tar members named after its key (the image_id: 16 hex digits, no dots, because
both `webdataset` and `datasets` split a member name at its first dot into key and column):

    {key}.cls    the label index as ASCII digits (both libraries decode `.cls` to an int)
    {key}.json   the record's metadata (the dict validated against schemas/record.schema.json)
    {key}.tif    the published image bytes, the same bytes as the Parquet `image` column
                 (`.png` for images republished as PNG)

Every tar header is fixed (mtime = the config's release date, uid/gid 0, no user or group names, mode 0644,
POSIX ustar format), so a rebuild from the same input gives the same bytes; `webdataset.TarWriter` would
stamp the current time instead. Samples are written as they arrive: one sample's bytes in memory at a time.
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

import yaml

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.overlap import HashingWriter
from pipeline.parquet_writer import check_shard_size
from pipeline.records import ReleaseRecord

WDS_DIR = "wds"
IMAGE_FIELD = "png"
MEMBER_MODE = 0o644


def release_mtime(release_date: str) -> int:
    """The release date (YYYY-MM-DD, from the config) as a UTC epoch: the only time a tar header carries."""
    return calendar.timegm(datetime.date.fromisoformat(release_date).timetuple())


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
    shard_rows: Sequence[int]  # samples in each shard (pipeline/shards.py), the same as the Parquet shards'
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


def hf_features(class_names: list[str]) -> list[dict]:
    """The card's `dataset_info.features` for the tar columns, the same in every release: `png` as Image,
    `cls` as ClassLabel with the release's class names, `json` as a JSON object."""
    names = {str(i): name for i, name in enumerate(class_names)}
    return [
        {"name": IMAGE_FIELD, "dtype": "image"},
        {"name": "cls", "dtype": {"class_label": {"names": names}}},
        {"name": "json", "dtype": "json"},
    ]


def render_wds_card(config: ReleaseConfig, shards: dict[str, list[TarShard]], split_bytes: dict[str, int]) -> str:
    """wds/README.md: a card of its own, so `datasets` builds the WebDataset variant with declared features.

    The release's root card keeps only Parquet configs: `datasets` picks one builder for all configs from the
    first config's files (huggingface/datasets#7101), so a tar config there would be read as Parquet.
    """
    present = [s for s in SPLITS if shards.get(s)]
    header = {
        "license": config.raw["license"],
        "pretty_name": f"{config.raw['pretty_name']} (WebDataset shards)",
        "task_categories": ["image-classification"],
        "configs": [
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": s, "path": f"{s}-*.tar"} for s in present],
            }
        ],
        "dataset_info": {
            "features": hf_features(config.class_names),
            "splits": [
                {"name": s, "num_bytes": split_bytes.get(s, 0), "num_examples": sum(x.num_examples for x in shards[s])} for s in present
            ],
        },
    }
    yaml_text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000)
    body = f"""# {config.raw['pretty_name']} {config.version}: WebDataset shards

The same images, labels and metadata as the Parquet shards in `../data/`, as tar shards for streaming
training. Each sample has the key `image_id` and three members: the image (`png`), `cls` (label index
into the {len(config.class_names)} class names declared above) and `json` (the record's metadata).

```python
from datasets import load_dataset
ds = load_dataset("<release directory>/wds")                 # Image + ClassLabel, as declared above
```

See `../manifest.json` (`splits.<split>.webdataset.pattern`) for the shard pattern to give `webdataset.WebDataset`.
"""
    return f"---\n{yaml_text}---\n\n{body}"


def write_wds_card(release_dir: Path, config: ReleaseConfig, shards: dict[str, list[TarShard]]) -> None:
    if not any(shards.values()):
        return  # nothing to describe: a release without images has no WebDataset variant
    split_bytes = {s: sum((release_dir / x.path).stat().st_size for x in shards[s]) for s in SPLITS}
    text = render_wds_card(config, shards, split_bytes)
    (release_dir / WDS_DIR / "README.md").write_text(text, encoding="utf-8")


def card_section(shards: dict[str, list[TarShard]]) -> str:
    """The dataset card's section on the WebDataset variant and the Croissant metadata."""
    croissant = """```python
import mlcroissant as mlc                                    # Croissant 1.1 metadata with every file's sha256
records = mlc.Dataset(jsonld="croissant.json").records("images")
```"""
    patterns = [(s, brace_pattern(s, len(shards.get(s, [])))) for s in SPLITS]
    if not any(p for _, p in patterns):
        return f"\n## Croissant metadata\n\nNo image was published, so there are no WebDataset shards.\n\n{croissant}\n"
    rows = "\n".join(f"| {s} | {sum(x.num_examples for x in shards[s]):,} | `{p}` |" for s, p in patterns if p)
    first = next(p for _, p in patterns if p)
    return f"""
## WebDataset shards and Croissant metadata

The same records are also published as WebDataset tar shards in `{WDS_DIR}/`: one sample per image, key
`image_id`, members `<key>.cls` (label index), `<key>.json` (the record's metadata) and the image
(`<key>.{IMAGE_FIELD}`: the same bytes as the Parquet `image` column). Shard lists and counts are in `manifest.json`.

| split | samples | shard pattern |
| --- | --- | --- |
{rows}

```python
import webdataset as wds                                     # streaming training
ds = wds.WebDataset("{first}", shardshuffle=False).decode("pil").to_tuple("{IMAGE_FIELD}", "cls", "json")

from datasets import load_dataset                            # the same tars through `datasets`:
ds = load_dataset("<downloaded release>/{WDS_DIR}")               # their own card declares Image + ClassLabel
```

{croissant}
"""
