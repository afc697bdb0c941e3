"""The bad-input catalogue: each case builds a tiny archive with one hostile input and checks the answer.

For every case: the CLI build (no --strict) exits 0 and names the input and the reason; ledger.csv has the
expected fate and reason for it and stays valid UTF-8; the nothing-lost equation is printed and adds up;
and `--strict` exits 1 writing nothing when the input is invalid, 0 when it is not. README.md's table
"Bad input: what the tool does" lists every case id (test_readme_lists_every_case).
"""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.runtime.integrity import published_pixel_sha256
from pipeline.release.manifest import read_ledger
from pipeline.resources import default_config_path
from tests import hostilekit as hk
from tests.rawkit import crop, encode, save, write_annotations

GOOD = ("myeloblast/good_0.tif", "monocyte/good_1.tif")
COLUMNS = ("image", "label", "patient_id", "annotator", "dysplastic")


@dataclass(frozen=True)
class Case:
    id: str  # the row of README.md's table
    plant: Callable[[Path], None]  # adds the hostile input to a raw archive holding the GOOD images
    source: str | None  # the ledger's source_file for it; None when it is not a raw input (ignored, skipped)
    fate: str | None  # expected ledger fate; None when no ledger row is expected
    reason: str  # regex the ledger reason and the CLI output must match ("" for none)
    annotated: bool = False  # the archive has an annotations.csv listing the GOOD images
    output: str | None = None  # regex the CLI output must match when there is no ledger row


def _rows(extra: list[dict] | None = None) -> list[dict]:
    rows = [{"image": rel, "label": rel.split("/")[0], "patient_id": f"P{i}", "annotator": "E1", "dysplastic": "false"} for i, rel in enumerate(GOOD)]
    return rows + (extra or [])


def _put(rel: str, data: bytes) -> Callable[[Path], None]:
    def plant(raw: Path) -> None:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)

    return plant


def _annotate(*extra: dict, columns=COLUMNS) -> Callable[[Path], None]:
    return lambda raw: write_annotations(raw, _rows(list(extra)), columns)


def _annotated_file(rel: str, data: bytes, **row) -> Callable[[Path], None]:
    """A file plus its own annotations.csv row (row values override the defaults)."""

    def plant(raw: Path) -> None:
        _put(rel, data)(raw)
        write_annotations(raw, _rows([{"image": rel, "label": rel.split("/")[0], "dysplastic": "false", **row}]))

    return plant


def _csv_text(text: str) -> Callable[[Path], None]:
    return lambda raw: (raw / "annotations.csv").write_bytes(text.encode("utf-8"))


def _symlink(rel: str, target: Callable[[Path], Path]) -> Callable[[Path], None]:
    def plant(raw: Path) -> None:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target(raw), raw / rel)

    return plant


def _outside_image(raw: Path) -> Path:
    return save(raw.parent / "outside" / "secret.tif", crop(666))


def _outside_dir(raw: Path) -> Path:
    _outside_image(raw)
    return raw.parent / "outside"


def _fsname(raw: Path, rel: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(str(raw)) + b"/" + rel))


def _non_utf8_name(raw: Path) -> None:
    _fsname(raw, b"myeloblast").mkdir(exist_ok=True)
    _fsname(raw, b"myeloblast/caf\xe9.tif").write_bytes(encode(crop(7), "TIFF"))


def _sparse(rel: str, size: int) -> Callable[[Path], None]:
    def plant(raw: Path) -> None:
        with open(raw / rel, "wb") as fh:  # a hole, no disk used: reading it would take minutes and gigabytes
            fh.truncate(size)

    return plant


def _fifo(raw: Path) -> None:
    os.mkfifo(raw / "myeloblast" / "pipe.tif")  # opening it for reading would block forever


def _both(*plants: Callable[[Path], None]) -> Callable[[Path], None]:
    def plant(raw: Path) -> None:
        for p in plants:
            p(raw)

    return plant


PX = crop(1)
U16 = PX.astype(np.uint16) * 257

