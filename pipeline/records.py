"""Plain records passed from stage to stage. Data flows one way: RawItem -> ImageFacts -> LedgerEntry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Every raw input ends with exactly one of these fates in ledger.csv.
FATES = ("kept", "duplicate", "label_conflict", "excluded", "invalid")


@dataclass(frozen=True)
class RawItem:
    """One raw image file as found by ingest (no pixels read yet)."""

    relpath: str  # POSIX path relative to RAW, e.g. "myeloblast/img_001.tif"
    label: str  # the class: annotations.csv's label where that file exists, else the folder name
    size: int  # bytes on disk (the sha256 is taken by decode, from the same read as the pixels)
    patient_id: str | None = None
    annotator: str | None = None
    dysplastic: bool = False
    extra: tuple[tuple[str, str | None], ...] = ()  # further annotations.csv columns, sorted by name


@dataclass(frozen=True)
class ImageFacts:
    """What one decode of one image tells us; the only per-image state kept for the whole dataset."""

    relpath: str
    label: str
    pixel_sha256: str  # sha256 of the decoded RGB pixel bytes (row-major, HxWx3 uint8)
    phash: int  # 64-bit imagehash.phash of the decoded image, as an unsigned int
    width: int
    height: int
    lossless: bool  # True when the file bytes can be published as they are (lossless format, RGB, 8 bit)
    file_format: str  # PIL format name: "TIFF", "PNG", "JPEG"
    file_sha256: str = ""  # of the file bytes, from the same read that decoded the pixels
    centre_hash: int | None = None  # pHash of a window centred on the cell: finds re-crops of the same cell
    # dedup's coarse same-cell signature (uint8, (height // 8) x (width // 8), row-major; 1.3 kB at 288 px)
    signature: bytes | None = None
    # the file bytes can be what the release stores: lossless RGB, or an RGB JPEG kept as the lab published it
    # (decode.publish_as_original decides, with the config's publish_codec)
    published_as_is: bool = False


@dataclass(frozen=True)
class DecodeFailure:
    relpath: str
    reason: str
    file_sha256: str | None = None


@dataclass(frozen=True)
class LedgerEntry:
    relpath: str
    label: str
    fate: str  # one of FATES
    reason: str
    duplicate_of: str | None = None  # relpath of the kept copy, for fate == "duplicate"
    split: str | None = None  # for fate == "kept"
    image_id: str | None = None  # for fate == "kept"
    sha256: str | None = None  # file sha256 where the file could be read
    # "file" for a raw file; "annotation_row" for an annotations.csv row that names no file (not a raw image)
    input_kind: str = "file"


@dataclass(frozen=True)
class Pair:
    """A pair the dedup looked at closely, kept for the release's gallery and the report."""

    a: str
    b: str
    kind: str  # "exact", "near_duplicate", "lookalike"
    hamming: int
    decided_by: str = ""  # the test that confirmed it: "identical pixels", "duplicate test", "same-cell test"
    score: str = ""  # that test's figures against its bounds, as the ledger and the dedup figure show them
    margin: float = math.inf  # smallest relative distance to a bound of the tests (0 = on the line)


@dataclass
class DedupResult:
    # relpath -> (fate, reason, duplicate_of) for every image given to dedup; fate in kept/duplicate/label_conflict
    fates: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    # relpath -> look-alike group id (16 hex) for every image; images of one cell share it
    group_of: dict[str, str] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseRecord:
    """One published image: what goes into a Parquet row, a WebDataset sample and the record schema."""

    image_id: str  # 16 hex of the pixel sha256: stable as long as the pixels are
    label: int  # index into the config's class list
    label_name: str
    split: str
    source_file: str  # relpath under RAW
    patient_id: str | None
    annotator: str | None
    group_id: str  # look-alike group: images of one cell share it
    pixel_sha256: str
    phash: str  # 16 hex
    width: int
    height: int
    lossless: bool  # the file bytes are published unchanged (decode.publish_as_original)
    file_format: str
    extra: tuple[tuple[str, str | None], ...] = ()

    def metadata(self) -> dict:
        """The JSON form validated against schemas/record.schema.json."""
        return {
            "image_id": self.image_id,
            "label": self.label,
            "label_name": self.label_name,
            "split": self.split,
            "source_file": self.source_file,
            "patient_id": self.patient_id,
            "annotator": self.annotator,
            "group_id": self.group_id,
            "pixel_sha256": self.pixel_sha256,
            "phash": self.phash,
            "width": self.width,
            "height": self.height,
            "extra": dict(self.extra),
        }
