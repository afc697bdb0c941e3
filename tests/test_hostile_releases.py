"""The catalogue of hostile releases: `mll23 verify` on a release directory whose author is an attacker.

Each case corrupts a private copy of one good release (built once per session) and must give exit 1, no
traceback, a message naming the file and the reason, in under 30 s; no payload may run (pickles leave a marker
file when unpickled, a fake `gs` first on PATH leaves one when started), no file may appear outside the temporary
directories, and nothing from outside the release (a secret in the environment, a file beside the release) may
reach the output. Most cases run in-process through the CLI; the bombs and hangs run `mll23 verify` in a
subprocess whose peak memory (its own VmHWM, reported on exit) must stay under 1 GB.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.build import build_release
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.lifecycle.publish.plan import PublishError
from pipeline.lifecycle.publish.steps import publish
from tests import hostile_release_kit as kit
from tests.hostile_release_kit import OUTSIDE_SECRET, SECRET_ENV, SECRET_VALUE, Expect, Scene
from tests.hostilekit import png_declaring
from tests.rawkit import simple_raw

MAX_SECONDS = 30
MAX_RSS_BYTES = 1 << 30
CASES: dict[str, Callable[[Scene], Expect]] = {}
SUBPROCESS_CASES: dict[str, Callable[[Scene], Expect]] = {}


def case(fn: Callable[[Scene], Expect]) -> Callable[[Scene], Expect]:
    CASES[fn.__name__] = fn
    return fn


def subprocess_case(fn: Callable[[Scene], Expect]) -> Callable[[Scene], Expect]:
    SUBPROCESS_CASES[fn.__name__] = fn
    return fn


# ---- links, special files, hard links ---------------------------------------------------------------------


@case
def ledger_symlink_to_proc_environ(s: Scene) -> Expect:
    (s.release / "ledger.csv").unlink()
    os.symlink("/proc/self/environ", s.release / "ledger.csv")
    return Expect("ledger.csv", "is a symbolic link")


@case
def shard_symlinked_to_identical_file_outside(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/train-*.parquet")
    copy = s.outside / shard.name
    shutil.copyfile(shard, copy)
    shard.unlink()
    os.symlink(copy, shard)  # same bytes, same sha256: only the link gives it away
    return Expect(kit.rel(s.release, shard), "is a symbolic link")


@case
def symlink_inside_the_release(s: Scene) -> Expect:
    figure = kit.first(s.release, "figures/*.png")
    other = kit.first(s.release, "figures/sample_grid.png")
    figure.unlink()
    os.symlink(os.path.relpath(other, figure.parent), figure)
    return Expect(kit.rel(s.release, figure), "is a symbolic link")


@case
def symlinked_directory(s: Scene) -> Expect:
    shutil.copytree(s.release / "data", s.outside / "data")
    shutil.rmtree(s.release / "data")
    os.symlink(s.outside / "data", s.release / "data")
    return Expect("data: is a symbolic link", "a release holds only regular files")


@case
def broken_symlink(s: Scene) -> Expect:
    os.symlink(s.outside / "nowhere", s.release / "figures" / "gone.png")
    return Expect("figures/gone.png", "is a symbolic link")


@case
def symlink_to_outside_secret_listed_in_manifest(s: Scene) -> Expect:
    os.symlink(s.outside / "secret.txt", s.release / "release_notes" / "v0.9.0.md")
    kit.edit_manifest(s.release, lambda d: d["files"].append(
        {"path": "release_notes/v0.9.0.md", "size": len(OUTSIDE_SECRET), "sha256": hashlib.sha256(OUTSIDE_SECRET).hexdigest()}))
    return Expect("release_notes/v0.9.0.md", "is a symbolic link")


@case
def fifo_in_place_of_a_listed_shard(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/test-*.parquet")
    shard.unlink()
    os.mkfifo(shard)  # opening it for reading would block forever
    return Expect(kit.rel(s.release, shard), "is a FIFO")


@case
def unix_socket_in_the_release(s: Scene) -> Expect:
    kit.make_socket(s.release / "figures" / "sock.png")
    return Expect("figures/sock.png", "is a socket")


@case
def device_file_in_the_release(s: Scene) -> Expect:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(s.release / "ledger.dev", 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
    return Expect("ledger.dev", "is a device")


# ---- manifest.json ------------------------------------------------------------------------------------------


@case
def manifest_symlink_to_another_release(s: Scene) -> Expect:
    shutil.copyfile(s.release / "manifest.json", s.outside / "manifest.json")
    (s.release / "manifest.json").unlink()
    os.symlink(s.outside / "manifest.json", s.release / "manifest.json")
    return Expect("manifest.json", "is a symbolic link, not a regular file: not read")


@case
def manifest_null(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text("null")
    return Expect("manifest.json", "None is not of type 'object'")


@case
def manifest_42(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text("42")
    return Expect("manifest.json", "42 is not of type 'object'")


@case
def manifest_a_list(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text('["files"]')
    return Expect("manifest.json", "is not of type 'object'")


@case
def manifest_nested_100000_deep(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return Expect("manifest.json", "nested too deeply")


@case
def manifest_not_json(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text('{"files": [')
    return Expect("manifest.json", "not valid JSON")


@case
def manifest_over_its_size_cap(s: Scene) -> Expect:
    with open(s.release / "manifest.json", "r+b") as fh:
        fh.truncate(65 << 20)  # sparse: costs no disk, and verify must not read it
    return Expect("manifest.json", "above the limit of 67,108,864")


@case
def manifest_file_size_of_the_wrong_type(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d["files"][0].update(size="12"))
    return Expect("manifest.json: files/0/size", "is not of type 'integer'")


@case
def manifest_without_its_config(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d.pop("config"))
    return Expect("croissant.json cannot be compared with what the build writes", "manifest.json records no config")


@case
def manifest_config_of_the_wrong_shape(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d["config"].update(classes="all of them"))
    return Expect("croissant.json cannot be compared with what the build writes", "classes")


@case
def manifest_without_class_names(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d.pop("class_names"))
    return Expect("manifest.json", "'class_names' is a required property")


def _listed_path(path: str, reason: str) -> Callable[[Scene], Expect]:
    def corrupt(s: Scene) -> Expect:
        kit.edit_manifest(s.release, lambda d: d["files"].append({"path": path, "size": 1, "sha256": "0" * 64}))
        return Expect("manifest.json: files[", reason)

    return corrupt


for _name, _path, _reason in [
    ("manifest_path_dotdot", "../outside/secret.txt", "has a '..' component"),
    ("manifest_path_absolute", "/etc/passwd", "is absolute"),
    ("manifest_path_nul", "data/x\0.parquet", "control characters"),
    ("manifest_path_newline", "data/x\n[files] all good.parquet", "control characters"),
    ("manifest_path_workflow_command", "::error file=x::forged", "control characters, a backslash or"),
    ("manifest_path_escape_sequence", "data/\x1b[2J\x1b[31mred.parquet", "control characters"),
    ("manifest_path_bidi_override", "data/\u202etxt.parquet", "control characters"),
    ("manifest_path_backslash", "data\\..\\..\\secret", "a backslash"),
    ("manifest_path_empty_component", "data//x.parquet", "has a '' component"),
]:
    CASES[_name] = _listed_path(_path, _reason)


@case
def manifest_path_over_long(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d["files"].append({"path": "data/" + "a" * 5000, "size": 1, "sha256": "0" * 64}))
    return Expect("manifest.json: files/", "is too long")


@case
def file_name_with_newline_and_workflow_command_on_disk(s: Scene) -> Expect:
    (s.release / "figures" / "x\n::error::forged\x1b[31m.png").write_bytes(b"x")
    return Expect("figures/x\\x0a:\\x3aerror:\\x3aforged\\x1b[31m.png", "control characters")


@case
def unlisted_loading_script(s: Scene) -> Expect:
    (s.release / "release.py").write_text("open('/tmp/pwned', 'w')\n")
    return Expect("release.py", "is in the release but not listed")


@case
def listed_file_outside_the_release_format(s: Scene) -> Expect:
    (s.release / "dataset_infos.json").write_text("{}")
    kit.resign(s.release)
    return Expect("dataset_infos.json", "not a file of the release format")


# ---- the card ---------------------------------------------------------------------------------------------


@case
def card_yaml_billion_laughs(s: Scene) -> Expect:
    kit.replace_card_header(s.release, kit.yaml_billion_laughs())
    kit.resign(s.release)
    return Expect("README.md", "YAML anchor &a on line 1: anchors are refused")


@case
def card_yaml_alias_in_dataset_info(s: Scene) -> Expect:
    card = s.release / "README.md"
    card.write_text(card.read_text().replace("dataset_info:\n", "x: &x [1]\ndataset_info:\n  y: *x\n", 1))
    kit.resign(s.release)
    return Expect("README.md", "refused")


@case
def card_yaml_python_tag(s: Scene) -> Expect:
    kit.replace_card_header(s.release, f"license: !!python/object/apply:os.system ['touch {s.marker('yaml')}']\n")
    kit.resign(s.release)
    return Expect("README.md", "tags are refused")


@case
def card_yaml_nested_deep(s: Scene) -> Expect:
    kit.replace_card_header(s.release, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    kit.resign(s.release)
    return Expect("README.md", "nested more than 64 levels")


@case
def card_over_its_size_cap(s: Scene) -> Expect:
    with open(s.release / "README.md", "ab") as fh:
        fh.write(b"x" * (4 << 20))
    kit.resign(s.release)
    return Expect("README.md", "above the limit of 4,194,304")


@case
def card_yaml_of_unexpected_shapes(s: Scene) -> Expect:
    """Lists where mappings belong and mappings where names belong: wrong counts, never a crash."""
    kit.replace_card_header(s.release, "configs: 7\ndataset_info:\n  splits:\n  - name: [train]\n    num_examples: {a: 1}\n  - 3\n")
    kit.resign(s.release)
    return Expect("README.md: YAML dataset_info.splits train num_examples is 0", "but the shards hold")


@case
def card_feature_declared_as_video(s: Scene) -> Expect:
    card = s.release / "README.md"
    card.write_text(card.read_text().replace("dtype: image", "dtype: video", 1))
    kit.resign(s.release)
    return Expect("README.md: YAML dataset_info.features[0] has dtype video", "which a release does not use")


@case
def shard_metadata_declares_audio(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/train-*.parquet")
    table = pq.read_table(shard)
    meta = json.loads(table.schema.metadata[b"huggingface"])
    meta["info"]["features"]["image"] = {"_type": "Audio"}
    pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps(meta)}), shard)
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, shard)}: schema metadata declares column image as Audio", "which a release does not use")


@case
def shard_metadata_with_a_pandas_key(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/train-*.parquet")
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"pandas": b'{"index_columns": []}'}), shard)
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, shard)}: schema metadata key pandas", "is not one the build writes")


@case
def card_data_files_leave_the_release(s: Scene) -> Expect:
    card = s.release / "README.md"
    card.write_text(card.read_text().replace("path: data/train-*.parquet", "path: ../../**", 1))
    kit.resign(s.release)
    return Expect("README.md: YAML configs[0] data_files pattern ../../**", "has a '..' component")


@case
def card_data_files_url(s: Scene) -> Expect:
    card = s.release / "README.md"
    card.write_text(card.read_text().replace("path: data/train-*.parquet", "path: https://example.invalid/x.parquet", 1))
    kit.resign(s.release)
    return Expect("data_files pattern https://example.invalid/x.parquet", "has a '' component")


@case
def card_config_with_data_dir(s: Scene) -> Expect:
    card = s.release / "README.md"
    card.write_text(card.read_text().replace("  data_files:\n", "  data_dir: /etc\n  data_files:\n", 1))
    kit.resign(s.release)
    return Expect("README.md: YAML configs[0] has key data_dir", "which a release card does not use")


# ---- WebDataset tars --------------------------------------------------------------------------------------


def _bad_member(suffix: str, payload: Callable[[Scene], bytes]) -> Callable[[Scene], Expect]:
    def corrupt(s: Scene) -> Expect:
        tar = kit.first(s.release, "wds/train-*.tar")
        key = tarfile.open(tar).getnames()[0].split(".")[0]
        kit.rewrite_tar(tar, [kit.member(f"{key}.{suffix}", payload(s))])
        kit.resign(s.release)
        return Expect(f"{kit.rel(s.release, tar)}: member {key}.{suffix}", "is not <key>.<suffix> with a suffix of the release format")

    return corrupt


CASES["tar_member_pyd_pickle"] = _bad_member("pyd", lambda s: kit.pickle_payload(s.marker("pyd")))
CASES["tar_member_pickle"] = _bad_member("pickle", lambda s: kit.pickle_payload(s.marker("pickle")))
CASES["tar_member_pth"] = _bad_member("pth", lambda s: kit.pickle_payload(s.marker("pth")))
CASES["tar_member_npy_with_objects"] = _bad_member("npy", lambda s: kit.npy_payload(s.marker("npy")))
CASES["tar_member_gzipped_json"] = _bad_member("json.gz", lambda s: kit.gzip_of_zeros(1 << 20))


@case
def tar_member_symlink(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/train-*.tar")
    kit.rewrite_tar(tar, [kit.member("ffffffffffffffff.json", type=tarfile.SYMTYPE, linkname="/etc/passwd")])
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member ffffffffffffffff.json", "is not a regular file")


@case
def tar_gnu_long_name_of_100_mb(s: Scene) -> Expect:
    """A GNU long-name header whose 'name' is 100 MB: tarfile would read it whole before returning the member."""
    tar = kit.first(s.release, "wds/test-*.tar")
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 100 << 20
    with open(tar, "wb") as fh:
        fh.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        fh.truncate(512 + (100 << 20) + 1024)  # sparse: the 'name' is zeros
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member ././@LongLink", "a GNU long name header")


@case
def tar_pax_header(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/test-*.tar")
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as out:
        info = tarfile.TarInfo("caf\u00e9.json")  # a non-ASCII name needs a pax header
        info.size = 2
        out.addfile(info, io.BytesIO(b"{}"))
    kit.resign(s.release)
    return Expect(kit.rel(s.release, tar), "a pax extended header")


@case
def tar_member_eps_as_png(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/test-*.tar")
    kit.rewrite_tar(tar, [kit.member("eeeeeeeeeeeeeeee.png", kit.eps_bytes())])
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member eeeeeeeeeeeeeeee.png", "not a TIFF, PNG or JPEG image")


@case
def tar_member_over_its_size_cap(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/test-*.tar")
    kit.rewrite_tar(tar, [kit.member("dddddddddddddddd.json", b" " * (2 << 20))])
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member dddddddddddddddd.json", "above the limit of 1,048,576")


@case
def tar_not_a_tar(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/test-*.tar")
    tar.write_bytes(b"\x00not a tar at all" * 100)
    kit.resign(s.release)
    return Expect(kit.rel(s.release, tar), "not a readable tar archive")


def _pattern(pattern: str) -> Callable[[Scene], Expect]:
    def corrupt(s: Scene) -> Expect:
        kit.edit_manifest(s.release, lambda d: d["splits"]["train"]["webdataset"].update(pattern=pattern))
        last = len(json.loads((s.release / "manifest.json").read_text())["splits"]["train"]["webdataset"]["shards"]) - 1
        return Expect("manifest.json: splits.train.webdataset.pattern", f"expected wds/train-{{000000..{last:06d}}}.tar")

    return corrupt


CASES["wds_pattern_pipe_command"] = lambda s: _pattern(f"wds/train-000000.tar::pipe:touch {s.marker('pipe')}")(s)
CASES["wds_pattern_brace_expansion"] = _pattern("wds/train-{000000..999999}.tar")
CASES["wds_pattern_url"] = _pattern("https://example.invalid/train-{000000..000001}.tar")


@case
def wds_shard_path_leaves_the_release(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d["splits"]["test"]["webdataset"]["shards"][0].update(path="../outside/secret.tar"))
    return Expect("manifest.json: splits.test.webdataset.shards", "the release format names them")


# ---- Parquet shards and their images ------------------------------------------------------------------------


def _image_cell(make: Callable[[Scene], bytes], reason: str) -> Callable[[Scene], Expect]:
    def corrupt(s: Scene) -> Expect:
        shard = kit.first(s.release, "data/train-*.parquet")
        kit.rewrite_first_row(shard, image=lambda image: {**image, "bytes": make(s)})
        kit.resign(s.release)
        return Expect(f"{kit.rel(s.release, shard)} row 0: image refused", reason)

    return corrupt


CASES["image_cell_eps"] = _image_cell(lambda s: kit.eps_bytes(), "not a TIFF, PNG or JPEG image")
CASES["image_cell_bmp"] = _image_cell(lambda s: kit.bmp_bytes(), "not a TIFF, PNG or JPEG image")
CASES["image_cell_pixel_bomb"] = _image_cell(lambda s: png_declaring(40_000, 40_000), "decompression bomb refused")


@case
def shard_not_parquet(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/test-*.parquet")
    shard.write_bytes(b"PAR1" + b"\0" * 100)
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "no Parquet footer")


@case
def shard_footer_length_beyond_the_file(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/test-*.parquet")
    data = bytearray(shard.read_bytes())
    data[-8:-4] = (2_000_000_000).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "Parquet footer of 2,000,000,000 bytes")


@case
def shard_dictionary_bomb(s: Scene) -> Expect:
    """One 100 kB string repeated in 5,000 rows: a few kB stored, 500 MB once decoded."""
    shard = kit.first(s.release, "data/test-*.parquet")
    rows = 5000
    table = pa.table({"image_id": pa.array(["f" * 100_000] * rows).dictionary_encode()})
    pq.write_table(table, shard, compression="zstd")
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, shard)}: row group 0 column image_id decompresses to", "limit 268,435,456")


# ---- ledger, croissant -----------------------------------------------------------------------------------


@case
def ledger_over_its_size_cap(s: Scene) -> Expect:
    with open(s.release / "ledger.csv", "r+b") as fh:
        fh.truncate(65 << 20)
    kit.resign(s.release)
    return Expect("ledger.csv", "above the limit of 67,108,864")


@case
def ledger_with_a_huge_field(s: Scene) -> Expect:
    with open(s.release / "ledger.csv", "a") as fh:
        fh.write("x" * 200_000 + ",file,a,kept,,,,,\n")
    kit.resign(s.release)
    return Expect("ledger.csv", "not a readable CSV table")


def _croissant(edit: Callable[[dict], None], names: str, reason: str) -> Callable[[Scene], Expect]:
    def corrupt(s: Scene) -> Expect:
        path = s.release / "croissant.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
        kit.resign(s.release)
        return Expect(names, reason)

    return corrupt


CASES["croissant_remote_context"] = _croissant(lambda d: d.update({"@context": "https://example.invalid/context.jsonld"}),
                                              "croissant.json: @context", "not the one the build writes")
CASES["croissant_glob_leaves_the_release"] = _croissant(
    lambda d: next(x for x in d["distribution"] if x["@type"] == "cr:FileSet").update(includes=["../../**/*"]),
    "croissant.json: file sets", "glob patterns")
CASES["croissant_catastrophic_regex"] = _croissant(
    lambda d: d["recordSet"][2]["field"][0]["source"]["transform"].update(regex="^(a+)+$"),
    "croissant.json: recordSet", "regexes and columns would be run")
CASES["croissant_file_url"] = _croissant(
    lambda d: d["distribution"].append({"@type": "cr:FileObject", "@id": "x", "name": "x", "contentUrl": "file:///etc/passwd", "sha256": "0" * 64}),
    "croissant.json declares file:///etc/passwd", "which manifest.json does not list")
CASES["croissant_nested_file_object"] = _croissant(
    lambda d: d.update(keywords=[{"@type": "cr:FileObject", "contentUrl": "https://example.invalid/x.parquet"}]),
    "croissant.json: keywords", "holds more than text")
CASES["croissant_nested_remote_context"] = _croissant(
    lambda d: d.update({"rai:dataBiases": {"@context": "https://example.invalid/context.jsonld", "x": "y"}}),
    "croissant.json: rai:dataBiases", "holds more than text")
CASES["croissant_graph"] = _croissant(lambda d: d.update({"@graph": []}), "croissant.json: @graph", "holds more than text")
CASES["croissant_not_an_object"] = _croissant(lambda d: d.clear(), "croissant.json", "version is None")


# ---- red team: JSON and CSV that parse into more than their bytes ----------------------------------------


@case
def manifest_size_as_a_float(s: Scene) -> Expect:
    """jsonschema counts 11677.0 as an integer; the size then reached file reads as a float (TypeError)."""
    kit.edit_manifest(s.release, lambda d: d["files"][0].update(size=float(d["files"][0]["size"])))
    return Expect("manifest.json: files/0/size", "is not of type 'integer'")


@case
def manifest_duplicate_key(s: Scene) -> Expect:
    """Python keeps the last "files", other JSON readers the first: two readers, two file lists."""
    text = (s.release / "manifest.json").read_text()
    (s.release / "manifest.json").write_text(text.replace('{\n', '{\n  "files": [],\n', 1))
    return Expect("manifest.json", "key 'files' appears twice in one object")


@case
def manifest_integer_of_5000_digits(s: Scene) -> Expect:
    text = (s.release / "manifest.json").read_text()
    (s.release / "manifest.json").write_text(text.replace('"ledger_total": ', '"ledger_total": ' + "9" * 5000 + ', "x": ', 1))
    return Expect("manifest.json", "an integer of 5,000 digits")


@case
def manifest_infinite_number(s: Scene) -> Expect:
    text = (s.release / "manifest.json").read_text()
    (s.release / "manifest.json").write_text(text.replace('"ledger_total": ', '"ledger_total": 1e1000000, "x": ', 1))
    return Expect("manifest.json", "number 1e1000000 is beyond a float")


@case
def manifest_retired_entry_without_its_split(s: Scene) -> Expect:
    """Passed verify, then ended `mll23 build --previous` in a KeyError."""
    kit.edit_manifest(s.release, lambda d: d.update(retired={"0123456789abcdef": {}}))
    return Expect("manifest.json: retired/0123456789abcdef", "'split' is a required property")


@subprocess_case
def manifest_of_ten_million_items(s: Scene) -> Expect:
    """20 MB of `0,`: jsonschema validated (and reported) every item before choosing the best error (>120 s)."""
    (s.release / "manifest.json").write_text('{"files": [' + ",".join(["0"] * 10_000_000) + "]}")
    return Expect("manifest.json", "'name' is a required property")


@subprocess_case
def manifest_of_twenty_million_lists(s: Scene) -> Expect:
    """60 MB of `[],` (under the 64 MB cap): 1.7 GB once parsed."""
    (s.release / "manifest.json").write_text('{"retired": [' + ",".join(["[]"] * 20_000_000) + "]}")
    return Expect("manifest.json", "20,000,002 JSON arrays and objects, more than the 300,000")


@subprocess_case
def croissant_of_ten_million_lists(s: Scene) -> Expect:
    path = s.release / "croissant.json"
    path.write_text(path.read_text().replace('"keywords": [', '"keywords": [' + "[]," * 10_000_000, 1))
    kit.resign(s.release)
    return Expect("croissant.json", "JSON arrays and objects, more than the 300,000")


@case
def ledger_row_with_four_fields(s: Scene) -> Expect:
    """A short row is None where every reader expects text: verify's sort of ledger keys ended in a TypeError."""
    path = s.release / "ledger.csv"
    kept = next(line for line in path.read_text().splitlines() if ",kept," in line)
    with open(path, "a") as fh:
        fh.write(kept.split(",")[0] + ",file,x,kept\n")
    kit.resign(s.release)
    return Expect("ledger.csv line 14", "4 fields, the header has 9")


