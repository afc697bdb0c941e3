"""Publishing a real build: the token appears nowhere, nothing from outside RAW or the build directory is uploaded,
and a new Hub repository is public unless a private one is asked for. Runs against the local Hub of tests/hubserver.py."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi
from typer.testing import CliRunner

from pipeline.release.layout import dumps_json, read_manifest
from pipeline.build import build_release
from pipeline.cli import app
from pipeline.lifecycle.publish.plan import PublishError
from pipeline.lifecycle.publish.steps import publish
from tests.rawkit import crop, save, simple_raw

REPO = "org/mll23-security"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _release_text(release: Path) -> str:
    """Everything a reader of the release can see as text: text files, Parquet strings and key-value metadata."""
    parts = []
    for path in sorted(release.rglob("*")):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            parts += [str(table.schema.metadata), *(str(v) for c in table.column_names if c != "image" for v in table.column(c).to_pylist())]
            parts += [str(img["path"]) for img in table.column("image").to_pylist()]
        elif path.is_file():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    simple_raw(raw, ["myeloblast", "monocyte"], per_class=4)
    save(tmp_path / "outside" / "secret.tif", crop(4242))
    os.symlink(tmp_path / "outside" / "secret.tif", raw / "myeloblast" / "secret.tif")
    return raw


def test_token_nowhere_and_only_release_files_uploaded(hub, token, raw, tmp_path, config, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", token)  # present during the build too: the build must neither read nor keep it
    release = tmp_path / "release"
    build_release(raw, release, config, workers=1)
    before = _tree(release)
    caplog.set_level(logging.DEBUG, logger="pipeline")
    caplog.set_level(logging.INFO, logger="huggingface_hub")
    cli = CliRunner().invoke(app, ["publish", str(release), "--repo", REPO, "--endpoint", hub.url])  # token from HF_TOKEN
    assert cli.exit_code == 0, cli.output
    tag = "v" + read_manifest(release)["version"]

    assert _tree(release) == before  # publishing writes nothing into the release
    assert not any(p.is_symlink() for p in release.rglob("*"))
    on_hub = {path: hashlib.sha256(hub.file_bytes(REPO, path, tag)).hexdigest() for path in hub.tree(REPO, tag) if path != ".gitattributes"}
    assert on_hub == before  # exactly the release's files, nothing more

    captured = capsys.readouterr()
    hub_files = b"".join(hub.file_bytes(REPO, path, tag) for path in hub.tree(REPO, tag))
    places = {
        "mll23 publish output": cli.output, "stdout": captured.out, "stderr": captured.err, "logging": caplog.text,
        "release": _release_text(release), "ledger": (release / "ledger.csv").read_text(encoding="utf-8"),
        "files on the Hub": hub_files.decode("utf-8", errors="replace"), "server log": hub.format_log(),
    }
    for where, text in places.items():
        assert token not in text, f"token in {where}"
    release_text = places["release"]
    for local in (str(raw), str(tmp_path), str(release)):  # no path of the build machine is published
        assert local not in release_text
    secret = hashlib.sha256(crop(4242).tobytes()).hexdigest()
    assert secret not in release_text and "secret.tif" in places["ledger"]  # refused (ledgered), never published


def test_new_repository_is_public_by_default(hub, token, raw, tmp_path, config, monkeypatch):
    release = tmp_path / "release"
    build_release(raw, release, config, workers=1)
    monkeypatch.setenv("HF_TOKEN", token)
    runner = CliRunner()
    assert "default: public" in " ".join(runner.invoke(app, ["publish", "--help"]).output.split())
    assert runner.invoke(app, ["publish", str(release), "--repo", REPO, "--endpoint", hub.url]).exit_code == 0
    assert hub.get_repo(REPO).private is False
    assert HfApi(endpoint=hub.url, token=False).dataset_info(REPO).private is False  # anyone can read it
    assert runner.invoke(app, ["publish", str(release), "--repo", "org/closed", "--private", "--endpoint", hub.url]).exit_code == 0
    assert hub.get_repo("org/closed").private is True


@pytest.mark.parametrize("tamper", ["symlink listed in the manifest", "path escaping the release", "unlisted extra file"])
def test_publish_refuses_files_from_outside_the_build_before_any_request(hub, token, raw, tmp_path, config, tamper):
    release = tmp_path / "release"
    build_release(raw, release, config, workers=1)
    outside = tmp_path / "outside" / "private-notes.txt"
    outside.write_text("not for publication")
    doc = read_manifest(release)
    if tamper == "symlink listed in the manifest":
        os.symlink(outside, release / "data" / "notes.txt")
        doc["files"].append({"path": "data/notes.txt", "size": outside.stat().st_size, "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()})
        expected = "data/notes.txt: is a symbolic link (pointing elsewhere: not followed); a release holds only regular files"
    elif tamper == "path escaping the release":
        doc["files"].append({"path": "../outside/private-notes.txt", "size": outside.stat().st_size, "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()})
        expected = f"files[{len(doc['files']) - 1}].path ../outside/private-notes.txt has a '..' component (paths must stay inside the release)"
    else:
        (release / "notes.txt").write_text("stray")
        expected = "notes.txt is in the release but not listed in manifest.json"
    (release / "manifest.json").write_text(dumps_json(doc), encoding="utf-8")
    with pytest.raises(PublishError, match="failed verification") as refused:
        publish(release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    assert expected in str(refused.value)
    assert hub.requests() == []  # refused before talking to the Hub
