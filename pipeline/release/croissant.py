"""croissant.json: MLCommons Croissant 1.1 JSON-LD describing the release for dataset search engines and loaders.

- `distribution`: every file of the release as a FileObject with its size and sha256 (all but croissant.json
  itself and manifest.json, which is written after it and lists croissant.json's sha256), plus a FileSet of the
  Parquet shards that the record set reads;
- `recordSet`: `splits` (cr:Split), `classes` (sc:Enumeration: the class index, name, cell type and lineage,
  inline, in the config's ClassLabel order) and `images` (one record per published image; `label` is a
  cr:Label that references `classes/index`, so the class names are not lost as in the Hub's own export);
- the Responsible-AI fields (rai:) and the keywords come from the config's [datasheet] and [dataset] prose, the
  same source as the card.

Written without mlcroissant (a test dependency only); the tests validate it with `mlcroissant validate`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.release.layout import CROISSANT, DATA_DIR, MANIFEST, dumps_json, file_entries
from pipeline.release.parquet import STRING_COLUMNS
from pipeline.records import ReleaseCounts

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
# The JSON-LD @context of Croissant 1.1, as mlcroissant writes it for a 1.1 document.
CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
ENCODING_FORMATS = {
    ".parquet": "application/x-parquet",
    ".tar": "application/x-tar",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
}
SPLIT_URLS = {"train": "cr:TrainingSplit", "validation": "cr:ValidationSplit", "test": "cr:TestSplit"}
PARQUET_FILES = "parquet-files"
COLUMN_DESCRIPTIONS = {
    "image_id": "First 16 hex digits of the sha256 of the decoded RGB pixels; stable across releases.",
    "source_file": "Path of the image in the raw archive.",
    "patient_id": "Pseudonymous patient code, where known.",
    "annotator": "The examiner who labelled the image, where known.",
    "group_id": "Look-alike group: images of the same cell at another focus or crop share it.",
    "pixel_sha256": "sha256 of the decoded RGB pixel bytes.",
    "phash": "64-bit perceptual hash, 16 hex digits.",
    "extra": "Further annotation columns of the raw archive, as a JSON object.",
}


def _file_object(entry: dict) -> dict:
    suffix = Path(entry["path"]).suffix
    return {
        "@type": "cr:FileObject",
        "@id": entry["path"],
        "name": entry["path"],
        "contentUrl": entry["path"],
        "contentSize": f"{entry['size']} B",
        "encodingFormat": ENCODING_FORMATS.get(suffix, "application/octet-stream"),
        "sha256": entry["sha256"],
    }


def _field(record_set: str, name: str, data_type, description: str, source: dict | None = None, **extra) -> dict:
    field = {"@type": "cr:Field", "@id": f"{record_set}/{name}", "name": name, "description": description, "dataType": data_type}
    if source is not None:
        field["source"] = source
    field.update(extra)
    return field


def _column(name: str, **transform) -> dict:
    source = {"fileSet": {"@id": PARQUET_FILES}, "extract": {"column": name}}
    if transform:
        source["transform"] = transform
    return source


def splits_record_set() -> dict:
    return {
        "@type": "cr:RecordSet",
        "@id": "splits",
        "name": "splits",
        "description": "The release's splits: stratified by label, grouped by patient and look-alike group.",
        "dataType": "cr:Split",
        "key": {"@id": "splits/name"},
        "field": [
            _field("splits", "name", "sc:Text", "Split name, as in the Parquet file names."),
            _field("splits", "url", ["sc:URL", "cr:Split"], "The split's meaning (a Croissant split type)."),
        ],
        "data": [{"splits/name": s, "splits/url": SPLIT_URLS[s]} for s in SPLITS],
    }


def classes_record_set(config: ReleaseConfig) -> dict:
    return {
        "@type": "cr:RecordSet",
        "@id": "classes",
        "name": "classes",
        "description": f"The {len(config.classes)} cell classes; `index` is the value of images/label (ClassLabel order).",
        "dataType": "sc:Enumeration",
        "key": {"@id": "classes/index"},
        "field": [
            _field("classes", "index", "sc:Integer", "Class index, the value stored in the label column."),
            _field("classes", "name", "sc:Text", "Class name (the ClassLabel name)."),
            _field("classes", "full_name", "sc:Text", "Cell type in words."),
            _field("classes", "lineage", "sc:Text", "Haematopoietic lineage."),
        ],
        "data": [
            {"classes/index": i, "classes/name": c.label, "classes/full_name": c.full_name, "classes/lineage": c.lineage}
            for i, c in enumerate(config.classes)
        ],
    }


def images_record_set(config: ReleaseConfig) -> dict:
    # mlcroissant matches from the start of the path and keeps the first group: the split in the shard name.
    # It applies the transform again to the value it extracted (the bare split name, when it joins the
    # `references`), and logs a warning per record when that does not match: the shard-name part is optional.
    split_regex = r"^(?:.*/)?(" + "|".join(SPLITS) + r")(?:-[0-9]{5}-of-[0-9]{5}\.parquet)?$"
    fields = [
        _field(
            "images",
            "split",
            "sc:Text",
            "The split the image belongs to.",
            {"fileSet": {"@id": PARQUET_FILES}, "extract": {"fileProperty": "fullpath"}, "transform": {"regex": split_regex}},
            references={"field": {"@id": "splits/name"}},
        ),
        _field("images", "image", "sc:ImageObject", "The lossless image bytes.", _column("image", jsonPath="bytes")),
        _field(
            "images",
            "label",
            ["sc:Integer", "cr:Label"],
            "Class index; the class names are in the `classes` record set.",
            _column("label"),
            references={"field": {"@id": "classes/index"}},
        ),
    ]
    fields += [_field("images", name, "sc:Text", COLUMN_DESCRIPTIONS[name], _column(name)) for name in STRING_COLUMNS]
    return {
        "@type": "cr:RecordSet",
        "@id": "images",
        "name": "images",
        "description": f"One record per published image ({config.image_size[0]} x {config.image_size[1]} RGB), read from the Parquet shards.",
        "key": {"@id": "images/image_id"},
        "field": fields,
    }


def _sentence_start(text: str) -> str:
    return text[:1].upper() + text[1:]


def preprocessing_text(config: ReleaseConfig, counts: ReleaseCounts) -> str:
    led = counts.ledger
    excluded = f" and the labels {', '.join(sorted(config.exclude_labels))}" if config.exclude_labels else ""
    return (
        f"Duplicate images removed: identical pixels, and copies of one scan (shifted, brighter, re-compressed) found by a "
        f"pixel duplicate test of the candidate pairs (pHash within {config.lookalike_threshold} bits, or the same centre) "
        f"that pass a thumbnail correlation gate, and of every pair within {config.phash_threshold} bits; one copy kept. Duplicates with disagreeing labels handled by the policy "
        f"'{config.conflict_policy}'. {_sentence_start(config.dataset.excluded_cells)} excluded{excluded}. Images of the same cell at another focus or crop "
        f"are kept and grouped. Every record validated against a JSON schema. Of {counts.ledger_total:,} raw inputs: "
        f"{led['kept']:,} kept, {led['duplicate']:,} duplicates, {led['label_conflict']:,} label conflicts, "
        f"{led['excluded']:,} excluded, {led['invalid']:,} invalid (ledger.csv gives each input's fate and reason)."
    )


def rai_fields(config: ReleaseConfig, counts: ReleaseCounts) -> dict:
    ds = config.datasheet
    fields = {
        "rai:dataCollection": ds.collection,
        "rai:dataPreprocessingProtocol": preprocessing_text(config, counts),
        "rai:dataAnnotationProtocol": ds.labelling,
        "rai:dataUseCases": ds.uses,
        "rai:dataLimitations": ds.limitations,
        "rai:dataBiases": ds.biases,
        "rai:personalSensitiveInformation": ds.personal_information,
        "rai:dataReleaseMaintenancePlan": ds.maintenance,
    }
    return {key: value for key, value in fields.items() if value}


def croissant_document(config: ReleaseConfig, counts: ReleaseCounts, files: list[dict]) -> dict:
    ds = config.datasheet
    description = f"{ds.motivation} {ds.image_description or ''}".strip()
    doc = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": config.name,
        "alternateName": config.pretty_name,
        "description": description,
        "conformsTo": CONFORMS_TO,
        "version": config.version,
        "datePublished": config.release_date,
        "license": config.license,
        "keywords": ["image-classification", *config.dataset.keywords],
        "distribution": [_file_object(e) for e in files]
        + [
            {
                "@type": "cr:FileSet",
                "@id": PARQUET_FILES,
                "name": PARQUET_FILES,
                "description": "The Parquet shards of every split (datasets' Image struct for the image column).",
                "encodingFormat": ENCODING_FORMATS[".parquet"],
                "includes": [f"{DATA_DIR}/*.parquet"],
            }
        ],
        "recordSet": [splits_record_set(), classes_record_set(config), images_record_set(config)],
        **rai_fields(config, counts),
    }
    if config.citation:
        doc["citeAs"] = config.citation.strip()
    if config.homepage:
        doc["url"] = config.homepage
    if config.doi:
        doc["sameAs"] = f"https://doi.org/{config.doi}"
    return doc


def write_croissant(release_dir: Path, config: ReleaseConfig, counts: ReleaseCounts, entries: list[dict] | None = None) -> None:
    """Call after every other file except the manifest is written: it lists them with their sha256
    (``entries``: layout.file_entries of the release, when the caller has them already)."""
    files = [e for e in (entries if entries is not None else file_entries(release_dir)) if e["path"] not in (CROISSANT, MANIFEST)]
    (release_dir / CROISSANT).write_text(dumps_json(croissant_document(config, counts, files)), encoding="utf-8")