@subprocess_case
def ledger_of_240_mb(s: Scene) -> Expect:
    """2,400 rows of a 100 kB field: 1.3 GB once read as text, copied into a StringIO and split into rows."""
    with open(s.release / "ledger.csv", "a") as fh:
        row = ",".join(["y" * 100_000, "file", "a", "kept", "", "", "", "", ""]) + "\n"
        for _ in range(2400):
            fh.write(row)
    kit.resign(s.release)
    return Expect("ledger.csv", "above the limit of 67,108,864")


# ---- red team: Parquet within every per-column limit, and still too much --------------------------------


def _shard_table(release: Path, rows: int, text: str, image: bytes = b"") -> pa.Table:
    """`rows` rows of the build's schema, every text column `text`, every image `image`."""
    from pipeline.release.parquet import arrow_schema

    schema = arrow_schema(json.loads((release / "manifest.json").read_text())["class_names"])
    columns = {}
    for f in schema:
        if f.name == "image":
            columns[f.name] = pa.array([{"bytes": image, "path": "x.png"}] * rows, f.type)
        else:
            columns[f.name] = pa.array([0 if f.name == "label" else text] * rows, f.type)
    return pa.table(columns, schema=schema)


@subprocess_case
def shard_list_column_of_60_million_nulls(s: Scene) -> Expect:
    """575 bytes: run-length encoded levels of one list of 60 million nulls, 2.1 GB once read; no size in the
    file declares it. Only the build's (flat) columns are read."""
    shard = kit.first(s.release, "data/test-*.parquet")
    n = 60_000_000
    column = pa.ListArray.from_arrays(pa.array([0, n], pa.int32()), pa.nulls(n, pa.int8()))
    pq.write_table(pa.table({"label": column}), shard, compression="zstd")
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "its columns are [label: list<element: int8>], not the 10 columns the build writes")