IMAGE_CASES = [
    Case("truncated TIFF", _put("myeloblast/bad.tif", encode(PX, "TIFF")[:5000]), "myeloblast/bad.tif", "invalid", r"^corrupt or truncated image: OSError: image file is truncated"),
    Case("truncated PNG", _put("myeloblast/bad.png", encode(PX, "PNG")[:5000]), "myeloblast/bad.png", "invalid", r"^corrupt or truncated image"),
    Case("corrupt TIFF header", _put("myeloblast/bad.tif", b"II*\0garbage"), "myeloblast/bad.tif", "invalid", r"^corrupt or truncated TIFF file: its header cannot be parsed$"),
    Case("zero bytes", _put("myeloblast/empty.tif", b""), "myeloblast/empty.tif", "invalid", r"^empty file \(0 bytes\)$"),
    Case("not an image", _put("myeloblast/notes.tif", b"scanner log: focus ok\n"), "myeloblast/notes.tif", "invalid", r"^not a TIFF, PNG or JPEG image"),
    Case("other image format (BMP)", _put("myeloblast/bmp.tif", encode(PX, "BMP")), "myeloblast/bmp.tif", "invalid", r"^not a TIFF, PNG or JPEG image"),
    Case("wrong extension (PNG named .tif)", _put("myeloblast/png.tif", encode(crop(2), "PNG")), "myeloblast/png.tif", "kept", r"^$"),
    Case("wrong extension (JPEG named .png)", _put("myeloblast/jpeg.png", encode(crop(3), "JPEG")), "myeloblast/jpeg.png", "kept", r"^$"),
    Case("wrong size", _put("myeloblast/small.tif", encode(crop(2, (100, 120)), "TIFF")), "myeloblast/small.tif", "invalid", r"^wrong size 100x120, expected 288x288$"),
    Case("grayscale", _put("myeloblast/grey.tif", hk.encode(Image.fromarray(crop(2)).convert("L"), "TIFF")), "myeloblast/grey.tif", "kept", r"^$"),
    Case("palette", _put("myeloblast/pal.png", hk.encode(Image.fromarray(crop(2)).convert("P"), "PNG")), "myeloblast/pal.png", "kept", r"^$"),
    Case("opaque RGBA", _put("myeloblast/rgba.png", hk.transparent(crop(2), 255)), "myeloblast/rgba.png", "kept", r"^$"),
    Case("transparent RGBA", _put("myeloblast/rgba.png", hk.transparent(crop(2), 0)), "myeloblast/rgba.png", "invalid", r"^RGBA image with transparent pixels: cannot convert to RGB without loss$"),
    Case("CMYK", _put("myeloblast/cmyk.tif", hk.encode(Image.fromarray(PX).convert("CMYK"), "TIFF")), "myeloblast/cmyk.tif", "invalid", r"^unsupported image mode 'CMYK'"),
    Case("16-bit RGB PNG", _put("myeloblast/deep.png", hk.png_16bit(U16)), "myeloblast/deep.png", "invalid", r"^16 bits per sample \(PNG, mode RGB\): expected 8-bit"),
    Case("16-bit RGB TIFF", _put("myeloblast/deep.tif", hk.tiff_16bit_rgb(U16)), "myeloblast/deep.tif", "invalid", r"^16 bits per sample \(TIFF, mode RGB\): expected 8-bit"),
    Case("16-bit grey PNG", _put("myeloblast/deep.png", hk.png_16bit(U16[..., 0])), "myeloblast/deep.png", "invalid", r"^16 bits per sample \(PNG, mode I;16"),
    Case("multi-page TIFF", _put("myeloblast/pages.tif", hk.multipage_tiff([crop(2), crop(3)])), "myeloblast/pages.tif", "invalid", r"^multi-page image \(2 frames\): expected one image per file$"),
    Case("EXIF orientation (TIFF)", _put("myeloblast/rot.tif", hk.with_orientation(crop(2), "TIFF", 6)), "myeloblast/rot.tif", "invalid", r"^EXIF orientation 6 set: the stored pixels are not upright"),
    Case("EXIF orientation (JPEG)", _put("myeloblast/rot.jpg", hk.with_orientation(crop(2), "JPEG", 8)), "myeloblast/rot.jpg", "invalid", r"^EXIF orientation 8 set"),
    Case("EXIF orientation 1 (upright)", _put("myeloblast/up.tif", hk.with_orientation(crop(2), "TIFF", 1)), "myeloblast/up.tif", "kept", r"^$"),
    Case("decompression bomb", _put("myeloblast/bomb.png", hk.png_declaring(20_000, 20_000)), "myeloblast/bomb.png", "invalid", r"^decompression bomb refused: Image size \(400000000 pixels\) exceeds limit"),
    Case("decompression bomb (warning range)", _put("myeloblast/bomb.png", hk.png_declaring(10_000, 10_000)), "myeloblast/bomb.png", "invalid", r"^decompression bomb refused: Image size \(100000000 pixels\)"),
    Case("huge file", _sparse("myeloblast/huge.tif", 8 * 1024**3), "myeloblast/huge.tif", "invalid", r"^file is 8,589,934,592 bytes, above the limit of 16,000,000 \(config image.max_file_bytes\): not read$"),
]

