"""A build in which no input can be published fails (exit 1), writes nothing, and names the commonest reason;
every raw name or annotations.csv text the build prints is escaped (no forged lines, CI commands or terminal
escapes), while ledger.csv keeps the name as ingest recorded it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.build import BuildError, build_release
from pipeline.cli import app, shown
from pipeline.release.manifest import read_ledger
from pipeline.resources import default_config_path
from tests.rawkit import crop, save, simple_raw, write_annotations

LABELS = ["myeloblast", "monocyte"]


def _cli(*args: object):
    return CliRunner().invoke(app, ["build", *map(str, args), "--workers", "1", "--no-cache"])


def _only_raw_left(tmp_path: Path) -> None:
    """No release, no staging directory, nothing else beside the raw archive."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def _wrong_size_raw(raw: Path, size: tuple[int, int], per_class: int = 3) -> int:
    n = 0
    for label in LABELS:
        for k in range(per_class):
            save(raw / label / f"cell_{k}.tif", crop(n, size))
            n += 1
    return n


def test_all_images_of_one_wrong_size(tmp_path):
    raw = tmp_path / "raw"
    n = _wrong_size_raw(raw, (100, 120))
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1, result.output
    assert f"nothing to publish: all {n} images are 100x120; the config expects 288x288; no release written to {tmp_path / 'rel'}" in result.output
    assert "swapped" not in result.output
    assert "Traceback" not in result.output
    _only_raw_left(tmp_path)


def test_width_and_height_swapped_in_the_config(tmp_path):
    raw = tmp_path / "raw"
    n = _wrong_size_raw(raw, (360, 363))
    text = default_config_path().read_text(encoding="utf-8")
    assert "width = 288\nheight = 288\n" in text
    config = tmp_path / "swapped.toml"
    config.write_text(text.replace("width = 288\nheight = 288\n", "width = 363\nheight = 360\n"), encoding="utf-8")
    result = _cli(raw, "--out", tmp_path / "out" / "rel", "--config", config)
    assert result.exit_code == 1, result.output
    assert f"all {n} images are 360x363; the config expects 363x360: width and height look swapped in the config's image size" in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_all_inputs_invalid_for_several_reasons_names_the_commonest_first(tmp_path):
    raw = tmp_path / "raw"
    _wrong_size_raw(raw, (100, 120), per_class=2)  # 4 wrong size
    (raw / "myeloblast" / "broken_a.tif").write_bytes(b"II*\0garbage")
    (raw / "myeloblast" / "notes.txt").write_text("x")
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1, result.output
    message = result.output.split("nothing to publish: ", 1)[1]
    assert message.startswith("all 6 inputs are invalid: 4 x wrong size 100x120, expected 288x288 (e.g. monocyte/cell_0.tif); ")
    assert "1 x not an image file name (suffix '.txt'" in message and "(e.g. myeloblast/notes.txt)" in message
    assert "(e.g. myeloblast/broken_a.tif)" in message
    _only_raw_left(tmp_path)


def test_every_image_excluded(tmp_path):
    raw = tmp_path / "raw"
    rows = simple_raw(raw, LABELS, per_class=3)
    for row in rows:
        row["dysplastic"] = "true"
    write_annotations(raw, rows)
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1, result.output
    assert "nothing to publish: every image was excluded: 6 x dysplastic cell (annotations.csv dysplastic=true) (e.g. monocyte/cell_000.tif)" in result.output
    _only_raw_left(tmp_path)


def test_every_image_a_label_conflict(tmp_path):
    raw = tmp_path / "raw"
    save(raw / "myeloblast" / "a.tif", crop(5))
    save(raw / "monocyte" / "a.png", crop(5))  # the same pixels under another label: policy drop_all drops both
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1, result.output
    assert "nothing to publish: every image was dropped as a label conflict: 2 x label conflict (e.g. monocyte/a.png)" in result.output
    _only_raw_left(tmp_path)


def test_mixed_fates_are_counted_and_the_commonest_reason_leads(tmp_path):
    raw = tmp_path / "raw"
    rows = simple_raw(raw, LABELS, per_class=2)
    for row in rows[:3]:
        row["dysplastic"] = "true"
    save(raw / "monocyte" / "small.tif", crop(50, (64, 64)))
    rows.append({"image": "monocyte/small.tif", "label": "monocyte", "dysplastic": "false"})
    rows[3]["dysplastic"] = "true"
    write_annotations(raw, rows)
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1, result.output
    assert (
        "nothing to publish: none of the 5 inputs can be published (4 excluded, 1 invalid): "
        "4 x dysplastic cell (annotations.csv dysplastic=true) (e.g. monocyte/cell_000.tif); "
        "1 x wrong size 64x64, expected 288x288 (e.g. monocyte/small.tif)"
    ) in result.output
    _only_raw_left(tmp_path)