@case
def shard_column_chunk_in_another_file(s: Scene) -> Expect:
    """Parquet lets a column chunk name the file it is in; pyarrow ignores it today, other readers need not."""
    shard = kit.first(s.release, "data/test-*.parquet")
    data = shard.read_bytes()
    meta = pq.read_metadata(shard)
    meta.set_file_path("../../../../etc/passwd")
    buf = io.BytesIO()
    meta.write_metadata_file(buf)
    footer = buf.getvalue()[4:-8]  # PAR1 <footer> <length> PAR1
    old_footer = int.from_bytes(data[-8:-4], "little")
    shard.write_bytes(data[: len(data) - 8 - old_footer] + footer + len(footer).to_bytes(4, "little") + b"PAR1")
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "column image.bytes is stored in another file ('../../../../etc/passwd')")


@subprocess_case
def shard_row_group_of_eleven_240_mb_columns(s: Scene) -> Expect:
    """Every column chunk under the 256 MB limit, the row group 2.6 GB: verify peaked at 4.4 GB."""
    shard = kit.first(s.release, "data/test-*.parquet")
    pq.write_table(_shard_table(s.release, 1000, "f" * 240_000, b"\0" * 240_000), shard, compression="zstd",
                   use_dictionary=False, row_group_size=1000)
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "over its columns (limit 536,870,912)")