FILE_CASES = [
    Case("unknown label folder", _put("myeloblasts/x.tif", encode(crop(2), "TIFF")), "myeloblasts/x.tif", "invalid", r"^unknown label folder 'myeloblasts' \(did you mean 'myeloblast'\?\)$"),
    Case("empty class folder", lambda raw: (raw / "eosinophil").mkdir(), None, None, "", output=r"warning: folder eosinophil/ has no input files"),
    Case("hidden files and OS litter", _both(_put(".DS_Store", b"\0"), _put("myeloblast/Thumbs.db", b"\0"), _put("myeloblast/.hidden.tif", encode(crop(2), "TIFF"))), None, None, "",
         output=r"ignored 3 non-input file\(s\): \.DS_Store, myeloblast/\.hidden\.tif, myeloblast/Thumbs\.db"),
    Case("__MACOSX", _both(_put("__MACOSX/myeloblast/._good_0.tif", b"\0\5\26\7"), _put("myeloblast/__MACOSX/._good_0.tif", b"\0\5\26\7")), None, None, "",
         output=r"ignored 2 non-input file\(s\): __MACOSX/, myeloblast/__MACOSX/"),
    Case("image outside any class folder", _put("stray.tif", encode(crop(2), "TIFF")), "stray.tif", "invalid", r"^image directly under RAW, not in a class folder$"),
    Case("non-image file in a class folder", _put("myeloblast/notes.txt", b"hello"), "myeloblast/notes.txt", "invalid", r"^not an image file name \(suffix '\.txt'"),
    Case("symlink inside RAW", _symlink("myeloblast/link.tif", lambda raw: raw / GOOD[0]), "myeloblast/link.tif", "duplicate", r"identical pixels$"),
    Case("symlink pointing outside RAW", _symlink("myeloblast/link.tif", _outside_image), "myeloblast/link.tif", "invalid", r"^symbolic link pointing outside RAW: not read$"),
    Case("symlinked directory", _symlink("myeloblast/more", _outside_dir), "myeloblast/more", "invalid", r"^symbolic link to a directory: not followed"),
    Case("broken symlink", _symlink("myeloblast/gone.tif", lambda raw: raw / "nowhere.tif"), "myeloblast/gone.tif", "invalid", r"^not a regular file"),
    Case("FIFO named like an image", _fifo, "myeloblast/pipe.tif", "invalid", r"^not a regular file \(broken link, FIFO or device\): not read$"),
    Case("non-UTF-8 file name", _non_utf8_name, "myeloblast/caf\\xe9.tif", "invalid", r"^file name is not printable UTF-8 or holds a backslash \(shown with backslash escapes\); rename the file$"),
    Case("control characters in a file name", _put("myeloblast/evil\x1b[31m\u202e.tif", encode(crop(2), "TIFF")), "myeloblast/evil\\x1b[31m\\u202e.tif", "invalid", r"^file name is not printable UTF-8"),
    Case("backslash in a file name", _put("myeloblast/caf\\xe9.tif", encode(crop(2), "TIFF")), "myeloblast/caf\\x5cxe9.tif", "invalid", r"^file name is not printable UTF-8 or holds a backslash"),
    Case("Rich markup in a file name", _put("myeloblast/[bold]x[/].txt", b"x"), "myeloblast/[bold]x[/].txt", "invalid", r"^not an image file name"),
    Case("Unicode file name", _put("myeloblast/Zelle_ä_細胞, \"1\".tif", encode(crop(2), "TIFF")), "myeloblast/Zelle_ä_細胞, \"1\".tif", "kept", r"^$"),
    Case("names differing only by case", _both(_put("myeloblast/Cell.tif", encode(crop(2), "TIFF")), _put("myeloblast/cell.tif", encode(crop(3), "TIFF"))), "myeloblast/Cell.tif", "kept", r"^$"),
]

