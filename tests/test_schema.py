"""One schema whatever the sources: a release from TIFF, PNG and JPEG files has the columns of a TIFF-only one."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.build import build_release
from pipeline.release.layout import read_manifest
from tests.codeckit import with_codec
from tests.rawkit import crop, save, simple_raw, write_annotations

LABELS = ["myeloblast", "monocyte", "eosinophil"]


def tiff_only_raw(raw: Path) -> None:
    rows = simple_raw(raw, LABELS, per_class=6, annotate=False)
    write_annotations(raw, rows)


def mixed_raw(raw: Path) -> None:
    """TIFF crops plus a PNG, a JPEG and a palette PNG, and an annotation column that fills `extra` for some rows."""
    rows = simple_raw(raw, LABELS, per_class=6, seed=1, annotate=False)
    extra = [
        ("monocyte/as_png.png", crop(7001), {"format": "PNG"}),
        ("eosinophil/as_jpeg.jpg", crop(7002), {"format": "JPEG", "quality": 90}),
        ("myeloblast/as_palette.png", crop(7003), {"format": "PNG"}),
    ]
    for rel, pixels, kwargs in extra:
        path = raw / rel
        if "palette" in rel:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).convert("P").save(path, format="PNG")
        else:
            save(path, pixels, fmt=kwargs.pop("format"), **kwargs)
        rows.append({"image": rel, "label": rel.split("/")[0], "patient_id": f"X{len(rows)}", "dysplastic": "false"})
    for i, row in enumerate(rows):
        row["stain_batch"] = f"B{i % 2}" if i % 3 else ""
    write_annotations(raw, rows, columns=("image", "label", "patient_id", "annotator", "dysplastic", "stain_batch"))


@pytest.fixture(scope="module")
def releases(tmp_path_factory, config) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("schema")
    out = {}
    for name, make in (("tiff", tiff_only_raw), ("mixed", mixed_raw)):
        make(base / f"raw-{name}")
        # publish_codec "original": each source's own bytes, so the mixed release really mixes formats
        # (tests/test_codec.py checks the default, PNG, against the same raw)
        out[name] = build_release(base / f"raw-{name}", base / f"release-{name}", with_codec(config, "original"), workers=1).out_dir
    return out


def parquet_schemas(release: Path) -> set[str]:
    """Column names and Arrow types of every Parquet shard (one entry when they all agree)."""
    return {str([(f.name, str(f.type)) for f in pq.read_schema(p)]) for p in sorted((release / "data").glob("*.parquet"))}


def tar_fields(release: Path) -> set[str]:
    """The member suffixes (the columns webdataset and datasets make of them) of every tar."""
    fields = set()
    for path in sorted((release / "wds").glob("*.tar")):
        with tarfile.open(path) as tar:
            fields |= {m.name.split(".", 1)[1] for m in tar.getmembers()}
    return fields


def card_features(card: Path) -> list:
    return yaml.safe_load(card.read_text(encoding="utf-8").split("---\n")[1])["dataset_info"]["features"]


def image_formats(release: Path) -> set[str]:
    formats = set()
    for path in sorted((release / "data").glob("*.parquet")):
        for image in pq.read_table(path, columns=["image"]).column("image").to_pylist():
            formats.add(Image.open(io.BytesIO(image["bytes"])).format)
    return formats


def test_the_mixed_release_really_mixes_formats(releases):
    assert image_formats(releases["tiff"]) == {"TIFF"}
    assert image_formats(releases["mixed"]) == {"TIFF", "PNG", "JPEG"}  # JPEG as its original bytes, palette republished as PNG


def test_mixed_sources_give_the_columns_of_a_tiff_only_release(releases):
    tiff, mixed = releases["tiff"], releases["mixed"]
    assert len(parquet_schemas(tiff)) == 1 and parquet_schemas(tiff) == parquet_schemas(mixed)
    assert tar_fields(tiff) == tar_fields(mixed) == {"png", "cls", "json"}
    assert card_features(tiff / "README.md") == card_features(mixed / "README.md")
    assert card_features(tiff / "wds" / "README.md") == card_features(mixed / "wds" / "README.md")


def test_both_libraries_decode_every_image_without_release_specific_code(releases, tmp_path):
    """The same code reads both releases: webdataset's default decoders, and datasets with declared features and
    with features inferred from the tars alone (no card), as `load_dataset(REPO, data_dir="wds")` does."""
    import datasets
    import webdataset as wds

    features_by_release = {}
    for name, release in releases.items():
        manifest = read_manifest(release)
        splits = {s: info["num_examples"] for s, info in manifest["splits"].items() if info["num_examples"]}
        for split in splits:
            pattern = str(release / manifest["splits"][split]["webdataset"]["pattern"])
            samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil").to_tuple("png", "cls"))
            assert len(samples) == splits[split] and all(img.size == (288, 288) for img, _ in samples)
        bare = tmp_path / f"{name}-wds-without-card"
        shutil.copytree(release / "wds", bare, ignore=shutil.ignore_patterns("README.md"))
        features_by_release[name] = {}
        for kind, root, image_column in (("parquet", release, "image"), ("tars", release / "wds", "png"), ("tars inferred", bare, "png")):
            ds = datasets.load_dataset(str(root))
            assert {s: sum(1 for row in ds[s] if row[image_column].size == (288, 288)) for s in ds} == splits, (name, kind)
            features_by_release[name][kind] = {s: {k: type(v).__name__ for k, v in ds[s].features.items()} for s in ds}
    assert features_by_release["tiff"] == features_by_release["mixed"]
    assert features_by_release["tiff"]["tars inferred"]["train"]["png"] == "Image"


def test_extra_is_the_same_json_object_in_both_formats_and_never_null(releases):
    for release in releases.values():
        parquet = {}
        for path in sorted((release / "data").glob("*.parquet")):
            table = pq.read_table(path, columns=["image_id", "extra"])
            parquet.update(zip(table.column("image_id").to_pylist(), table.column("extra").to_pylist()))
        tars = {}
        for path in sorted((release / "wds").glob("*.tar")):
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(member).read())
                        tars[meta["image_id"]] = meta["extra"]
        assert set(parquet) == set(tars) and None not in parquet.values()
        assert {k: json.loads(v) for k, v in parquet.items()} == tars
    assert {"stain_batch": "B1"} in tars.values()  # the mixed release (built last) fills extra for some rows
