"""`mll23 publish` on a release made by the real build, read back with the real `datasets` from the local Hub."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.build import build_release
from pipeline.cli import app
from tests.rawkit import simple_raw

REPO = "org/mll23-cli"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def built_release(tmp_path, config):
    raw = tmp_path / "raw"
    simple_raw(raw, ["myeloblast", "monocyte", "basophil"], per_class=7)
    return build_release(raw, tmp_path / "release", config, workers=1).out_dir


def test_cli_publish_dry_run_then_publish_then_load_by_tag(hub, token, built_release, run_consumer, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)
    runner = CliRunner()
    dry = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--dry-run", "--endpoint", hub.url])
    assert dry.exit_code == 0, dry.output
    first_shard = json.loads((built_release / "manifest.json").read_text())["splits"]["train"]["parquet"][0]
    assert first_shard in dry.output and "nothing was changed" in dry.output
    assert ("dataset", REPO) not in hub.repos  # a dry run creates nothing
    assert token not in dry.output

    first = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--endpoint", hub.url])
    assert first.exit_code == 0, first.output
    assert f"published {REPO} v1.0.0" in first.output and token not in first.output
    assert hub.get_repo(REPO).tags["v1.0.0"]

    again = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--endpoint", hub.url])
    assert again.exit_code == 0 and "nothing to do" in again.output

    manifest = json.loads((built_release / "manifest.json").read_text())
    loaded = run_consumer(REPO, [{"revision": "v1.0.0", "files": ["ledger.csv"]}])["v1.0.0"]
    expected = {s: v["num_examples"] for s, v in manifest["splits"].items() if v["num_examples"]}
    assert {s: v["num_rows"] for s, v in loaded["splits"].items()} == expected
    assert loaded["splits"]["train"]["features"]["label"] == "ClassLabel"
    assert loaded["splits"]["train"]["features"]["image"] == "Image"
    ledger_sha = next(f["sha256"] for f in manifest["files"] if f["path"] == "ledger.csv")
    assert loaded["files"]["ledger.csv"] == ledger_sha


def test_cli_publish_refuses_a_tampered_release(hub, token, built_release, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)
    shard = built_release / json.loads((built_release / "manifest.json").read_text())["splits"]["train"]["parquet"][0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["publish", str(built_release), "--repo", REPO, "--endpoint", hub.url])
    assert result.exit_code == 1
    assert "failed verification" in result.output and shard.name in result.output
    assert ("dataset", REPO) not in hub.repos


def test_cli_publish_usage_errors(built_release, tmp_path):
    runner = CliRunner()
    bad_repo = runner.invoke(app, ["publish", str(built_release), "--repo", "no-slash"])
    assert bad_repo.exit_code == 2 and "ORG/NAME" in bad_repo.output
    not_release = runner.invoke(app, ["publish", str(tmp_path), "--repo", "org/x"])
    assert not_release.exit_code == 2 and "no manifest.json" in not_release.output
