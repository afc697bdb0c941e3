"""Issue 14 part 3: how images are published ([image] publish_codec). Lossless images as PNG (pixel-exact,
deterministic, encoded once and then taken from the per-image cache) or as their own bytes; JPEG files always
as their own bytes; the same bytes in Parquet and the tars; one schema whatever the codec."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import struct
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.runtime import cache as cache_mod
from pipeline.stages import decode
from pipeline.build import build_release
from pipeline.config import ConfigError, load_config, validate_config
from pipeline.stages.decode import PUBLISH_CODECS, publish_as_original
from pipeline.records import ImageFacts
from tests.codeckit import with_codec
from tests.test_schema import mixed_raw, parquet_schemas

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """TIFF crops, a PNG, a JPEG (quality 90) and a palette PNG (converted to RGB)."""
    raw = tmp_path_factory.mktemp("codec") / "raw"
    mixed_raw(raw)
    return raw


@pytest.fixture(scope="module")
def releases(tmp_path_factory, raw, config) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("codec-releases")
    return {codec: build_release(raw, base / codec, with_codec(config, codec), workers=1).out_dir for codec in PUBLISH_CODECS}


def rows(release: Path) -> list[dict]:
    out = []
    for shard in sorted((release / "data").glob("*.parquet")):
        out += pq.read_table(shard, columns=["image", "image_id", "source_file", "pixel_sha256"]).to_pylist()
    return out


def tar_images(release: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted((release / "wds").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    out[member.name[: -len(".png")]] = tar.extractfile(member).read()
    return out


def pixels_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def png_chunk_types(data: bytes) -> list[bytes]:
    assert data.startswith(PNG_MAGIC)
    pos, types = len(PNG_MAGIC), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


def all_files(release: Path) -> dict[str, bytes]:
    return {p.relative_to(release).as_posix(): p.read_bytes() for p in sorted(release.rglob("*")) if p.is_file()}


# ---- the config key -------------------------------------------------------------------------------------


def test_the_shipped_config_publishes_png_and_the_key_is_validated(config):
    assert load_config().publish_codec == "png"
    doc = dict(config.raw, image=dict(config.raw["image"]))
    del doc["image"]["publish_codec"]
    assert validate_config(doc, "no key").publish_codec == "png"  # the default without the key
    for bad in ("webp", "PNG", "tiff-lzw", 1, True):
        doc["image"]["publish_codec"] = bad
        with pytest.raises(ConfigError) as err:
            validate_config(doc, "bad.toml")
        assert "bad.toml: key 'image.publish_codec'" in str(err.value)
        assert "'original', 'png'" in str(err.value)


def test_which_files_are_published_as_their_own_bytes():
    def facts(fmt: str, lossless: bool, as_is: bool) -> ImageFacts:
        return ImageFacts("x", "y", "0" * 64, 0, 288, 288, lossless, fmt, published_as_is=as_is)

    rgb_jpeg, tiff, grey_png = facts("JPEG", False, True), facts("TIFF", True, True), facts("PNG", False, False)
    assert [publish_as_original(rgb_jpeg, c) for c in PUBLISH_CODECS] == [True, True]  # never re-encoded
    assert [publish_as_original(tiff, c) for c in PUBLISH_CODECS] == [True, False]
    assert [publish_as_original(grey_png, c) for c in PUBLISH_CODECS] == [False, False]  # converted: always PNG


# ---- what a release holds -----------------------------------------------------------------------------------


def test_jpeg_sources_are_published_as_their_own_bytes_under_every_codec(releases, raw):
    jpeg = (raw / "eosinophil/as_jpeg.jpg").read_bytes()
    for codec, release in releases.items():
        [row] = [r for r in rows(release) if r["source_file"] == "eosinophil/as_jpeg.jpg"]
        assert row["image"]["bytes"] == jpeg, codec
        assert row["image"]["path"] == f"{row['image_id']}.jpg"
        assert tar_images(release)[row["image_id"]] == jpeg


def test_png_codec_is_pixel_exact_and_keeps_image_ids(releases, raw):
    by_codec = {codec: {r["source_file"]: r for r in rows(release)} for codec, release in releases.items()}
    assert set(by_codec["png"]) == set(by_codec["original"])
    for source, row in by_codec["png"].items():
        original = by_codec["original"][source]
        assert (row["image_id"], row["pixel_sha256"]) == (original["image_id"], original["pixel_sha256"])
        assert row["image_id"] == row["pixel_sha256"][:16]
        pixels = pixels_of(row["image"]["bytes"])
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == row["pixel_sha256"]
        assert np.array_equal(pixels, pixels_of((raw / source).read_bytes()))
        if source.endswith(".jpg"):
            continue
        assert row["image"]["bytes"].startswith(PNG_MAGIC) and row["image"]["path"] == f"{row['image_id']}.png"
        # deterministic PNGs: no time or text chunks
        assert set(png_chunk_types(row["image"]["bytes"])) <= {b"IHDR", b"IDAT", b"IEND"}
    tiffs = [s for s in by_codec["png"] if s.endswith(".tif")]
    assert tiffs and all(by_codec["original"][s]["image"]["bytes"] == (raw / s).read_bytes() for s in tiffs)
    png_bytes = sum(len(by_codec["png"][s]["image"]["bytes"]) for s in tiffs)
    assert png_bytes < 0.9 * sum(len(by_codec["original"][s]["image"]["bytes"]) for s in tiffs)


def test_both_formats_carry_the_very_same_bytes(releases):
    for codec, release in releases.items():
        tars = tar_images(release)
        parquet = {r["image_id"]: r["image"]["bytes"] for r in rows(release)}
        assert tars == parquet, codec


def test_one_schema_whatever_the_codec(releases):
    assert parquet_schemas(releases["png"]) == parquet_schemas(releases["original"])
    assert len(parquet_schemas(releases["png"])) == 1


# ---- determinism and the cache -------------------------------------------------------------------------


def test_png_release_is_byte_identical_when_rebuilt_and_a_warm_cache_does_not_encode(raw, releases, config, tmp_path, monkeypatch):
    calls: list[str] = []
    real = decode.encode_png

    def counting(data: bytes, facts: ImageFacts) -> bytes:
        calls.append(facts.relpath)
        return real(data, facts)

    monkeypatch.setattr(decode, "encode_png", counting)
    monkeypatch.setattr(cache_mod, "RACY_SECONDS", 0.0)  # the raw files are seconds old; trust their stat keys
    png = with_codec(config, "png")
    cache = tmp_path / "cache"
    cold = build_release(raw, tmp_path / "cold", png, workers=1, cache_dir=cache).out_dir
    published = len(rows(cold))
    jpegs = sum(1 for r in rows(cold) if r["source_file"].endswith(".jpg"))
    assert len(calls) == published - jpegs  # every lossless image encoded once, the JPEG never
    assert all_files(cold) == all_files(releases["png"])  # the same bytes as a build without a cache

    calls.clear()
    warm = build_release(raw, tmp_path / "warm", png, workers=1, cache_dir=cache)
    assert calls == []
    assert warm.work["from_cache"] == warm.work["images"]
    assert all_files(warm.out_dir) == all_files(cold)


def test_a_corrupted_encoded_image_in_the_cache_is_encoded_again(raw, releases, config, tmp_path, monkeypatch):
    png = with_codec(config, "png")
    cache = tmp_path / "cache"
    build_release(raw, tmp_path / "first", png, workers=1, cache_dir=cache)
    with sqlite3.connect(cache / cache_mod.DB_NAME) as db:
        (sha,) = db.execute("SELECT file_sha256 FROM encoded ORDER BY file_sha256 LIMIT 1").fetchone()
        db.execute("UPDATE encoded SET data = ? WHERE file_sha256 = ?", (PNG_MAGIC + b"rot", sha))
    calls: list[str] = []
    real = decode.encode_png
    monkeypatch.setattr(decode, "encode_png", lambda data, facts: calls.append(facts.file_sha256) or real(data, facts))
    report = build_release(raw, tmp_path / "second", png, workers=1, cache_dir=cache)
    assert calls == [sha]
    assert "per-image cache: 1 encoded image(s) failed their checksum and were encoded again" in report.warnings
    assert all_files(report.out_dir) == all_files(releases["png"])


def test_an_encoded_cache_that_cannot_be_written_only_costs_a_warning(tmp_path, config):
    store = cache_mod.EncodedCache(tmp_path / "cache", config.image_size, decode.ENCODING)
    store._db.close()
    store._db = sqlite3.connect(f"file:{tmp_path / 'cache' / cache_mod.DB_NAME}?mode=ro", uri=True, check_same_thread=False)
    store.put("a" * 64, PNG_MAGIC)
    store.put("b" * 64, PNG_MAGIC)
    assert store.get("a" * 64) is None and store.stored == 0
    [warning] = store.warnings()
    assert warning.startswith("per-image cache: encoded images could not be stored (OperationalError: attempt to write a readonly database")
    store.close()


def test_encode_png_is_deterministic_pixel_exact_and_keeps_the_icc_profile():
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels = np.random.default_rng(3).integers(0, 256, (288, 288, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "TIFF", compression="tiff_lzw", icc_profile=profile)
    facts, _ = decode.decode_image(buf.getvalue(), "m/x.tif", "m", (288, 288))
    first, second = decode.encode_png(buf.getvalue(), facts), decode.encode_png(buf.getvalue(), facts)
    assert first == second
    assert set(png_chunk_types(first)) == {b"IHDR", b"iCCP", b"IDAT", b"IEND"}  # no time or text chunks
    with Image.open(io.BytesIO(first)) as img:
        assert img.info["icc_profile"] == profile
        assert np.array_equal(np.asarray(img), pixels)