@subprocess_case
def shard_text_columns_of_2_gb_over_four_row_groups(s: Scene) -> Expect:
    """Each row group within every limit; all four, held as rows, 1.9 GB of Arrow and as much of Python text."""
    shard = kit.first(s.release, "data/test-*.parquet")
    table = _shard_table(s.release, 100_000, "f" * 600)
    with pq.ParquetWriter(shard, table.schema, compression="zstd", use_dictionary=False) as writer:
        for _ in range(4):
            writer.write_table(table, row_group_size=100_000)
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "per-row columns (image_id, label, source_file")


@subprocess_case
def shard_of_490_000_wrong_rows(s: Scene) -> Expect:
    """Under the row limit, every row wrong: a record validation each took verify 69 s."""
    shard = kit.first(s.release, "data/test-*.parquet")
    pq.write_table(_shard_table(s.release, 490_000, "a"), shard, compression="zstd", row_group_size=100_000)
    kit.resign(s.release)
    return Expect(f"the records check stopped there, in {kit.rel(s.release, shard)}", "1,000 rows failed")


# ---- red team: tars, cards ------------------------------------------------------------------------------


@case
def tar_member_of_negative_size(s: Scene) -> Expect:
    """A base-256 size of -512: the header walk went back to the same header a million times (17 s)."""
    tar = kit.first(s.release, "wds/test-*.tar")
    data = bytearray(tar.read_bytes())
    header = bytearray(data[:512])
    header[124:136] = bytes([0xFF] * 10) + (-512 & 0xFFFF).to_bytes(2, "big")
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    data[:512] = header
    tar.write_bytes(bytes(data))
    kit.resign(s.release)
    return Expect(kit.rel(s.release, tar), "has no valid size")


