from pipeline.stages.ingest import ingest, normalise_relpath, parse_bool
from tests.rawkit import crop, save, simple_raw, write_annotations


def test_folder_layout_without_annotations(tmp_path, config):
    simple_raw(tmp_path, ["myeloblast", "monocyte"], per_class=3, annotate=False)
    result = ingest(tmp_path, config)
    assert [i.relpath for i in result.items] == [
        "monocyte/cell_000.tif", "monocyte/cell_001.tif", "monocyte/cell_002.tif",
        "myeloblast/cell_000.tif", "myeloblast/cell_001.tif", "myeloblast/cell_002.tif",
    ]
    assert {i.label for i in result.items} == {"myeloblast", "monocyte"}
    assert result.invalid == [] and not result.annotations_present


def test_annotations_are_authoritative_and_every_mismatch_is_named(tmp_path, config):
    rows = simple_raw(tmp_path, ["myeloblast", "monocyte"], per_class=3, annotate=False)
    rows[0]["label"] = "monocyte"  # disagrees with its folder
    rows[1]["dysplastic"] = "maybe"  # not a boolean
    rows[2]["label"] = "giant_cell"  # unknown label
    del rows[3]  # file without a row
    rows.append({"image": "monocyte/ghost.tif", "label": "monocyte", "dysplastic": "no"})  # row without a file
    rows.append({"image": "../outside.tif", "label": "monocyte", "dysplastic": "no"})  # escapes RAW
    rows[4]["dysplastic"] = "YES"  # monocyte/cell_002.tif, after the deletion above
    write_annotations(tmp_path, rows)
    result = ingest(tmp_path, config)
    reasons = {i.relpath: i.reason for i in result.invalid}
    assert "disagrees with folder 'myeloblast'" in reasons["myeloblast/cell_000.tif"]
    assert "annotations.csv line 3: dysplastic value 'maybe' is not a boolean" in reasons["myeloblast/cell_001.tif"]
    assert "unknown label 'giant_cell'" in reasons["myeloblast/cell_002.tif"]
    assert "no row for this file in annotations.csv" in reasons["monocyte/cell_000.tif"]
    assert "no such image file" in reasons["monocyte/ghost.tif"]
    assert reasons["annotations.csv line 8"] == "annotations.csv line 8: image path '../outside.tif' is absolute or leaves RAW"
    kept = {i.relpath: i for i in result.items}
    assert set(kept) == {"monocyte/cell_001.tif", "monocyte/cell_002.tif"}
    assert kept["monocyte/cell_002.tif"].dysplastic is True and kept["monocyte/cell_001.tif"].dysplastic is False


def test_unknown_folder_litter_and_non_images(tmp_path, config):
    simple_raw(tmp_path, ["myeloblast"], per_class=1, annotate=False)
    save(tmp_path / "myeloblasts" / "x.tif", crop(5))
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "myeloblast" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / "myeloblast" / "notes.txt").write_text("hello")
    result = ingest(tmp_path, config)
    reasons = {i.relpath: i.reason for i in result.invalid}
    assert reasons["myeloblasts/x.tif"] == "unknown label folder 'myeloblasts' (did you mean 'myeloblast'?)"
    assert "not an image file name" in reasons["myeloblast/notes.txt"]
    assert sorted(result.ignored) == [".DS_Store", "myeloblast/Thumbs.db"]
    assert [i.relpath for i in result.items] == ["myeloblast/cell_000.tif"]


def test_bom_crlf_and_quoted_commas(tmp_path, config):
    save(tmp_path / "monocyte" / "a.tif", crop(1))
    text = '\ufeffimage,label,patient_id,annotator,dysplastic,comment\r\nmonocyte/a.tif,monocyte,P1,E1,0,"big, round"\r\n'
    (tmp_path / "annotations.csv").write_bytes(text.encode("utf-8"))
    result = ingest(tmp_path, config)
    assert result.invalid == []
    (item,) = result.items
    assert item.patient_id == "P1" and item.dysplastic is False
    assert item.extra == (("comment", "big, round"),)


def test_helpers():
    assert parse_bool("Yes") is True and parse_bool("0") is False and parse_bool("x") is None
    assert normalise_relpath("a/./b.tif") == "a/b.tif"
    assert normalise_relpath("a/../../b.tif") is None
    assert normalise_relpath("/etc/passwd") is None
    assert normalise_relpath("C:\\x\\y.tif") is None
