"""`publish` over Xet when the server offers it (tests/hubserver.py in Xet mode, a `local://` CAS), over LFS when it
does not or when the user sets HF_HUB_DISABLE_XET; what is uploaded is what was verified, whatever happens to the
release's file names during the upload. The LFS-mode counterparts are in tests/test_publish.py."""

from __future__ import annotations

import hashlib

import pytest
from huggingface_hub import HfApi, constants

import pipeline.lifecycle.publish.transport as hub_upload
from pipeline.lifecycle.publish.plan import PublishError
from pipeline.lifecycle.publish.steps import publish
from tests.hubserver import HubServer
from tests.release_fixture import split_counts
from tests.test_publish import hub_tree, release_tree

REPO = "org/mll23"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def hub(hf_env, tmp_path, monkeypatch):
    """The local Hub in Xet mode, with the conftest's teardown checks. Xet is on in the client, as by default
    wherever hf_xet is installed; files above 2 kB take publish's large-file path (a checked descriptor's path)."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.setattr(hub_upload, "SMALL_FILE_BYTES", 2_000)
    server = HubServer(tree_page_size=5, max_lifetime=300, xet_dir=tmp_path / "cas").start()
    try:
        yield server
        assert server.token_sightings == [], f"token leaked: {server.token_sightings}"
        assert server.unknown_requests() == [], "\n".join(map(str, server.unknown_requests()))
    finally:
        server.stop()


def kinds(hub: HubServer) -> list[str]:
    return [r.kind for r in hub.requests()]


def test_publish_goes_through_xet_in_one_commit_and_loads(hub, token, release_v1, run_consumer):
    lines: list[str] = []
    before = hub.store_usage()

    result = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lines.append)

    stored = hub.store_usage() - before
    assert stored.lfs_bytes == 0 and stored.xorb_bytes > 0  # the bytes went to the CAS, none through LFS
    assert "lfs_put" not in kinds(hub) and "lfs_batch" not in kinds(hub)
    assert len(hub.requests("commit", status=200)) == 1 and len(result.commits) == 1
    assert any("the Hub offers Xet storage for branch main: uploading over Xet" in line for line in lines)
    tree = hub.tree(REPO, "v1.0.0")
    for item in release_tree(release_v1).items():
        path, sha = item
        assert hashlib.sha256(hub.file_bytes(REPO, path, "v1.0.0")).hexdigest() == sha
    parquet = tree["data/train-00000-of-00001.parquet"]
    assert parquet.xet_hash is not None and parquet.lfs_oid == release_tree(release_v1)[
        "data/train-00000-of-00001.parquet"]

    got = run_consumer(REPO, [{"revision": "v1.0.0"}])
    assert {s: v["num_rows"] for s, v in got["v1.0.0"]["splits"].items()} == split_counts(release_v1)


def test_xet_publish_killed_at_the_commit_resumes_storing_nothing_twice(hub, token, release_v1, release_v2):
    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    old = hub.get_repo(REPO).branches["main"]
    for kind in ("commit", "tag_create"):
        hub.inject_fault(kind, nth=1, count=None, mode="500")
        before = hub.store_usage()
        with pytest.raises(PublishError, match="v1.1.0 is not tagged yet"):
            publish(release_v2, REPO, token=token, endpoint=hub.url, log=lambda _: None)
        sent_killed = hub.store_usage() - before
        on_main = hub_tree(hub, "main")
        assert on_main in (release_tree(release_v1), release_tree(release_v2))
        assert (hub.get_repo(REPO).branches["main"] == old) == (kind == "commit")
        hub.clear_faults()
    assert sent_killed.xorb_bytes == 0  # the second attempt found every chunk of the first (same machine)

    before = hub.store_usage()
    result = publish(release_v2, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert (hub.store_usage() - before).total == 0  # the resume stored nothing
    assert hub.get_repo(REPO).tags["v1.1.0"] == result.commit
    assert hub_tree(hub, "v1.1.0") == release_tree(release_v2)


def test_hf_hub_disable_xet_means_lfs_even_on_a_xet_server(hub, token, release_v1, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    lines: list[str] = []
    before = hub.store_usage()

    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lines.append)

    stored = hub.store_usage() - before
    assert stored.xet_bytes == 0 and stored.lfs_bytes > 0 and "lfs_put" in kinds(hub)
    assert "xet_write_token" not in kinds(hub)  # not even asked
    assert any("Xet disabled by HF_HUB_DISABLE_XET" in line for line in lines)
    assert constants.HF_HUB_DISABLE_XET is False  # restored


def test_an_lfs_only_server_gets_lfs(hf_env, token_free_hub, release_v1):
    hub, token = token_free_hub
    lines: list[str] = []
    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lines.append)
    assert "lfs_put" in kinds(hub)
    assert [r.status for r in hub.requests("xet_write_token")] == [404]  # asked once, answered "no Xet"
    assert any("offers no Xet storage for branch main: uploading over Git LFS" in line for line in lines)


@pytest.fixture
def token_free_hub(hf_env, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    server = HubServer(tree_page_size=5, max_lifetime=300).start()
    try:
        yield server, server.add_user("alice", orgs=["org"])
    finally:
        server.stop()


@pytest.mark.parametrize("xet", [True, False])
def test_a_file_swapped_during_the_upload_is_not_what_gets_sent(hub, token, release_v1, tmp_path, monkeypatch, xet):
    """The checked descriptor is what the client reads: replacing the name by a link to a secret after the check
    (the token file, say) sends the verified bytes, and the secret reaches no store."""
    if not xet:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET-" * 1000)
    shard = release_v1 / "data" / "train-00000-of-00001.parquet"
    verified = shard.read_bytes()
    real = HfApi.preupload_lfs_files

    def swap_then_upload(self, *args, **kwargs):
        shard.rename(shard.with_suffix(".moved"))
        shard.symlink_to(secret)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "preupload_lfs_files", swap_then_upload)
    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert hub.file_bytes(REPO, "data/train-00000-of-00001.parquet", "v1.0.0") == verified
    assert all(b"SECRET-SECRET" not in blob for blob in hub.get_repo(REPO).lfs.values())
    cas_files = [p for p in (tmp_path / "cas").rglob("*") if p.is_file()]
    assert bool(cas_files) == xet and all(b"SECRET-SECRET" not in p.read_bytes() for p in cas_files)


@pytest.mark.parametrize("xet", [True, False])
def test_a_file_changed_during_the_upload_is_not_committed(hub, token, release_v1, monkeypatch, xet):
    if not xet:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    shard = release_v1 / "data" / "train-00000-of-00001.parquet"
    real = HfApi.preupload_lfs_files

    def change_then_upload(self, *args, **kwargs):
        with shard.open("r+b") as fh:  # same file, same size, other bytes
            fh.seek(100)
            fh.write(b"\xff" * 8)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "preupload_lfs_files", change_then_upload)
    with pytest.raises(PublishError, match=r"data/train-00000-of-00001\.parquet: the bytes uploaded .* are not the"
                                           r" bytes verified|data/train-00000-of-00001\.parquet.*sha256"):
        publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    assert hub.requests("commit", status=200) == [] and "v1.0.0" not in hub.get_repo(REPO).tags


def test_progress_bars_off_in_ci(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    enable_progress_bars()
    monkeypatch.setenv("CI", "true")
    with hub_upload.quiet_progress():
        assert are_progress_bars_disabled()
    assert not are_progress_bars_disabled()  # restored



@pytest.mark.parametrize("xet", [True, False])
def test_objects_stored_elsewhere_in_the_repo_cost_nothing(hub, token, release_v1, tmp_path, monkeypatch, xet):
    """A file whose bytes the repo already stores (another path, another branch or tag) is committed as a copy:
    the dry run prices it at 0 B and the publish sends none of its bytes, even from a fresh machine."""
    import json
    import shutil

    if not xet:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    moved = tmp_path / "release-1.0.1"
    shutil.copytree(release_v1, moved)
    (moved / "data" / "train-00000-of-00001.parquet").rename(moved / "data" / "train-renamed.parquet")
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["version"] = "1.0.1"
    for item in manifest["files"]:
        if item["path"] == "data/train-00000-of-00001.parquet":
            item["path"] = "data/train-renamed.parquet"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    size = (moved / "manifest.json").stat().st_size
    hub.cas.forget_clients()  # a fresh machine: no client cache to dedup against
    hub.clear_log()
    lines: list[str] = []

    publish(moved, REPO, token=token, endpoint=hub.url, log=lines.append, dry_run=True)

    status = {line.rsplit(None, 1)[-1]: line for line in lines if line.startswith("  ")}
    assert status["data/train-renamed.parquet"].split() == ["stored", "(copy)", "0", "B", "data/train-renamed.parquet"]
    assert status["data/train-00000-of-00001.parquet"].split()[0] == "delete"
    assert f"  1 to upload ({size / 1000:.1f} kB), 1 stored elsewhere in the repo (copied, 0 B), 9 already on Hub," \
        " 1 to delete" in lines  # manifest.json is the one file sent
    assert hub.writes() == []

    before = hub.store_usage()
    publish(moved, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert (hub.store_usage() - before).xorb_bytes == 0 and (hub.store_usage() - before).lfs_bytes == 0
    assert hub.requests("lfs_put") == []
    assert hub_tree(hub, "v1.0.1") == release_tree(moved)


def test_a_failing_xet_token_route_fails_the_publish_at_once(hub, token, release_v1):
    hub.inject_fault("xet_write_token", nth=1, count=None, mode="500")
    with pytest.raises(PublishError, match="failed while asking whether the Hub offers Xet for branch main"):
        publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    assert len(hub.requests("xet_write_token")) == 1  # no retry loop: one answer was enough
    assert hub.requests("commit") == [] and hub.store_usage().xet_bytes == 0
