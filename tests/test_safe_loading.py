"""README's "Loading a release" block, run as written on hostile copies of a release: nothing planted runs.

The planted payloads are live: the controls show the same pickle members running under webdataset's
`.decode("pil")`, and the same EPS image starting the fake Ghostscript under an unrestricted Pillow.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build import build_release
from pipeline.release.card import loading_safely_section
from pipeline.release.layout import read_manifest
from tests.consumerkit import mixed_format_raw

README = Path(__file__).resolve().parent.parent / "README.md"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 288 288\n%%EndComments\nshowpage\n%%EOF\n"


class _Unpickled:
    """Unpickling this creates the file `marker`: proof that a pickle member was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def readme_block() -> str:
    section = README.read_text(encoding="utf-8").split("## Loading a release", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory, config) -> Path:
    base = tmp_path_factory.mktemp("safe-loading")
    mixed_format_raw(base / "raw")
    build_release(base / "raw", base / "release", config, workers=1)
    return base / "release"


@pytest.fixture
def copy(good, tmp_path) -> Path:
    release = tmp_path / "release"
    shutil.copytree(good, release)
    return release


@pytest.fixture
def fake_gs(tmp_path) -> tuple[Path, Path]:
    """A `gs` first on PATH that leaves a marker when anything starts it."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-started"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    return bin_dir, marker


RUNNER = """
import json, sys
scope = {"DIR": sys.argv[2]}
exec(compile(open(sys.argv[1], encoding="utf-8").read(), "README.md: Loading a release", "exec"), scope)
print(json.dumps({"parquet": scope["parquet"]["train"].num_rows, "wds": sum(1 for _ in scope["ds"]),
                  "records": sum(1 for _ in scope["records"])}))
"""


def run_readme(release: Path, tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """The README block in a fresh Python, as a consumer runs it: a clean environment, `bin_dir` first on PATH."""
    code = tmp_path / "readme_block.py"
    code.write_text(readme_block(), encoding="utf-8")
    home = tmp_path / "home"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_DATASETS_CACHE": str(home / "hf_datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    return subprocess.run([sys.executable, "-c", RUNNER, str(code), str(release)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def _error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    return run.stderr.strip().splitlines()[-1]


def _first_train_tar(release: Path) -> Path:
    return release / read_manifest(release)["splits"]["train"]["webdataset"]["shards"][0]["path"]


def _rewrite_tar(path: Path, change) -> None:
    """Rewrite a shard member by member; change(members) returns the new (TarInfo, bytes) list."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in change(members):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _plant_pickles(release: Path, markers: dict[str, Path]) -> None:
    """After the first sample's members: `<key>.pyd`, `<key>.pickle`, ... each a pickle that creates its marker."""

    def change(members):
        key = members[0][0].name.split(".", 1)[0]
        last = max(i for i, (m, _) in enumerate(members) if m.name.split(".", 1)[0] == key)
        planted = []
        for suffix, marker in markers.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.mtime, info.mode = members[0][0].mtime, 0o644
            planted.append((info, pickle.dumps(_Unpickled(marker))))
        return members[: last + 1] + planted + members[last + 1 :]

    _rewrite_tar(_first_train_tar(release), change)


def test_the_block_loads_a_good_release(good, tmp_path, fake_gs):
    run = run_readme(good, tmp_path, fake_gs[0])
    assert run.returncode == 0, run.stderr
    manifest = read_manifest(good)
    train = manifest["splits"]["train"]["num_examples"]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"parquet": train, "wds": train, "records": manifest["counts"]["ledger"]["kept"]}
    assert not fake_gs[1].exists()


def test_pickle_members_are_never_unpickled(copy, tmp_path, fake_gs):
    markers = {suffix: tmp_path / f"unpickled-{suffix}" for suffix in ("pyd", "pickle", "pkl")}
    _plant_pickles(copy, markers)
    run = run_readme(copy, tmp_path, fake_gs[0])
    assert run.returncode == 0, run.stderr  # the planted members are simply not part of any sample tuple
    train = read_manifest(copy)["splits"]["train"]["num_examples"]
    assert json.loads(run.stdout.strip().splitlines()[-1])["wds"] == train
    assert [m.name for m in markers.values() if m.exists()] == []


def test_control_the_planted_pickles_run_under_decode(copy, tmp_path):
    """What the README used to say: `.decode("pil")` unpickles the planted members."""
    import webdataset as wds

    markers = {suffix: tmp_path / f"unpickled-{suffix}" for suffix in ("pyd", "pickle")}
    _plant_pickles(copy, markers)
    for _ in wds.WebDataset(str(_first_train_tar(copy)), shardshuffle=False).decode("pil").to_tuple("png", "cls", "json"):
        pass
    assert all(m.exists() for m in markers.values())


