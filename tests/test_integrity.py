"""Nothing lost: the ledger equation, the published-pixel check, and config errors that stop a build before any work."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.release import writer as release_writer
from pipeline.runtime import integrity
from pipeline.release import parquet
from pipeline.release import wds
from pipeline.build import build_release
from pipeline.cli import app
from pipeline.runtime.integrity import IntegrityError, check_nothing_lost, verify_published_pixels
from pipeline.release.manifest import read_ledger
from pipeline.records import LedgerEntry
from pipeline.resources import default_config_path
from tests.codeckit import with_codec
from tests.rawkit import crop, encode, save, simple_raw, write_annotations

LABELS = ["myeloblast", "monocyte"]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    rows = simple_raw(raw, LABELS, per_class=4)
    save(raw / "monocyte" / "copy.png", crop(0))  # same pixels as myeloblast/cell_000.tif: a label conflict
    (raw / "monocyte" / "broken.tif").write_bytes(encode(crop(9), "TIFF")[:3000])
    save(raw / "myeloblast" / "grey.png", crop(11)[..., 0])  # republished as PNG: its bytes differ from the file's
    rows[1]["dysplastic"] = "yes"
    rows += [
        {"image": "monocyte/copy.png", "label": "monocyte"},
        {"image": "monocyte/broken.tif", "label": "monocyte"},
        {"image": "myeloblast/grey.png", "label": "myeloblast"},
        {"image": "monocyte/ghost.tif", "label": "monocyte"},  # names no file
    ]
    write_annotations(raw, rows)
    return raw


def _entry(relpath: str, fate: str = "kept", kind: str = "file") -> LedgerEntry:
    return LedgerEntry(relpath, "myeloblast", fate, "", split="train" if fate == "kept" else None, image_id="0" * 16 if fate == "kept" else None, input_kind=kind)


def test_every_fate_is_counted_and_adds_up_to_the_raw_inputs(raw: Path, tmp_path: Path, config):
    report = build_release(raw, tmp_path / "rel", config, workers=1)
    ledger = read_ledger(tmp_path / "rel" / "ledger.csv")
    files = [r for r in ledger if r["input"] == "file"]
    on_disk = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file() and p.name != "annotations.csv")
    assert sorted(r["source_file"] for r in files) == on_disk  # each raw file exactly once
    assert report.balance.by_fate == {"kept": 7, "duplicate": 0, "label_conflict": 2, "excluded": 1, "invalid": 1}
    assert report.balance.raw_inputs == len(on_disk) == 11 and report.balance.rows_without_file == 1
    assert [r["source_file"] for r in ledger if r["input"] == "annotation_row"] == ["monocyte/ghost.tif"]

    result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / "cli"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (
        "ledger: 7 kept + 0 duplicate + 2 label_conflict + 1 excluded + 1 invalid = 11 raw inputs"
        " (and 1 annotations.csv row(s) naming no file, also invalid)"
    ) in result.output


@pytest.mark.parametrize(
    "ledger, raw_inputs, message",
    [
        ([_entry("a.tif")], ["a.tif", "b.tif"], r"raw inputs missing from the ledger: \['b.tif'\]"),
        ([_entry("a.tif"), _entry("a.tif", "duplicate")], ["a.tif"], r"in the ledger more than once: \['a.tif'\]"),
        ([_entry("a.tif"), _entry("z.tif", "invalid")], ["a.tif"], r"ledger rows for files ingest never found: \['z.tif'\]"),
        ([_entry("a.tif", "lost")], ["a.tif"], r"unknown fates \['lost'\]"),
        ([LedgerEntry("a.tif", "myeloblast", "kept", "")], ["a.tif"], r"kept without a split or image_id: \['a.tif'\]"),
    ],
    ids=["missing", "twice", "unknown file", "unknown fate", "kept unplaced"],
)
def test_nothing_lost_check_names_what_is_wrong(ledger, raw_inputs, message):
    with pytest.raises(IntegrityError, match=message):
        check_nothing_lost(ledger, raw_inputs)


def test_rows_naming_no_file_are_not_raw_inputs():
    balance = check_nothing_lost([_entry("a.tif"), _entry("annotations.csv line 3", "invalid", "annotation_row")], ["a.tif"])
    assert balance.line() == "1 kept + 0 duplicate + 0 label_conflict + 0 excluded + 0 invalid = 1 raw inputs (and 1 annotations.csv row(s) naming no file, also invalid)"


def _swap_bytes(monkeypatch, victim: str, replacement: bytes) -> None:
    """Fault injection: the image of `victim` is read wrong, so every copy of it (Parquet, tar) carries `replacement`."""
    real = release_writer.publishable_bytes

    def wrong(path: Path, facts, *codec_and_store):
        return replacement if path.as_posix().endswith(victim) else real(path, facts, *codec_and_store)

    monkeypatch.setattr(release_writer, "publishable_bytes", wrong)


def _corrupt_parquet(monkeypatch, victim: str, replacement: bytes) -> None:
    """Fault injection: the Parquet writer stores `replacement` for `victim` (the tar shards keep the right bytes)."""
    real = parquet._table

    def corrupting(rows, schema, *rest):
        return real([(r, replacement if r.source_file == victim else data) for r, data in rows], schema, *rest)

    monkeypatch.setattr(parquet, "_table", corrupting)


def _corrupt_tar(monkeypatch, victim: str, replacement: bytes) -> None:
    """Fault injection: the WebDataset writer stores `replacement` as the image of `victim`."""
    real = wds.sample_members

    def corrupting(record, image):
        return real(record, replacement if record.source_file == victim else image)

    monkeypatch.setattr(wds, "sample_members", corrupting)


VICTIM = "myeloblast/cell_002.tif"
OTHER_PIXELS = encode(crop(12345), "PNG")


@pytest.mark.parametrize(
    "inject, replacement, messages",
    [
        (_swap_bytes, OTHER_PIXELS, [r"myeloblast/cell_002\.tif: published pixels sha256 [0-9a-f]{16}\.\. \(column [0-9a-f]{16}\.\.\) != ingest [0-9a-f]{16}\.\."]),
        (_corrupt_parquet, OTHER_PIXELS, [r"myeloblast/cell_002\.tif: published pixels sha256", r"myeloblast/cell_002\.tif: WebDataset image bytes differ from the verified Parquet bytes"]),
        (_corrupt_parquet, b"not an image", [r"myeloblast/cell_002\.tif: published bytes do not decode \(UnidentifiedImageError"]),
        (_corrupt_tar, OTHER_PIXELS, [r"\(1 problem\(s\)\)", r"myeloblast/cell_002\.tif: WebDataset image bytes differ from the verified Parquet bytes"]),
    ],
    ids=["read wrong", "Parquet other pixels", "Parquet undecodable", "tar other bytes"],
)
def test_published_pixels_are_checked_before_the_release_appears(raw, tmp_path, config, monkeypatch, inject, replacement, messages):
    inject(monkeypatch, VICTIM, replacement)
    with pytest.raises(IntegrityError) as failed:
        build_release(raw, tmp_path / "rel", config, workers=1)
    for message in messages:
        assert re.search(message, str(failed.value)), str(failed.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no release, no staging left behind


def test_cli_reports_a_failed_verification_with_exit_1(raw, tmp_path, monkeypatch):
    _swap_bytes(monkeypatch, "monocyte/cell_001.tif", encode(crop(777), "PNG"))
    result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel"), "--workers", "1"])
    assert result.exit_code == 1
    assert "published-pixel verification failed (1 problem(s)); nothing published" in result.output
    assert "monocyte/cell_001.tif: published pixels sha256" in result.output
    assert not (tmp_path / "rel").exists()


def test_verify_counts_every_published_image(raw, tmp_path, config):
    report = build_release(raw, tmp_path / "rel", config, workers=2)
    kept = {e.relpath: e for e in report.ledger if e.fate == "kept"}
    ledger = {r["source_file"]: r for r in read_ledger(tmp_path / "rel" / "ledger.csv")}
    expected = {}
    for shard in (tmp_path / "rel" / "data").glob("*.parquet"):
        for row in pq.read_table(shard, columns=["source_file", "pixel_sha256"]).to_pylist():
            expected[row["source_file"]] = row["pixel_sha256"]
    assert set(expected) == set(kept) == {s for s, r in ledger.items() if r["fate"] == "kept"}
    assert verify_published_pixels(tmp_path / "rel", expected, (288, 288)) == len(kept) == report.balance.by_fate["kept"]
    victim = sorted(expected)[0]
    real = expected[victim]
    expected[victim] = "0" * 64
    with pytest.raises(IntegrityError, match=f"{victim}: published pixels sha256"):
        verify_published_pixels(tmp_path / "rel", expected, (288, 288))
    del expected[victim]
    with pytest.raises(IntegrityError, match=f"{victim}: in the shards but not a kept image"):
        verify_published_pixels(tmp_path / "rel", expected, (288, 288))
    expected[victim], expected["monocyte/elsewhere.tif"] = real, "1" * 64
    with pytest.raises(IntegrityError, match="monocyte/elsewhere.tif: kept but missing from the shards"):
        verify_published_pixels(tmp_path / "rel", expected, (288, 288))


def _config_text() -> str:
    return default_config_path().read_text(encoding="utf-8")


CONFIG_CASES = [
    ("unknown key", lambda t: 'colour = "red"\n' + t, r"key 'colour': unknown key; allowed here: card, citation, classes"),
    ("unknown nested key", lambda t: t.replace("[dedup]\n", "[dedup]\nthreshold = 3\n"), r"key 'dedup.threshold': unknown key; allowed here: conflict_policy, lookalike_threshold, phash_threshold"),
    ("wrong type", lambda t: t.replace("phash_threshold = 4", 'phash_threshold = "4"'), r"key 'dedup.phash_threshold': '4' is not of type 'integer'"),
    ("wrong type (size limit)", lambda t: t.replace("max_file_bytes = 16_000_000", 'max_file_bytes = "16MB"'), r"key 'image.max_file_bytes': '16MB' is not of type 'integer'"),
    ("duplicate classes", lambda t: t + '\n[[classes]]\nlabel = "myeloblast"\n', r"key 'classes': duplicate labels \['myeloblast'\]"),
    ("fractions not summing to 1", lambda t: t.replace("test = 0.2", "test = 0.3"), r"key 'split': train \+ validation \+ test must sum to 1, got 1.1"),
    ("version not semver", lambda t: t.replace('version = "1.0.0"', 'version = "1.0"'), r"key 'version': '1.0' does not match"),
    ("missing key", lambda t: t.replace('license = "cc-by-4.0"\n', ""), r"key 'license': required key is missing"),
    ("excluded label not a class", lambda t: t.replace("exclude_labels = []", 'exclude_labels = ["giant_cell"]'), r"key 'exclude_labels': not in classes: \['giant_cell'\]"),
    ("not TOML", lambda t: 'name = "again"\n' + t, r"not valid TOML: Cannot overwrite a value \(at line \d+, column \d+\)"),
]


@pytest.mark.parametrize("mutate, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_errors_name_the_key_before_any_work(mutate, message, tmp_path: Path):
    config = tmp_path / "release.toml"
    config.write_text(mutate(_config_text()), encoding="utf-8")
    for extra in ([], ["--strict"]):
        # RAW does not exist: the config is judged first, so the answer is about the config, not about RAW
        result = CliRunner().invoke(app, ["build", str(tmp_path / "no-raw"), "--out", str(tmp_path / "rel"), "--config", str(config), *extra])
        assert result.exit_code == 2, result.output
        assert re.search(message, result.output), result.output
        assert "RAW directory not found" not in result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["release.toml"]


def test_nothing_lost_on_a_synthetic_archive_with_hostile_additions(tmp_path: Path, config):
    from pipeline.synth.generator import synthesize

    raw = tmp_path / "raw"
    synthesize(raw, config=config, scale=0.001, seed=3, workers=1)
    some = sorted(raw.glob("myeloblast/*.tif"))[0]
    (raw / "monocyte" / "cut.tif").write_bytes(some.read_bytes()[:20_000])  # truncated
    bad_name = Path(os.fsdecode(os.fsencode(str(raw / "monocyte")) + b"/caf\xe9.tif"))
    bad_name.write_bytes(some.read_bytes())  # same pixels, but an unprintable name: invalid, not a duplicate
    save(tmp_path / "outside.tif", crop(5))
    os.symlink(tmp_path / "outside.tif", raw / "monocyte" / "link.tif")
    with open(raw / "annotations.csv", "a", encoding="utf-8") as fh:
        fh.write("monocyte/cut.tif,monocyte,P9,E1,false\nmonocyte/ghost.tif,monocyte,P9,E1,false\n")

    report = build_release(raw, tmp_path / "rel", config, workers=1)
    ledger = read_ledger(tmp_path / "rel" / "ledger.csv")
    files = [r["source_file"] for r in ledger if r["input"] == "file"]
    on_disk = [p for p in raw.rglob("*") if (p.is_file() or p.is_symlink()) and p.parent != raw]
    assert len(files) == len(set(files)) == len(on_disk) == report.balance.raw_inputs
    assert sum(report.balance.by_fate.values()) == report.balance.raw_inputs and report.balance.rows_without_file == 1
    fates = {r["source_file"]: r["fate"] for r in ledger}
    assert fates["monocyte/cut.tif"] == fates["monocyte/caf\\xe9.tif"] == fates["monocyte/link.tif"] == "invalid"
    assert report.timings["verify"] > 0 and report.balance.by_fate["kept"] == sum(1 for f in fates.values() if f == "kept")


def _published(release: Path) -> list[dict]:
    rows = []
    for shard in sorted((release / "data").glob("*.parquet")):
        rows += pq.read_table(shard, columns=["image", "source_file", "pixel_sha256"]).to_pylist()
    return rows


def test_bytes_equal_to_the_decoded_file_are_not_decoded_again(raw, tmp_path, config, monkeypatch):
    """The build decodes again only re-encoded images and the fixed spot-check sample; the rest are proven
    by their bytes' sha256 (equal to the file ingest decoded)."""
    decoded: list[str] = []
    real = integrity.published_pixel_sha256

    def counting(data: bytes, size):
        decoded.append(hashlib.sha256(data).hexdigest())
        return real(data, size)

    monkeypatch.setattr(integrity, "published_pixel_sha256", counting)
    build_release(raw, tmp_path / "rel", with_codec(config, "original"), workers=2)
    rows = _published(tmp_path / "rel")
    reencoded = [r for r in rows if r["image"]["path"].endswith(".png")]
    assert [r["source_file"] for r in reencoded] == ["myeloblast/grey.png"]
    expected = [r for r in rows if r in reencoded or integrity.spot_checked(r["pixel_sha256"])]
    assert sorted(decoded) == sorted(hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in expected)


