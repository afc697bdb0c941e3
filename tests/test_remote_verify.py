"""`mll23 verify hf://datasets/ORG/NAME@vX.Y.Z` against the local Hub: passes on a published release reading a
fraction of it, fails naming the file when the server's copy is tampered with (its metadata or its bytes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.build import build_release
from pipeline.cli import app
from pipeline.lifecycle.publish.steps import publish
from pipeline.lifecycle.verify.remote import RemoteError, parse_url, verify_remote
from tests.consumerkit import small_shards
from tests.rawkit import simple_raw

REPO = "org/mll23"
URL = f"hf://datasets/{REPO}@v1.0.0"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def published(hub, token, tmp_path, config):
    """A real build (several Parquet shards of several row groups) published to the local Hub."""
    raw = tmp_path / "raw"
    simple_raw(raw, ["myeloblast", "monocyte", "basophil"], per_class=14)
    release = build_release(raw, tmp_path / "release", small_shards(config), workers=1).out_dir
    publish(release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    hub.clear_log()
    return release


def release_bytes(release: Path) -> int:
    return sum(p.stat().st_size for p in release.rglob("*") if p.is_file())


def shards(release: Path) -> list[str]:
    return sorted(p.relative_to(release).as_posix() for p in (release / "data").glob("*.parquet"))


def test_remote_verify_passes_reading_a_fraction(hub, token, published, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", token)
    groups = sum(pq.ParquetFile(published / s).metadata.num_row_groups for s in shards(published))
    assert len(shards(published)) >= 2 and groups >= 4

    result = CliRunner().invoke(app, ["verify", URL, "--endpoint", hub.url, "--sample", "3"])

    assert result.exit_code == 0, result.output
    assert "passed" in result.output and "images)" in result.output
    assert "streaming load_dataset smoke test done" in result.output
    with_smoke = sum(r.bytes_out for r in hub.requests())
    hub.clear_log()
    report = verify_remote(URL, endpoint=hub.url, token=token, sample=3, smoke=False)
    served = sum(r.bytes_out for r in hub.requests())
    total = release_bytes(published)
    large = sum((published / s).stat().st_size for s in shards(published))
    assert report.failures == [] and 3 <= report.images_checked <= 6 < report.rows_total
    by_metadata = [*shards(published), *(published / "wds").glob("*.tar"), *(published / "sample").glob("*.parquet")]
    assert report.checked_by_metadata == len(by_metadata)  # every shard of both formats and of the sample config
    assert set(report.downloaded) >= {"manifest.json", "README.md", "croissant.json", "ledger.csv"}
    with capsys.disabled():
        print(f"\nremote verify, sample 3: {served:,} B served of a {total:,} B release ({served / total:.1%});"
              f" Parquet {large:,} B; {report.row_groups_read} of {groups} row groups read; with the streaming"
              f" smoke test {with_smoke:,} B ({with_smoke / total:.1%})")
    assert served < 0.5 * total  # the tars are never read, and one row group of the Parquet

    every = CliRunner().invoke(app, ["verify", f"hf://datasets/{REPO}", "--endpoint", hub.url, "--sample", "1"])
    assert every.exit_code == 0, every.output
    assert f"verifying {URL}" in every.output and f"{URL}: passed" in every.output


def test_remote_verify_names_a_shard_whose_sha256_the_hub_misstates(hub, token, published):
    repo = hub.get_repo(REPO)
    commit = repo.commits[repo.tags["v1.0.0"]]
    target = shards(published)[0]
    tree = dict(commit.tree)
    tree[target] = dataclasses.replace(tree[target], lfs_oid="0" * 64)
    repo.commits[commit.id] = dataclasses.replace(commit, tree=MappingProxyType(tree))

    report = verify_remote(URL, endpoint=hub.url, token=token, sample=3)

    assert f"{target}: sha256 on the Hub 000000000000, manifest.json says" in "\n".join(report.failures)


def test_remote_verify_names_the_row_of_a_tampered_shard(hub, token, published, monkeypatch):
    """The server's bytes of a shard changed under the sha256 it records (same size): one byte in the middle of
    the first image's pixels."""
    repo = hub.get_repo(REPO)
    target = shards(published)[-1]
    oid = hub.tree(REPO, "v1.0.0")[target].lfs_oid
    first = pq.read_table(published / target).column("image").to_pylist()[0]["bytes"]
    data = bytearray(repo.lfs[oid])
    at = data.find(first) + len(first) // 2  # image bytes are stored uncompressed
    data[at] ^= 0xFF
    repo.lfs[oid] = bytes(data)
    monkeypatch.setenv("HF_TOKEN", token)

    result = CliRunner().invoke(app, ["verify", URL, "--endpoint", hub.url, "--sample", "all"])

    assert result.exit_code == 1
    # a flipped byte inside a PNG's compressed stream breaks the decode; in an uncompressed TIFF it changes a pixel
    assert (f"{target} row group 0 row 0: the image's pixels hash to" in result.output
            or f"{target} row group 0 row 0: the image does not decode" in result.output), result.output
    assert "1 problem(s)" in result.output


def test_remote_verify_refuses_bad_urls_and_names_missing_revisions(hub, token, published):
    for url in ("hf://models/org/x@v1", "hf://datasets/org/x", "hf://datasets/../x@v1", "https://x/y@v1"):
        with pytest.raises(RemoteError, match="is not hf://datasets/ORG/NAME@REVISION"):
            parse_url(url)
    with pytest.raises(RemoteError, match="has no tag or branch v9.9.9"):
        verify_remote(f"hf://datasets/{REPO}@v9.9.9", endpoint=hub.url, token=token)
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["version"] == "1.0.0"