def test_an_eps_image_in_a_tar_never_reaches_ghostscript(copy, tmp_path, fake_gs):
    def change(members):
        (index,) = [i for i, (m, _) in enumerate(members) if m.name.endswith((".tif", ".png"))][:1]
        return [(m, EPS if i == index else data) for i, (m, data) in enumerate(members)]

    _rewrite_tar(_first_train_tar(copy), change)
    line = _error_line(run_readme(copy, tmp_path, fake_gs[0]))
    assert line.startswith("PIL.UnidentifiedImageError: cannot identify image file"), line
    assert not fake_gs[1].exists()


def test_an_eps_image_in_a_parquet_shard_never_reaches_ghostscript(copy, tmp_path, fake_gs):
    path = copy / read_manifest(copy)["splits"]["train"]["parquet"][0]
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[0] = {"bytes": EPS, "path": images[0]["path"]}
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, type=table.schema.field("image").type))
    pq.write_table(table, path)
    line = _error_line(run_readme(copy, tmp_path, fake_gs[0]))
    assert line.startswith("PIL.UnidentifiedImageError: cannot identify image file"), line
    assert not fake_gs[1].exists()


def test_control_an_unrestricted_pillow_starts_the_fake_ghostscript(fake_gs, tmp_path):
    script = "import io, sys\nfrom PIL import Image\ntry:\n    Image.open(io.BytesIO(sys.stdin.buffer.read())).load()\nexcept Exception:\n    pass\n"
    env = {"PATH": f"{fake_gs[0]}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], input=EPS, env=env, capture_output=True, timeout=60, check=True)
    assert fake_gs[1].exists()


def test_a_pipe_shard_name_is_refused_before_webdataset_sees_it(copy, tmp_path, fake_gs):
    marker = tmp_path / "pipe-ran"
    manifest = read_manifest(copy)
    shard = manifest["splits"]["train"]["webdataset"]["shards"][0]
    shard["path"] = f"{shard['path']}::pipe:touch {marker}"
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    line = _error_line(run_readme(copy, tmp_path, fake_gs[0]))
    assert line.startswith("ValueError: manifest.json lists files outside the release layout: ['wds/train-000000.tar::pipe:touch"), line
    assert not marker.exists()


def _first_file_object(doc: dict) -> dict:
    return next(f for f in doc["distribution"] if f["@type"] == "cr:FileObject")


@pytest.mark.parametrize(
    "plant",
    [
        lambda doc: _first_file_object(doc).update(contentUrl="http://127.0.0.1:9/x.parquet"),
        lambda doc: _first_file_object(doc).update(contentUrl="/etc/passwd"),
        lambda doc: _first_file_object(doc).update(contentUrl="../outside/secret.parquet"),
        lambda doc: doc["distribution"][-1].update(includes=["../../**/*.parquet"]),
        lambda doc: doc["distribution"][-1].update(includes="../outside/*.parquet"),
        lambda doc: _first_file_object(doc).update(containedIn={"@id": "archive.zip"}),
        lambda doc: doc.update({"@context": "http://127.0.0.1:9/context.jsonld"}),
        lambda doc: doc["@context"].update({"@import": "http://127.0.0.1:9/context.jsonld"}),
        lambda doc: doc["recordSet"][0].update({"@context": "http://127.0.0.1:9/context.jsonld"}),
        lambda doc: doc.update(isLiveDataset=True),
    ],
    ids=["http URL", "absolute path", "dot-dot", "glob leaving the release", "glob as one string", "archive", "remote context",
         "imported context", "nested context", "live dataset"],
)
def test_croissant_naming_anything_outside_the_release_is_refused(copy, tmp_path, fake_gs, plant):
    path = copy / "croissant.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    plant(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    line = _error_line(run_readme(copy, tmp_path, fake_gs[0]))
    assert line == f"ValueError: {path} refers to something outside the release", line


def test_the_card_says_how_to_load_safely(good, config):
    card = (good / "README.md").read_text(encoding="utf-8")
    section = loading_safely_section(config)
    assert section in card
    for advice in ("mll23 verify", 'formats=["PNG", "TIFF", "JPEG"]', "never call `.decode(...)`", "unpickle", "pipe:", "Image(decode=False)", "croissant.json"):
        assert advice in section, advice
