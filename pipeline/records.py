"""Plain records passed from stage to stage, and the counts of a release made from them.

Data flows one way: RawItem -> ImageFacts -> Publishable -> ReleaseRecord (once the split is known); every raw
input ends as one LedgerEntry, and ReleaseCounts sums up the ledger and the records.
"""

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
class Publishable:
    """An image that passed dedup, exclusion and the record schema: a ReleaseRecord once the split stage has
    given it its split."""

    item: RawItem
    facts: ImageFacts
    group_id: str  # look-alike group: images of one cell share it

    @property
    def image_id(self) -> str:
        return self.facts.pixel_sha256[:16]


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


@dataclass(frozen=True)
class SplitCount:
    """One split's published images, in total and per class (only the classes it holds, in publishing order)."""

    total: int
    per_class: dict[str, int]

    def of(self, label: str) -> int:
        return self.per_class.get(label, 0)


@dataclass(frozen=True)
class ClassCount:
    """One class's images: raw input files, and published ones."""

    raw: int = 0
    kept: int = 0


@dataclass(frozen=True)
class ReleaseCounts:
    """The figures of a release, as measured by the build: the manifest's `counts`, read by card, Croissant,
    figures and notes."""

    raw_images: int  # raw input files
    annotation_rows_without_file: int  # annotations.csv rows naming no file (in the ledger, not raw images)
    ledger_total: int  # rows of ledger.csv
    ledger: dict[str, int]  # fate -> ledger rows, for every fate of FATES in that order
    per_class: dict[str, ClassCount]  # every class of the config, in its order
    splits: dict[str, SplitCount]  # every split, in SPLITS order

    @property
    def kept(self) -> int:
        return self.ledger["kept"]

    @classmethod
    def from_manifest(cls, doc: dict) -> ReleaseCounts:
        """The counts a written manifest records (schema-checked: a release read back); absent figures read as 0."""
        return cls(
            raw_images=doc.get("raw_images", 0),
            annotation_rows_without_file=doc.get("annotation_rows_without_file", 0),
            ledger_total=doc.get("ledger_total", 0),
            ledger={f: doc.get("ledger", {}).get(f, 0) for f in FATES},
            per_class={c: ClassCount(n.get("raw", 0), n.get("kept", 0)) for c, n in doc.get("per_class", {}).items()},
            splits={s: SplitCount(n.get("total", 0), dict(n.get("per_class", {}))) for s, n in doc.get("splits", {}).items()},
        )

    def as_manifest(self) -> dict:
        """The manifest's `counts` object, keys in the order the build has always written them."""
        return {
            "raw_images": self.raw_images,
            "annotation_rows_without_file": self.annotation_rows_without_file,
            "ledger_total": self.ledger_total,
            "ledger": dict(self.ledger),
            "per_class": {c: {"raw": n.raw, "kept": n.kept} for c, n in self.per_class.items()},
            "splits": {s: {"total": n.total, "per_class": dict(n.per_class)} for s, n in self.splits.items()},
        }


@dataclass(frozen=True)
class HarmonisedCounts(ReleaseCounts):
    """A harmonised release's counts: a release's, plus each source's share."""

    per_source: dict[str, dict[str, int]]  # source -> harmonised class -> published images
    per_source_split: dict[str, dict[str, int]]  # source -> split -> published images

    def as_manifest(self) -> dict:
        return {**super().as_manifest(), "per_source": self.per_source, "per_source_split": self.per_source_split}

