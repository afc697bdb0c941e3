"""`mll23 verify`: passes on a fresh release, fails naming the problem on each tampered copy."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import pipeline
from pipeline.build import build_release
from pipeline.cli import app
from pipeline.config import load_config, validate_config
from pipeline.release.layout import file_entries, read_manifest
from pipeline.resources import ci_workflow_text
from pipeline.lifecycle.verify import CHECKS, HubLimits, listed_file_problems, run_checks, verify_release
from tests.rawkit import crop, save, simple_raw

LABELS = ["myeloblast", "monocyte", "eosinophil"]
FAST = ("load-datasets",)  # tampered copies: the integrity checks are what is tested there


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    simple_raw(base / "raw", LABELS, per_class=6)
    shipped = load_config(version="1.0.0")
    # one shard per split: the tampering tests below edit "the" shard of a split
    config = validate_config({**shipped.raw, "shards": {**shipped.raw["shards"], "min_shards_per_split": 1}}, "test config")
    build_release(base / "raw", base / "releases" / "v1.0.0", config, workers=1, notes_dir=base / "release_notes")
    return base


@pytest.fixture
def release(built, tmp_path):
    """A private copy of the fresh release, to tamper with."""
    copy = tmp_path / "release"
    shutil.copytree(built / "releases" / "v1.0.0", copy)
    return copy


def resign(release) -> None:
    """Rewrite the manifest's checksums, as a careless or malicious edit would: only the other checks can tell."""
    manifest = read_manifest(release)
    manifest["files"] = file_entries(release)
    (release / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def messages(release, **options) -> list[str]:
    return [str(f) for f in verify_release(release, **options)]


def shard(release, split="train"):
    (path,) = sorted((release / "data").glob(f"{split}-*.parquet"))
    return path


def rewrite_shard(path, edit) -> None:
    table = pq.read_table(path)
    rows = edit(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def test_fresh_release_passes_every_check(built):
    results = run_checks(built / "releases" / "v1.0.0")
    assert [r.name for r in results] == [c.name for c in CHECKS]
    assert [f for r in results for f in r.failures] == []
    result = CliRunner().invoke(app, ["verify", str(built / "releases" / "v1.0.0")])
    assert result.exit_code == 0, result.output
    assert f"all {len(results)} checks passed" in result.output


def test_flipped_byte_in_a_shard(release):
    path = shard(release)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rel = path.relative_to(release).as_posix()
    found = messages(release, skip=FAST)
    assert any(m.startswith(f"[files] {rel}: sha256 is ") and "changed after the build" in m for m in found), found
    result = CliRunner().invoke(app, ["verify", str(release)])
    assert result.exit_code == 1 and f"{rel}: sha256 is" in result.output and "FAIL files" in result.output


def test_deleted_file(release):
    (release / "ledger.csv").unlink()
    found = messages(release, skip=FAST)
    assert "[files] ledger.csv is listed in manifest.json but missing from the release" in found
    assert "[ledger] ledger.csv is missing" in found


def test_added_file(release):
    (release / "data" / "notes.txt").write_text("scratch")
    assert messages(release, skip=FAST) == [
        "[files] data/notes.txt is in the release but not listed in manifest.json (remove it, or rebuild)"
    ]


def test_a_caller_that_hashed_the_files_still_has_their_names_held_to_the_format(release):
    """`mll23 publish` makes the pass over the files' bytes itself (`listed_file_problems`, hard links refused) and
    runs verify with files_hashed: verify reads no byte of them again, but still refuses a name a loader acts on."""
    (release / "dataset_infos.json").write_text("{}")
    resign(release)
    figure = sorted((release / "figures").glob("*.png"))[0]
    data = bytearray(figure.read_bytes())
    data[len(data) // 2] ^= 0xFF  # no check but the pass over the bytes reads a figure
    figure.write_bytes(bytes(data))
    rel = figure.relative_to(release).as_posix()
    layout = "[files] dataset_infos.json: listed in manifest.json but not a file of the release format (see the README's output layout)"
    found = messages(release, skip=FAST, files_hashed=True)
    assert layout in found and not any(rel in m for m in found), found
    assert any(m.startswith(f"[files] {rel}: sha256 is ") for m in messages(release, skip=FAST))
    hashed = listed_file_problems(release, read_manifest(release), allow_hard_links=False)
    assert [m for m in hashed if m.startswith(f"{rel}: sha256 is ")] and not any("dataset_infos" in m for m in hashed)


@pytest.mark.parametrize("sign", [False, True], ids=["as-edited", "manifest-resigned"])
def test_edited_count_in_the_card(release, sign):
    card = release / "README.md"
    text = card.read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    train = next(s["num_examples"] for s in header["dataset_info"]["splits"] if s["name"] == "train")
    card.write_text(text.replace(f"num_examples: {train}\n", f"num_examples: {train + 1}\n", 1))
    if sign:
        resign(release)
    found = messages(release, skip=FAST)
    assert f"[counts] README.md: YAML dataset_info.splits train num_examples is {train + 1}, but the shards hold {train}" in found
    assert any(m.startswith("[files] README.md: sha256 is") for m in found) is not sign


def test_edited_count_in_the_card_table(release):
    card = release / "README.md"
    lines = card.read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith("| monocyte |"))
    cells = lines[i].split(" | ")
    test_count = int(cells[-1].rstrip(" |\n"))
    cells[-1] = f"{test_count + 5} |\n"  # the test column
    lines[i] = " | ".join(cells)
    card.write_text("".join(lines))
    resign(release)
    found = messages(release, skip=FAST)
    assert any(m.startswith("[counts] README.md: class table, row monocyte, column test says") for m in found), found
    # croissant.json lists the card's sha256 too, and a re-signed manifest does not fool it
    (croissant,) = [m for m in found if not m.startswith("[counts]")]
    assert croissant.startswith("[croissant] croissant.json: sha256 of README.md is"), found


def test_duplicated_row(release):
    path = shard(release)
    rewrite_shard(path, lambda rows: rows + rows[:1])
    resign(release)
    first = pq.read_table(path).to_pylist()[0]
    rel = path.relative_to(release).as_posix()
    found = messages(release, skip=FAST)
    assert f"[unique] image_id {first['image_id']} appears 2 times: {rel} row 0, {rel} row {pq.read_metadata(path).num_rows - 1}" in found
    assert any(m.startswith("[counts] manifest.json: splits.train.num_examples is") for m in found)
    assert any(m.startswith(f"[ledger] image {first['image_id']}") and "published in 2 row(s) but has 1 kept row(s)" in m for m in found)


def test_patient_in_two_splits(release):
    train_patient = pq.read_table(shard(release, "train")).to_pylist()[0]["patient_id"]

    def adopt(rows):
        rows[0]["patient_id"] = train_patient
        return rows

    rewrite_shard(shard(release, "test"), adopt)
    resign(release)
    found = messages(release, skip=FAST)
    assert any(m.startswith(f"[splits] patient {train_patient} is in 2 splits (") for m in found), found


def test_record_against_the_schema_and_its_pixels(release):
    def damage(rows):
        rows[0]["phash"] = "not-hex"
        rows[1]["image"] = dict(rows[1]["image"], bytes=rows[2]["image"]["bytes"])  # another image's bytes
        return rows

    rewrite_shard(shard(release), damage)
    resign(release)
    found = messages(release, skip=FAST)
    rel = shard(release).relative_to(release).as_posix()
    assert f"[records] {rel} row 0: record schema: phash: 'not-hex' does not match '^[0-9a-f]{{16}}$'" in found
    assert any(m.startswith(f"[records] {rel} row 1: the image's pixels hash to") for m in found)


def test_hub_limits(release):
    found = messages(release, skip=FAST, limits=HubLimits(max_row_group_bytes=1000, max_entries_per_folder=2))
    rel = shard(release).relative_to(release).as_posix()
    assert any(m.startswith(f"[hub-limits] {rel} row group 0 is ") and "refuses row groups over 1,000" in m for m in found)
    assert "[hub-limits] data/ holds 3 files; the Hub takes at most 2 per folder" in found


def test_missing_manifest_is_one_clear_failure(release):
    (release / "manifest.json").unlink()
    assert messages(release) == ["[manifest] manifest.json is missing: nothing can be checked without it"]
    result = CliRunner().invoke(app, ["verify", str(release)])
    assert result.exit_code == 1 and "1 of 1 checks failed" in result.output


def test_rebuild_is_byte_identical_and_notices_changed_raw(built, tmp_path):
    release = built / "releases" / "v1.0.0"
    assert messages(release, rebuild_raw=built / "raw", skip=CHECKS_BUT_REBUILD) == []
    raw = tmp_path / "raw"
    shutil.copytree(built / "raw", raw)
    save(raw / "monocyte" / "cell_003.tif", crop(4242))  # same name, other pixels
    found = messages(release, rebuild_raw=raw, skip=CHECKS_BUT_REBUILD)
    assert found[0].startswith(f"[rebuild] {raw} is not the raw input this release was built from: its raw_fingerprint is")
    assert "[rebuild] ledger.csv differs from the rebuild from " + str(raw) in found
    assert "[rebuild] manifest.json differs from the rebuild from " + str(raw) in found
    result = CliRunner().invoke(app, ["verify", str(release), "--rebuild", str(raw), "--workers", "1"])
    assert result.exit_code == 1 and "FAIL rebuild" in result.output


def test_rebuild_of_a_later_release_finds_its_base_beside_it(built, tmp_path):
    releases = tmp_path / "releases"
    shutil.copytree(built / "releases", releases)
    raw = tmp_path / "raw"
    shutil.copytree(built / "raw", raw)
    save(raw / "eosinophil" / "extra.tif", crop(777))
    lines = (raw / "annotations.csv").read_text() + "eosinophil/extra.tif,eosinophil,P20,E2,false\n"
    (raw / "annotations.csv").write_text(lines)
    build_release(raw, releases / "v1.1.0", load_config(version="1.1.0"), workers=1, previous=releases / "v1.0.0")
    assert messages(releases / "v1.1.0", rebuild_raw=raw, skip=CHECKS_BUT_REBUILD) == []
    lonely = tmp_path / "lonely"
    shutil.copytree(releases / "v1.1.0", lonely)
    found = messages(lonely, rebuild_raw=raw, skip=CHECKS_BUT_REBUILD)
    assert len(found) == 1 and "was built on v1.0.0" in found[0] and "pass --previous" in found[0]
    assert messages(lonely, rebuild_raw=raw, previous=releases / "v1.0.0", skip=CHECKS_BUT_REBUILD) == []


CHECKS_BUT_REBUILD = tuple(c.name for c in CHECKS)


def test_ci_workflow_verifies_the_releases_a_pull_request_changes(built, tmp_path):
    """Run the workflow's pull-request step as GitHub would, with `mll23` on PATH, on a checkout whose pull
    request adds a release (the base branch holds only the notes)."""
    workflow = yaml.safe_load(ci_workflow_text())
    assert "@MLL23_PIPELINE@" not in json.dumps(workflow)
    assert workflow["env"]["MLL23_PIPELINE"].startswith("mll23-pipeline[croissant,webdataset]==")
    (step,) = [s for s in workflow["jobs"]["pull-request"]["steps"] if s.get("id") == "verify"]
    repo = tmp_path / "repo"
    shutil.copytree(built / "release_notes", repo / "release_notes")

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "notes")
    git("update-ref", "refs/remotes/origin/main", "HEAD")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "mll23"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from pipeline.cli import app; app()' \"$@\"\n")
    (bin_dir / "git-lfs").write_text("#!/bin/sh\nexit 0\n")  # the files are in the local checkout already
    for tool in (shim, bin_dir / "git-lfs"):
        tool.chmod(0o755)
    env = {**os.environ, **{k: str(v) for k, v in workflow["env"].items()}, "GITHUB_BASE_REF": "main"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(Path(pipeline.__file__).resolve().parent.parent)  # this checkout's package

    def run():
        return subprocess.run(["bash", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=300)

    unchanged = run()
    assert unchanged.returncode == 0 and "this pull request changes no release under releases/" in unchanged.stdout
    shutil.copytree(built / "releases", repo / "releases")
    git("add", "-A")
    git("commit", "-qm", "release")
    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "::group::mll23 verify releases/v1.0.0" in ok.stdout and f"all {len(CHECKS) + 1} checks passed" in ok.stdout
    (repo / "releases" / "v1.0.0" / "stray.bin").write_bytes(b"x")
    git("add", "-A")
    git("commit", "-qm", "stray")
    bad = run()
    assert bad.returncode == 1
    assert "stray.bin is in the release but not listed in manifest.json" in bad.stdout
    assert "::error title=mll23 verify::releases/v1.0.0 failed verification" in bad.stdout


def test_webdataset_and_croissant_checks_run_only_where_their_files_exist(release):
    names = [r.name for r in run_checks(release, skip=FAST)]
    assert "load-webdataset" in names and "load-croissant" in names
    shutil.rmtree(release / "wds")
    (release / "croissant.json").unlink()
    names = [r.name for r in run_checks(release, skip=FAST)]
    assert "load-webdataset" not in names and "load-croissant" not in names


def test_a_sample_missing_from_the_tars(release):
    (tar_path,) = sorted((release / "wds").glob("test-*.tar"))
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = members[0][0].name.split(".")[0]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if not member.name.startswith(dropped + "."):
                tar.addfile(member, io.BytesIO(data))
    resign(release)
    expected = read_manifest(release)["splits"]["test"]["num_examples"]
    pattern = read_manifest(release)["splits"]["test"]["webdataset"]["pattern"]
    found = messages(release, skip=CHECKS_BUT_WDS, full_load_max_bytes=0)  # streaming counts every row
    assert any(m.startswith(f"[load-webdataset] datasets.load_dataset({str(release / 'wds')!r}, streaming=True)") for m in found)
    found += messages(release, skip=CHECKS_BUT_WDS)
    assert f"[load-webdataset] webdataset {pattern}: {expected - 1} samples, the manifest says {expected}" in found
    assert f"[load-webdataset] webdataset {pattern}: sample {dropped} is only in the Parquet shards" in found
    wds = str(release / "wds")
    assert f"[load-webdataset] datasets.load_dataset({wds!r}) fails: NonMatchingSplitsSizesError" in "\n".join(found)
    assert f"[load-webdataset] datasets.load_dataset({wds!r}, streaming=True): test has {expected - 1} rows, the manifest says {expected}" in found


def test_croissant_of_another_version(release):
    path = release / "croissant.json"
    doc = json.loads(path.read_text())
    doc["version"] = "9.9.9"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    resign(release)
    assert messages(release, skip=CHECKS_BUT_CROISSANT) == ["[croissant] croissant.json: version is 9.9.9, manifest.json says 1.0.0"]


CHECKS_BUT_WDS = tuple(c.name for c in CHECKS if c.name != "load-webdataset")
CHECKS_BUT_CROISSANT = tuple(c.name for c in CHECKS if c.name != "croissant")


def test_large_release_is_loaded_by_streaming_every_row(release):
    """Above full_load_max_bytes only streaming runs, and it counts every row: a missing row is still caught."""
    assert messages(release, skip=CHECKS_BUT_LOAD, full_load_max_bytes=0) == []
    path = shard(release, "test")
    rewrite_shard(path, lambda rows: rows[1:])
    expected = read_manifest(release)["splits"]["test"]["num_examples"]
    found = messages(release, skip=CHECKS_BUT_LOAD, full_load_max_bytes=0)
    assert found == [
        f"[load-datasets] datasets.load_dataset({str(release)!r}, streaming=True): test has {expected - 1} rows, the manifest says {expected}"
    ]


CHECKS_BUT_LOAD = tuple(c.name for c in CHECKS if c.name != "load-datasets")