def test_spot_check_decodes_a_fixed_sample_and_catches_a_lie_there(raw, tmp_path, config):
    """An expectation that lies about the pixels of trusted bytes: a spot-checked image is decoded, and the
    message shows its real pixel hash; any other is taken on its bytes (only the column disagrees)."""
    build_release(raw, tmp_path / "rel", config, workers=1)
    rows = _published(tmp_path / "rel")
    honest = {r["source_file"]: integrity.Expected(r["pixel_sha256"], hashlib.sha256(r["image"]["bytes"]).hexdigest()) for r in rows}
    victim = sorted(honest)[0]
    real = honest[victim].pixel_sha256
    for lie, spot in (("0" * 64, True), ("00000040" + "0" * 56, True), ("00000001" + "0" * 56, False)):
        assert integrity.spot_checked(lie) == spot
        expected = dict(honest) | {victim: integrity.Expected(lie, honest[victim].decoded_file_sha256)}
        checker = integrity.ShardChecker(expected, (288, 288), threads=2)
        for shard in sorted((tmp_path / "rel" / "data").glob("*.parquet")):
            checker.parquet(shard)
        shown = real if spot else lie  # decoded pixels, or the expectation taken on the bytes' word
        with pytest.raises(IntegrityError, match=f"{victim}: published pixels sha256 {shown[:16]}\\.\\. \\(column {real[:16]}"):
            checker.result()