@subprocess_case
def tar_of_300_000_empty_members(s: Scene) -> Expect:
    """150 MB of headers: 12 s for 300,000, 40 s for the million the old limit allowed."""
    tar = kit.first(s.release, "wds/test-*.tar")
    with open(tar, "wb") as fh:
        for i in range(300_000):
            fh.write(kit.tar_header_for(f"{i:016x}.cls", 0))
        fh.write(bytes(1024))
    kit.resign(s.release)
    return Expect(kit.rel(s.release, tar), "members (the 3 test rows of the Parquet shards make 9): not read")


@subprocess_case
def card_yaml_of_370_000_keys(s: Scene) -> Expect:
    """4 MB of `kN: 1`, under the card's size cap: PyYAML took 64 s."""
    kit.replace_card_header(s.release, "".join(f"k{i}: 1\n" for i in range(370_000)))
    kit.resign(s.release)
    return Expect("README.md", "more than 65,536: not parsed")


@case
def card_yaml_of_30_000_flow_items(s: Scene) -> Expect:
    kit.replace_card_header(s.release, "x: [" + "1," * 30_000 + "1]\n")
    kit.resign(s.release)
    return Expect("README.md", "YAML header has more nodes than a card needs")


@case
def card_yaml_header_with_crlf_line_ends(s: Scene) -> Expect:
    """verify found no header ("---\\n" ... "\\n---\\n"); `datasets` and the Hub find one, and load its configs."""
    card = s.release / "README.md"
    head, body = card.read_text()[4:].split("\n---\n", 1)
    head = head.replace("path: data/train-*.parquet", "path: ../../**")
    card.write_text("---\r\n" + head.replace("\n", "\r\n") + "\r\n---\r\n" + body)
    kit.resign(s.release)
    return Expect("README.md", "YAML header is not delimited as the build writes it")


@case
def card_yaml_header_closed_at_the_end_of_the_file(s: Scene) -> Expect:
    card = s.release / "README.md"
    card.write_text("---\nconfigs:\n- config_name: default\n  data_files: ../../**\n---")
    kit.resign(s.release)
    return Expect("README.md", "YAML header is not delimited as the build writes it")


@case
def shard_named_with_arabic_indic_digits(s: Scene) -> Expect:
    """`\\d` matches every script's digits: "test-٠٠٠٠٠-of-00001.parquet" passed as a shard of the layout."""
    shard = kit.first(s.release, "data/test-*.parquet")
    twin = shard.with_name(shard.name.replace("00000-of", "\u0660" * 5 + "-of"))
    shard.rename(twin)
    kit.resign(s.release)
    return Expect(kit.rel(s.release, twin), "not a file of the release format")