ANNOTATION_CASES = [
    Case("annotations: BOM and CRLF", _csv_text("\ufeffimage,label,patient_id\r\n" + "".join(f"{r},{r.split('/')[0]},P{i}\r\n" for i, r in enumerate(GOOD))), GOOD[0], "kept", r"^$", True),
    Case("annotations: quoted commas and line breaks", _both(_put("myeloblast/q.tif", encode(crop(2), "TIFF")), _csv_text(
        "image,label,comment\n" + "".join(f"{r},{r.split('/')[0]},\"big, round\nnucleus\"\n" for r in GOOD) + "myeloblast/q.tif,myeloblst,x\n")),
        "myeloblast/q.tif", "invalid", r"^annotations\.csv line 6: unknown label 'myeloblst' \(did you mean 'myeloblast'\?\)", True),
    Case("annotations: empty label", _annotated_file("myeloblast/e.tif", encode(crop(2), "TIFF"), label=""), "myeloblast/e.tif", "invalid", r"^annotations\.csv line 4: empty label$", True),
    Case("annotations: empty image path", _annotate({"image": "", "label": "myeloblast"}), "annotations.csv line 4", "invalid", r"^annotations\.csv line 4: empty image path$", True),
    Case("annotations: empty dysplastic and patient cells", _annotated_file("myeloblast/e.tif", encode(crop(2), "TIFF"), dysplastic="", patient_id=""), "myeloblast/e.tif", "kept", r"^$", True),
    Case("annotations: row of empty cells", _csv_text("image,label\n,\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in GOOD) + ",,,\n"), GOOD[1], "kept", r"^$", True),
    Case("annotations: unknown label", _annotated_file("myeloblast/u.tif", encode(crop(2), "TIFF"), label="giant_cell"), "myeloblast/u.tif", "invalid", r"^annotations\.csv line 4: unknown label 'giant_cell' \(not one of the config's 18 classes\)$", True),
    Case("annotations: ../ path", _annotate({"image": "../outside/secret.tif", "label": "myeloblast"}), "annotations.csv line 4", "invalid", r"^annotations\.csv line 4: image path '\.\./outside/secret\.tif' is absolute or leaves RAW$", True),
    Case("annotations: absolute path", _annotate({"image": "/etc/passwd", "label": "myeloblast"}), "annotations.csv line 4", "invalid", r"is absolute or leaves RAW$", True),
    Case("annotations: Windows absolute path", _annotate({"image": "C:\\raw\\x.tif", "label": "myeloblast"}), "annotations.csv line 4", "invalid", r"is absolute or leaves RAW$", True),
    Case("annotations: non-boolean dysplastic", _annotated_file("myeloblast/d.tif", encode(crop(2), "TIFF"), dysplastic="maybe"), "myeloblast/d.tif", "invalid", r"^annotations\.csv line 4: dysplastic value 'maybe' is not a boolean", True),
    Case("annotations: duplicate rows with different labels", _annotate({"image": GOOD[0], "label": "monocyte"}), GOOD[0], "invalid",
         r"^annotations\.csv lines 2, 4 list this file with different values \(annotator: 'E1' vs None; label: 'myeloblast' vs 'monocyte'; patient_id: 'P0' vs None\)$", True),
    Case("annotations: same file listed twice", _annotate(_rows()[0]), GOOD[0], "kept", r"^$", True),
    Case("annotations: same file listed twice, spelt differently", _annotate({**_rows()[0], "image": "myeloblast/./good_0.tif"}), GOOD[0], "kept", r"^$", True),
    Case("annotations: row without a file", _annotate({"image": "monocyte/ghost.tif", "label": "monocyte"}), "monocyte/ghost.tif", "invalid", r"^annotations\.csv line 4: no such image file under RAW$", True),
    Case("annotations: path differing by case", _both(_put("monocyte/Cell.tif", encode(crop(2), "TIFF")), _annotate({"image": "monocyte/cell.tif", "label": "monocyte"})),
         "monocyte/cell.tif", "invalid", r"^annotations\.csv line 4: no such image file under RAW \(names are case-sensitive: did you mean 'monocyte/Cell\.tif'\?\)$", True),
    Case("annotations: NFD name, NFC row", _both(_put(unicodedata.normalize("NFD", "monocyte/zelle_ä.tif"), encode(crop(2), "TIFF")), _annotate({"image": unicodedata.normalize("NFC", "monocyte/zelle_ä.tif"), "label": "monocyte"})),
         unicodedata.normalize("NFD", "monocyte/zelle_ä.tif"), "kept", r"^$", True),
    Case("annotations: file without a row", _put("monocyte/norow.tif", encode(crop(2), "TIFF")), "monocyte/norow.tif", "invalid", r"^no row for this file in annotations\.csv$", True),
    Case("annotations: label disagrees with folder", _annotated_file("monocyte/m.tif", encode(crop(2), "TIFF"), label="myeloblast"), "monocyte/m.tif", "invalid", r"^annotations\.csv line 4: label 'myeloblast' disagrees with folder 'monocyte'$", True),
    Case("annotations: unquoted comma (more cells than columns)", _both(_put("myeloblast/c.tif", encode(crop(2), "TIFF")), _csv_text("image,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in GOOD) + "myeloblast/c.tif,myeloblast,big, round\n")),
         "myeloblast/c.tif", "invalid", r"^annotations\.csv line 4: cells outside the named columns \('big', 'round'\); quote values that contain commas$", True),
]

CASES = IMAGE_CASES + FILE_CASES + ANNOTATION_CASES


def _base(raw: Path, annotated: bool) -> None:
    for i, rel in enumerate(GOOD):
        save(raw / rel, crop(100 + i))
    if annotated:
        write_annotations(raw, _rows())


def _cli(*args: str):
    # no per-image cache: every case decodes its files afresh, and a case costs no cache database
    return CliRunner().invoke(app, ["build", *map(str, args), "--workers", "1", "--no-cache"])


def _ledger_row(release: Path, source: str) -> dict[str, str]:
    rows = [r for r in read_ledger(release / "ledger.csv") if r["source_file"] == source]
    assert len(rows) == 1, f"{source!r} is in the ledger {len(rows)} times"
    return rows[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, case.annotated)
    case.plant(raw)

    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 0, result.output
    release = tmp_path / "rel"
    ledger_bytes = (release / "ledger.csv").read_bytes()
    ledger_bytes.decode("utf-8", errors="strict")  # every name is readable UTF-8, whatever the file system held
    json.loads((release / "manifest.json").read_bytes().decode("utf-8", errors="strict"))
    ledger = read_ledger(release / "ledger.csv")
    files = [r for r in ledger if r["input"] == "file"]
    fates = {f: sum(1 for r in files if r["fate"] == f) for f in ("kept", "duplicate", "label_conflict", "excluded", "invalid")}
    assert f"ledger: {fates['kept']} kept + {fates['duplicate']} duplicate + {fates['label_conflict']} label_conflict + {fates['excluded']} excluded + {fates['invalid']} invalid = {len(files)} raw inputs" in result.output

    if case.source is not None:
        row = _ledger_row(release, case.source)
        assert row["fate"] == case.fate, row
        assert re.search(case.reason, row["reason"]), row["reason"]
        if case.fate == "invalid":
            assert f"invalid: {case.source}: {row['reason']}" in result.output
    else:
        assert len(files) == len(GOOD) and {r["source_file"] for r in files} == set(GOOD)
    if case.output:
        assert re.search(case.output, result.output), result.output

    strict = _cli(raw, "--out", tmp_path / "strict", "--strict")
    if case.fate == "invalid":
        assert strict.exit_code == 1, strict.output
        assert "--strict:" in strict.output and case.source in strict.output
        assert not (tmp_path / "strict").exists()
    else:
        assert strict.exit_code == 0, strict.output


def _published_images(release: Path) -> dict[str, bytes]:
    images = {}
    for shard in sorted((release / "data").glob("*.parquet")):
        table = pq.read_table(shard, columns=["source_file", "image"]).to_pylist()
        images.update({row["source_file"]: row["image"]["bytes"] for row in table})
    return images


def test_converted_images_keep_their_pixels_and_wrong_extensions_are_published_as_their_content(tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    grey, palette_src, rgba = crop(2), crop(3), crop(4)
    _put("myeloblast/grey.tif", hk.encode(Image.fromarray(grey).convert("L"), "TIFF"))(raw)
    palette = Image.fromarray(palette_src).convert("P")
    _put("myeloblast/pal.png", hk.encode(palette, "PNG"))(raw)
    _put("myeloblast/rgba.png", hk.transparent(rgba, 255))(raw)
    _put("myeloblast/png.tif", encode(crop(5), "PNG"))(raw)
    assert _cli(raw, "--out", tmp_path / "rel").exit_code == 0
    images = _published_images(tmp_path / "rel")
    expected = {
        "myeloblast/grey.tif": np.asarray(Image.fromarray(grey).convert("L").convert("RGB")),
        "myeloblast/pal.png": np.asarray(palette.convert("RGB")),
        "myeloblast/rgba.png": rgba,
        "myeloblast/png.tif": crop(5),
    }
    for source, pixels in expected.items():
        img = Image.open(io.BytesIO(images[source]))
        assert img.format == "PNG" and img.mode == "RGB", source
        assert np.array_equal(np.asarray(img), pixels), source
    # lossless RGB: published as it came with publish_codec "original" (the default re-encodes it, pixel-exact)
    original = tmp_path / "original.toml"
    original.write_text(default_config_path().read_text(encoding="utf-8").replace('publish_codec = "png"', 'publish_codec = "original"'), encoding="utf-8")
    assert _cli(raw, "--out", tmp_path / "rel-original", "--config", original).exit_code == 0
    assert _published_images(tmp_path / "rel-original")["myeloblast/png.tif"] == (raw / "myeloblast/png.tif").read_bytes()


def test_symlink_outside_raw_never_reaches_the_release(tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    _symlink("myeloblast/link.tif", _outside_image)(raw)
    _symlink("monocyte/dir", _outside_dir)(raw)
    os.symlink(tmp_path / "outside", raw / "eosinophil")  # a whole class folder linked from elsewhere
    assert _cli(raw, "--out", tmp_path / "rel").exit_code == 0
    secret = published_pixel_sha256(encode(crop(666), "TIFF"), (288, 288))
    images = _published_images(tmp_path / "rel")
    assert set(images) == set(GOOD)
    assert secret not in {published_pixel_sha256(b, (288, 288)) for b in images.values()}
    assert _ledger_row(tmp_path / "rel", "eosinophil")["reason"].startswith("symbolic link to a directory")


def test_decompression_bomb_limit_stays_on(tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    _put("myeloblast/bomb.png", hk.png_declaring(20_000, 20_000))(raw)
    before = Image.MAX_IMAGE_PIXELS
    assert _cli(raw, "--out", tmp_path / "rel").exit_code == 0
    assert Image.MAX_IMAGE_PIXELS == before and before is not None and before <= 100_000_000


def test_huge_file_limit_is_configurable(tmp_path: Path):
    from pipeline.resources import default_config_path

    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    config = tmp_path / "small.toml"
    config.write_text(default_config_path().read_text().replace("max_file_bytes = 16_000_000", "max_file_bytes = 200_000"))
    result = _cli(raw, "--out", tmp_path / "rel", "--config", config)
    # every input is refused, so there is nothing to publish: exit 1, no release, the reason named
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "rel").exists()
    message = result.output.split("nothing to publish: all 2 inputs are invalid: ", 1)[1]
    # uncompressed 288x288 RGB TIFFs are 248,832 bytes of pixels plus a header; monocyte/ sorts first, so it is the example
    assert re.match(r"2 x file is 24\d,\d{3} bytes, above the limit of 200,000 \(config image.max_file_bytes\): not read \(e\.g\. monocyte/good_1\.tif\)", message)


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,patient_id\nmyeloblast/good_0.tif,P1\n", "annotations.csv line 1: missing required column(s) 'label'; found columns ['image', 'patient_id']"),
        ("image,label,label\n", "annotations.csv line 1: column 'label' appears twice (columns 2 and 3)"),
        ("", "annotations.csv is empty: expected a header row"),
        ("image,label\nmyeloblast/good_0.tif,myeloblast\nmonocyte/good_1.tif,\"monocyte\n", "annotations.csv line 3: broken CSV (unexpected end of data)"),
        ("image,label\nmyeloblast/good_0.tif,\"myeloblast\"x\n", "annotations.csv line 2: broken CSV (',' expected after '\"')"),
    ],
    ids=["missing required column", "duplicate column", "empty file", "unclosed quote", "stray quote"],
)
def test_unusable_annotation_table_stops_the_build(text: str, message: str, tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    (raw / "annotations.csv").write_text(text, encoding="utf-8")
    for extra in ([], ["--strict"]):
        result = _cli(raw, "--out", tmp_path / "rel", *extra)
        assert result.exit_code == 1, result.output
        assert message in result.output and "nothing was built" in result.output
        assert not (tmp_path / "rel").exists()


def _annotations_linked_from_outside(raw: Path) -> None:
    outside = raw.parent / "elsewhere" / "labels.csv"
    outside.parent.mkdir()
    outside.write_text("image,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in GOOD))
    os.symlink(outside, raw / "annotations.csv")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda raw: os.mkfifo(raw / "annotations.csv"), "annotations.csv is not a regular file (a directory, FIFO, device or broken link)"),
        (lambda raw: (raw / "annotations.csv").mkdir(), "annotations.csv is not a regular file"),
        (lambda raw: os.symlink(raw / "gone.csv", raw / "annotations.csv"), "annotations.csv is not a regular file"),
        (_annotations_linked_from_outside, "annotations.csv is a symbolic link pointing outside RAW"),
    ],
    ids=["FIFO", "directory", "broken link", "link outside RAW"],
)
def test_annotations_that_are_not_a_file_of_raw_stop_the_build(make, message, tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    make(raw)
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "rel").exists()


def test_annotations_not_utf8_stop_the_build_naming_the_line(tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    (raw / "annotations.csv").write_bytes(b"image,label,annotator\nmyeloblast/good_0.tif,myeloblast,Jos\xe9\n")
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 1
    assert "annotations.csv line 2: not UTF-8 text (invalid continuation byte at byte 58); save it as UTF-8" in result.output


def test_readme_lists_every_case():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Bad input: what the tool does", 1)[1].split("\n## ", 1)[0]
    missing = [c.id for c in CASES if f"| {c.id} |" not in section]
    assert not missing, f"README table lacks rows for {missing}"


def test_escaped_names_never_collide(tmp_path: Path):
    raw = tmp_path / "raw"
    _base(raw, annotated=False)
    _non_utf8_name(raw)  # byte 0xe9: shown as caf\xe9.tif
    _put("myeloblast/caf\\xe9.tif", encode(crop(8), "TIFF"))(raw)  # a literal backslash: shown as caf\x5cxe9.tif
    result = _cli(raw, "--out", tmp_path / "rel")
    assert result.exit_code == 0, result.output
    names = {r["source_file"] for r in read_ledger(tmp_path / "rel" / "ledger.csv") if r["fate"] == "invalid"}
    assert names == {"myeloblast/caf\\xe9.tif", "myeloblast/caf\\x5cxe9.tif"}