def test_raw_without_any_input(tmp_path):
    raw = tmp_path / "raw"
    (raw / "myeloblast").mkdir(parents=True)
    (raw / ".DS_Store").write_bytes(b"x")
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1, result.output
    assert "nothing to publish: RAW holds no input image (no file in a folder named after one of the config's 18 classes)" in result.output
    _only_raw_left(tmp_path)


def test_an_existing_release_survives_a_build_with_nothing_to_publish(tmp_path, config):
    raw = tmp_path / "raw"
    simple_raw(raw, LABELS, per_class=3)
    release = tmp_path / "rel"
    build_release(raw, release, config, workers=1)
    before = {p.relative_to(release): p.read_bytes() for p in release.rglob("*") if p.is_file()}
    bad = tmp_path / "bad"
    _wrong_size_raw(bad, (100, 120))
    with pytest.raises(BuildError, match=r"^nothing to publish: all 6 images are 100x120"):
        build_release(bad, release, config, workers=1, overwrite=True)
    assert {p.relative_to(release): p.read_bytes() for p in release.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "raw", "rel"]


# ---- what the build prints from the raw archive --------------------------------------------------------------

FORGED = "a\n::error::forged\x1b[31m.tif"  # a newline, a workflow command and an ESC sequence in one file name


def _lines_are_harmless(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output
    assert "::" not in output  # no GitHub Actions workflow command can start anywhere
    for line in output.splitlines():
        assert not line.lstrip().startswith(":"), line  # the text after a name's newline never starts a line


def test_names_and_annotation_text_are_printed_escaped_and_the_ledger_keeps_them(tmp_path):
    raw = tmp_path / "raw"
    rows = simple_raw(raw, LABELS, per_class=2)
    save(raw / "myeloblast" / FORGED, crop(40))
    save(raw / "monocyte" / "::warning title=x::small.tif", crop(41, (64, 64)))  # printable UTF-8, wrong size
    (raw / ".::error::\x1b]0;title\x07").write_bytes(b"litter")  # hidden: ignored and listed
    rows += [
        {"image": "myeloblast/" + FORGED.replace("\n", ""), "label": "myeloblast"},  # names no file
        {"image": "monocyte/::warning title=x::small.tif", "label": "monocyte"},
    ]
    write_annotations(raw, rows)
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 0, result.output
    _lines_are_harmless(result.output)

    ledger = {r["source_file"]: r for r in read_ledger(tmp_path / "rel" / "ledger.csv")}
    recorded = "myeloblast/a\\x0a::error::forged\\x1b[31m.tif"  # ingest's readable name: controls as escapes
    assert ledger[recorded]["fate"] == "invalid"
    assert ledger["monocyte/::warning title=x::small.tif"]["reason"] == "wrong size 64x64, expected 288x288"
    assert f"invalid: {shown(recorded)}: file name is not printable UTF-8" in result.output
    assert "invalid: myeloblast/a\\x0a:\\x3aerror:\\x3aforged\\x1b[31m.tif: " in result.output  # what the log shows
    assert "invalid: monocyte/:\\x3awarning title=x:\\x3asmall.tif: wrong size 64x64, expected 288x288" in result.output
    assert "ignored 1 non-input file(s): .:\\x3aerror:\\x3a\\x1b]0;title\\x07" in result.output


def test_strict_and_annotation_errors_are_printed_escaped(tmp_path):
    raw = tmp_path / "raw"
    simple_raw(raw, LABELS, per_class=2, annotate=False)
    save(raw / "myeloblast" / FORGED, crop(40))
    strict = _cli(raw, "--out", tmp_path / "rel", "--strict")
    assert strict.exit_code == 1, strict.output
    _lines_are_harmless(strict.output)
    assert "--strict: 1 invalid input(s); no release written:\n  myeloblast/a\\x0a:\\x3aerror:\\x3aforged\\x1b[31m.tif: " in strict.output

    (raw / "annotations.csv").write_text("image,::error::lab\x1b[2Jel\n", encoding="utf-8")
    table = _cli(raw, "--out", tmp_path / "rel")
    assert table.exit_code == 1, table.output
    _lines_are_harmless(table.output)
    assert "missing required column(s) 'label'" in table.output and ":\\x3aerror:\\x3alab" in table.output
    assert not (tmp_path / "rel").exists()


def test_shown_keeps_ingest_escapes_and_caps_length():
    assert shown("myeloblast/caf\\xe9.tif") == "myeloblast/caf\\xe9.tif"  # a readable name prints as the ledger has it
    assert shown("a\nb\u202e::c") == "a\\x0ab\\u202e:\\x3ac"
    assert shown(":\\:") == ":\\:"
    long = shown("x" * 5000)
    assert long == "x" * 400 + "...[4600 more characters]"
    assert os.linesep not in shown("\r\n".join(["l"] * 3))