@case
def tar_member_names_leaving_the_archive(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/train-*.tar")
    kit.rewrite_tar(tar, [kit.member("../../../tmp/x.json", b"{}"), kit.member("/tmp/y.json", b"{}")])
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member ../../../tmp/x.json", "is not <key>.<suffix>")


@case
def tar_gnu_sparse_member(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/test-*.tar")
    info = tarfile.TarInfo("cccccccccccccccc.png")
    info.type = tarfile.GNUTYPE_SPARSE
    tar.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member cccccccccccccccc.png", "a GNU sparse header")


@case
def file_name_of_overlong_utf8(s: Scene) -> Expect:
    """b"\\xc0\\xaf" is an overlong "/": not UTF-8, listed with Python's surrogate escapes and refused as such."""
    fd = os.open(bytes(s.release / "figures") + b"/x\xc0\xafy.png", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    return Expect("figures/x\\udcc0\\udcafy.png", "control characters")


@subprocess_case
def release_of_100_000_empty_files(s: Scene) -> Expect:
    for i in range(100_000):
        (s.release / "figures" / f"f{i}.png").touch()
    return Expect("figures/f0.png", "is in the release but not listed in manifest.json")


def _png_of_81_million_pixels() -> bytes:
    """A real 9,000 x 9,000 PNG (236 kB): under Pillow's bomb limit (89 million pixels), 1.2 GB once verify had
    decoded, converted and hashed it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


@subprocess_case
def image_cell_of_81_million_pixels(s: Scene) -> Expect:
    shard = kit.first(s.release, "data/train-*.parquet")
    kit.rewrite_first_row(shard, image=lambda image: {**image, "bytes": _png_of_81_million_pixels()})
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, shard)} row 0: image refused", "image of 9,000 x 9,000 pixels, more than the 16,777,216")


@subprocess_case
def tar_member_of_81_million_pixels(s: Scene) -> Expect:
    """The tar's images are decoded by the webdataset load check, which runs when every other check passed."""
    tar = kit.first(s.release, "wds/test-*.tar")
    kit.rewrite_tar(tar, [kit.member("9999999999999999.png", _png_of_81_million_pixels())])
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member 9999999999999999.png", "more than the 16,777,216 of any release image")


@case
def figures_differing_only_in_case(s: Scene) -> Expect:
    """Two names one file on a case-insensitive checkout (macOS, Windows): one would overwrite the other."""
    figure = kit.first(s.release, "figures/*.png")
    shutil.copyfile(figure, figure.with_name(figure.name.upper().replace(".PNG", ".png")))
    kit.resign(s.release)
    return Expect(figure.name.upper().replace(".PNG", ".png"), "differ only in case")


@subprocess_case
def card_of_2000_patterns_over_100_000_files(s: Scene) -> Expect:
    """Every pattern was matched against every file: 2 x 10^8 matches (minutes)."""
    for i in range(100_000):
        (s.release / "figures" / f"f{i}.png").touch()
    patterns = "".join(f"  - data/train-{i}*.parquet\n" for i in range(2000))
    kit.replace_card_header(s.release, "configs:\n- config_name: default\n  data_files:\n" + patterns)
    kit.resign(s.release)
    return Expect("README.md", "YAML configs hold more than 64 data_files patterns")


@subprocess_case
def card_of_300_000_links_over_100_000_files(s: Scene) -> Expect:
    """Each link target was looked up in the list of files: 3 x 10^10 comparisons."""
    for i in range(100_000):
        (s.release / "figures" / f"f{i}.png").touch()
    card = s.release / "README.md"
    card.write_text(card.read_text() + "".join(f"[a](y{i})" for i in range(300_000)))
    kit.resign(s.release)
    return Expect("README.md links y0", "which is not a file of the release")


# ---- running a case ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def good_release(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    simple_raw(base / "raw", ["myeloblast", "monocyte", "eosinophil"], per_class=4)
    build_release(base / "raw", base / "good", load_config(version="1.0.0"), workers=1)
    return base / "good"


@pytest.fixture
def scene(good_release, tmp_path, monkeypatch) -> Scene:
    """A copy of the good release, a secret outside it and in the environment, a fake `gs` first on PATH,
    and an empty working directory and HOME that must stay empty."""
    s = Scene(tmp_path / "release", tmp_path / "outside", tmp_path / "markers")
    shutil.copytree(good_release, s.release)
    s.outside.mkdir()
    s.markers.mkdir()
    (s.outside / "secret.txt").write_bytes(OUTSIDE_SECRET)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_gs = bin_dir / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {s.marker('gs')}\nexit 1\n")
    fake_gs.chmod(0o755)
    for name in ("cwd", "home"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    return s


def assert_refused(s: Scene, expect: Expect, output: str, exit_code: int, seconds: float) -> None:
    assert exit_code == 1, output
    assert "Traceback" not in output and "could not complete" not in output, output
    lines = [line for line in output.splitlines() if expect.names in line]
    assert any(expect.reason in line for line in lines), f"no line naming {expect.names!r} with {expect.reason!r}:\n{output}"
    assert seconds < MAX_SECONDS
    assert list(s.markers.iterdir()) == [], "a payload ran"
    assert list(Path.cwd().iterdir()) == [] and list(Path(os.environ["HOME"]).iterdir()) == []
    assert SECRET_VALUE not in output and OUTSIDE_SECRET.decode().strip() not in output
    for line in output.splitlines():  # one failure, one line: nothing forged, nothing a terminal would obey
        assert not line.startswith("::") and "\x1b" not in line and "\u202e" not in line


@pytest.mark.parametrize("name", sorted(CASES))
def test_verify_refuses_a_hostile_release(name, scene):
    expect = CASES[name](scene)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["verify", str(scene.release)])
    assert_refused(scene, expect, result.output, result.exit_code, time.monotonic() - started)


def test_verify_refuses_a_linked_release_directory(scene):
    """`releases/<name>` of a pull request linked to a directory of the runner: nothing under it is listed."""
    linked = scene.outside.parent / "linked-release"
    os.symlink(scene.outside, linked)
    result = CliRunner().invoke(app, ["verify", str(linked)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"the release directory {linked} is a symbolic link: not followed" in result.output
    assert "secret.txt" not in result.output


def test_verify_notes_dir_with_a_fifo_and_a_link(scene):
    """--notes-dir is in the same repository as the release: its files are read the same way."""
    notes = scene.outside.parent / "release_notes"
    notes.mkdir()
    os.mkfifo(notes / "v1.0.0.md")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["verify", str(scene.release), "--notes-dir", str(notes)])
    assert_refused(scene, Expect(f"{notes / 'v1.0.0.md'} is missing or not readable", "is a FIFO"), result.output,
                   result.exit_code, time.monotonic() - started)
    (notes / "v1.0.0.md").unlink()
    os.symlink(scene.outside / "secret.txt", notes / "v1.0.0.md")
    result = CliRunner().invoke(app, ["verify", str(scene.release), "--notes-dir", str(notes)])
    assert_refused(scene, Expect(f"{notes / 'v1.0.0.md'} is missing or not readable", "is a symbolic link"), result.output,
                   result.exit_code, 0)


def test_the_catalogue_covers_at_least_40_kinds():
    assert len(CASES) + len(SUBPROCESS_CASES) >= 40


# ---- bombs and hangs: in a subprocess, with its peak memory -----------------------------------------------


@subprocess_case
def parquet_zstd_bomb(s: Scene) -> Expect:
    """300 MB of zeros in one column chunk, stored in a few kB."""
    shard = kit.first(s.release, "data/train-*.parquet")
    kit.zstd_parquet_bomb(shard, value_bytes=50 << 20, rows=6)
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, shard)}: row group 0 column image.bytes decompresses to", "(limit 268,435,456; ")


@subprocess_case
def gzip_compressed_tar_bomb(s: Scene) -> Expect:
    """A 2 GB tar in 2 MB of gzip, under the name of a tar shard."""
    tar = kit.first(s.release, "wds/train-*.tar")
    tar.write_bytes(kit.gzip_of_zeros(2 << 30, prefix=kit.tar_header_for("aaaaaaaaaaaaaaaa.json", 2 << 30)))
    kit.resign(s.release)
    return Expect(kit.rel(s.release, tar), "a gzip-compressed tar; the release format writes uncompressed tars only")


@subprocess_case
def gzip_member_bomb(s: Scene) -> Expect:
    """A .json.gz member that inflates to 2 GB (datasets and webdataset both gunzip .gz members)."""
    tar = kit.first(s.release, "wds/test-*.tar")
    kit.rewrite_tar(tar, [kit.member("bbbbbbbbbbbbbbbb.json.gz", kit.gzip_of_zeros(2 << 30))])
    kit.resign(s.release)
    return Expect(f"{kit.rel(s.release, tar)}: member bbbbbbbbbbbbbbbb.json.gz", "is not <key>.<suffix>")


@subprocess_case
def quadratic_readme(s: Scene) -> Expect:
    """200 kB of `](`: the old link regex rescanned the rest of the card from every one (109 s)."""
    (s.release / "README.md").write_text("](" * 100_000)
    kit.resign(s.release)
    return Expect("README.md", "does not state version")


@subprocess_case
def fifo_shard_subprocess(s: Scene) -> Expect:
    tar = kit.first(s.release, "wds/test-*.tar")
    tar.unlink()
    os.mkfifo(tar)
    return Expect(kit.rel(s.release, tar), "is a FIFO")


@subprocess_case
def yaml_billion_laughs_subprocess(s: Scene) -> Expect:
    kit.replace_card_header(s.release, kit.yaml_billion_laughs())
    kit.resign(s.release)
    return Expect("README.md", "anchors are refused")


@subprocess_case
def manifest_deep_subprocess(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    return Expect("manifest.json", "nested too deeply")


@subprocess_case
def ledger_of_a_million_rows(s: Scene) -> Expect:
    """18 MB of rows of empty fields: each would become a dict of nine columns."""
    with open(s.release / "ledger.csv", "a") as fh:
        fh.write("a,,,,,,,,\n" * 1_000_000)
    kit.resign(s.release)
    return Expect("ledger.csv", "more than 500,000 rows")


@subprocess_case
def shard_of_a_million_rows(s: Scene) -> Expect:
    """A million rows of zeros: a few kB on disk, a million Python objects (and record checks) once read."""
    shard = kit.first(s.release, "data/test-*.parquet")
    pq.write_table(pa.table({"label": pa.array([0] * 1_000_000)}), shard, compression="zstd", row_group_size=1_000_000)
    kit.resign(s.release)
    return Expect(kit.rel(s.release, shard), "1,000,000 rows, more than 500,000")


# Runs `mll23 verify DIR` and reports on exit the peak RSS of its own address space (VmHWM) and the CPU seconds it
# used. ru_maxrss from wait4 is no use here: Linux carries the forked copy of this (large) test process into the
# child's figure. CPU seconds, not wall seconds, are what a bomb would run away with; wall time on a machine
# shared with other jobs says more about the neighbours (the subprocess timeout still bounds it).
_MEASURED_VERIFY = r"""
import atexit, os, sys

def report_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    times = os.times()
    sys.stderr.write(f"CPU_SECONDS {times.user + times.system:.3f}\nPEAK_RSS_KB {peak}\n")

atexit.register(report_peak)
from pipeline.cli import app
app(["verify", sys.argv[1]], prog_name="mll23")
"""


def _run_measured(release: Path, cwd: Path) -> tuple[int, str, float, int]:
    """exit code, output, CPU seconds and peak RSS in bytes of `mll23 verify release` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED_VERIFY, str(release)], cwd=cwd, capture_output=True,
                          timeout=MAX_SECONDS * 4, env=os.environ.copy())
    stderr = proc.stderr.decode("utf-8", errors="replace")
    peak = [line for line in stderr.splitlines() if line.startswith("PEAK_RSS_KB ")]
    cpu = [line for line in stderr.splitlines() if line.startswith("CPU_SECONDS ")]
    assert peak and cpu, stderr
    output = proc.stdout.decode("utf-8", errors="replace") + stderr.replace(peak[-1], "").replace(cpu[-1], "")
    return proc.returncode, output, float(cpu[-1].split()[1]), int(peak[-1].split()[1]) * 1024


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_verify_refuses_a_bomb_within_time_and_memory(name, scene):
    expect = SUBPROCESS_CASES[name](scene)
    code, output, seconds, rss = _run_measured(scene.release, Path.cwd())
    assert_refused(scene, expect, output, code, seconds)
    assert rss < MAX_RSS_BYTES, f"peak memory {rss:,} bytes"


# ---- publish: hard links, and the same file check -------------------------------------------------------


def test_publish_refuses_a_hard_link_to_a_token_file(hub, token, scene):
    token_file = scene.outside / "token"
    token_file.write_text(token)
    notes = scene.release / "release_notes" / "v0.9.0.md"
    os.link(token_file, notes)  # a hard link is a regular file: only st_nlink tells
    kit.resign(scene.release)
    with pytest.raises(PublishError, match="failed verification") as refused:
        publish(scene.release, "org/hostile", token=token, endpoint=hub.url, log=lambda _: None)
    assert "release_notes/v0.9.0.md: is a hard link" in str(refused.value)
    assert token not in str(refused.value)
    assert hub.requests() == []


def test_publish_refuses_what_verify_refuses_before_any_request(hub, token, scene):
    for name in ("ledger_symlink_to_proc_environ", "fifo_in_place_of_a_listed_shard"):
        release = scene.release.parent / name
        shutil.copytree(scene.release, release, symlinks=True)
        expect = CASES[name](Scene(release, scene.outside, scene.markers))
        with pytest.raises(PublishError) as refused:
            publish(release, "org/hostile", token=token, endpoint=hub.url, log=lambda _: None)
        assert expect.reason in str(refused.value) and SECRET_VALUE not in str(refused.value)
    assert hub.requests() == []


# ---- Parquet page headers ----------------------------------------------------------------------------------


def test_page_headers_are_read_where_pyarrow_wrote_them(good_release, tmp_path):
    """The page walk finds every page of real shards (their declared sizes and headers add up to what the footer
    says) and stops a shard whose pages declare more than the limit."""
    from pipeline.untrusted.parquet_bounds import ParquetLimits, page_headers, page_problem

    for shard in sorted((good_release / "data").glob("*.parquet")):
        meta = pq.read_metadata(shard)
        with open(shard, "rb") as fh:
            assert page_problem(fh, meta, ParquetLimits()) is None
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    column = meta.row_group(g).column(c)
                    pages = list(page_headers(fh, column, shard.stat().st_size))
                    assert sum(length + uncompressed for length, uncompressed, _ in pages) == column.total_uncompressed_size
                    assert sum(length + compressed for length, _, compressed in pages) == column.total_compressed_size
    bomb = tmp_path / "bomb.parquet"
    kit.zstd_parquet_bomb(bomb, value_bytes=1 << 20, rows=8)
    with open(bomb, "rb") as fh:
        problem = page_problem(fh, pq.read_metadata(bomb), ParquetLimits(column_bytes=4 << 20))
    assert problem is not None and "column image.bytes: its pages declare" in problem and "(limit 4,194,304)" in problem


# ---- diff, build --previous, publish --dry-run: they read the same hostile directories -------------------


def _hostile_manifest_link(s: Scene) -> Expect:
    (s.release / "manifest.json").unlink()
    os.symlink("/proc/self/environ", s.release / "manifest.json")
    return Expect("manifest.json", "is a symbolic link")


def _hostile_ledger_fifo(s: Scene) -> Expect:
    (s.release / "ledger.csv").unlink()
    os.mkfifo(s.release / "ledger.csv")  # opening it for reading would block forever
    return Expect("ledger.csv", "is a FIFO")


def _hostile_ledger_link_outside(s: Scene) -> Expect:
    (s.release / "ledger.csv").unlink()
    os.symlink(s.outside / "secret.txt", s.release / "ledger.csv")
    return Expect("ledger.csv", "is a symbolic link")


def _hostile_manifest_deep(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # was a RecursionError traceback
    return Expect("manifest.json", "nested too deeply")


def _hostile_manifest_null(s: Scene) -> Expect:
    (s.release / "manifest.json").write_text("null")  # was an AttributeError traceback
    return Expect("manifest.json", "None is not of type 'object'")


def _hostile_ledger_short_row(s: Scene) -> Expect:
    with open(s.release / "ledger.csv", "a") as fh:
        fh.write("x\n")  # was a TypeError traceback (None + str)
    kit.resign(s.release)
    return Expect("ledger.csv line 14", "1 fields, the header has 9")


def _hostile_retired_without_split(s: Scene) -> Expect:
    kit.edit_manifest(s.release, lambda d: d.update(retired={"0123456789abcdef": {}}))  # was a KeyError traceback
    return Expect("manifest.json: retired/0123456789abcdef", "'split' is a required property")


READER_CASES = {f.__name__.lstrip("_"): f for f in (
    _hostile_manifest_link, _hostile_ledger_fifo, _hostile_ledger_link_outside, _hostile_manifest_deep, _hostile_manifest_null,
    _hostile_ledger_short_row, _hostile_retired_without_split,
)}


def _assert_reader_refused(s: Scene, expect: Expect, result, seconds: float) -> None:
    # diff and build exit 2 for an argument that is not a usable release (their usage errors), verify exits 1
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert_refused(s, expect, result.output, 1, seconds)


@pytest.mark.parametrize("name", sorted(READER_CASES))
def test_diff_refuses_a_hostile_release(name, scene, good_release):
    expect = READER_CASES[name](scene)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["diff", str(good_release), str(scene.release)])
    _assert_reader_refused(scene, expect, result, time.monotonic() - started)


@pytest.mark.parametrize("name", sorted(READER_CASES))
def test_build_previous_refuses_a_hostile_release(name, scene, good_release):
    """`verify --rebuild` finds the previous release beside the one of a pull request: it is as hostile."""
    expect = READER_CASES[name](scene)
    out = scene.outside.parent / "next"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["build", str(good_release.parent / "raw"), "--out", str(out), "--version", "1.1.0",
                                      "--previous", str(scene.release), "--no-cache", "--workers", "1"])
    _assert_reader_refused(scene, expect, result, time.monotonic() - started)
    assert not out.exists()


def test_diff_escapes_what_a_hostile_ledger_says(scene, good_release):
    """A ledger name or reason with a newline, `::error::` or terminal escapes: the Markdown the diff prints (and
    the notes a build writes from it) keep each on one visible line."""
    with open(scene.release / "ledger.csv", "a") as fh:
        fh.write('"x\n::error::forged\x1b[31m.tif",file,a,excluded,"\x1b]0;title\x07",,,,\n')
    result = CliRunner().invoke(app, ["diff", str(good_release), str(scene.release)])
    assert result.exit_code == 0, result.output
    assert "| x\\x0a:\\x3aerror:\\x3aforged\\x1b[31m.tif | (not in the raw input) | excluded: \\x1b]0;title\\x07 |" in result.output
    for line in result.output.splitlines():
        assert not line.startswith("::") and "\x1b" not in line and "\x07" not in line


def test_publish_dry_run_refuses_a_hostile_release_before_any_network_use(scene, monkeypatch):
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use in a test of a hostile release")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUE)
    expect = _hostile_ledger_link_outside(scene)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["publish", str(scene.release), "--repo", "org/hostile", "--dry-run"])
    assert_refused(scene, expect, result.output, result.exit_code, time.monotonic() - started)
    assert attempts == []


# Runs `mll23 verify DIR` with every socket connect and name lookup refused and recorded in a file.
_OFFLINE_VERIFY = r"""
import socket, sys
record = open(sys.argv[2], "a")
def refuse(*args, **kwargs):
    record.write(repr(args[1:] or args) + "\n"); record.flush()
    raise OSError("network use")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
from pipeline.cli import app
app(["verify", sys.argv[1]], prog_name="mll23")
"""


@pytest.mark.parametrize("name", ["good", "croissant_remote_context", "croissant_nested_remote_context", "card_data_files_url"])
def test_verify_uses_no_network(name, scene):
    """mlcroissant can fetch a remote JSON-LD context and `datasets` a data_files URL: neither may be reached,
    on a good release (whose loader checks run) or on one that names a URL."""
    expect = CASES[name](scene) if name != "good" else None
    attempts = scene.markers.parent / "network-attempts"
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_VERIFY, str(scene.release), str(attempts)], capture_output=True,
                          timeout=MAX_SECONDS * 4, env=os.environ.copy(), cwd=Path.cwd())
    output = proc.stdout.decode() + proc.stderr.decode()
    assert not attempts.exists() or attempts.read_text() == "", attempts.read_text()
    if expect is None:
        assert proc.returncode == 0, output
    else:
        assert_refused(scene, expect, output, proc.returncode, 0)


def test_verify_escapes_a_hostile_release_directory_name(scene):
    """The directory name is the CLI argument, and in CI it comes from the pull request too."""
    hostile = scene.release.with_name("rel\n::error::forged\x1b[31m")
    scene.release.rename(hostile)
    (hostile / "ledger.csv").unlink()
    started = time.monotonic()
    result = CliRunner().invoke(app, ["verify", str(hostile)])
    assert_refused(scene, Expect("ledger.csv", "missing from the release"), result.output, result.exit_code, time.monotonic() - started)
    assert "rel\\x0a:\\x3aerror:\\x3aforged\\x1b[31m: " in result.output


def test_verify_notes_dir_that_is_a_symlink_loop(scene):
    loop = scene.outside.parent / "loop"
    os.symlink(loop, loop)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["verify", str(scene.release), "--notes-dir", str(loop)])
    assert_refused(scene, Expect(f"{loop / 'v1.0.0.md'} is missing or not readable", "is a symbolic link: not followed"),
                   result.output, result.exit_code, time.monotonic() - started)
