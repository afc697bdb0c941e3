"""The local Hub answers the real huggingface_hub client the way the Hub does (tests/hubserver.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hubserver import Entry, git_blob_id, tree_ids

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def api(hub, token, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)  # the server speaks LFS only
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo("org/ds", repo_type="dataset")
    api.create_commit(
        "org/ds",
        repo_type="dataset",
        commit_message="add files",
        operations=[
            CommitOperationAdd("README.md", b"---\nlicense: mit\npretty_name: t\n---\n# t\n"),
            CommitOperationAdd("data/a.parquet", bytes(range(256)) * 40),
            CommitOperationAdd("data/sub/b.txt", b"hello\n"),
            CommitOperationAdd("notes.txt", b"x" * 100),
        ],
    )
    return api


def test_repo_info_refs_tree_and_paths_info(hub, api):
    info = api.dataset_info("org/ds", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert info.sha == hub.get_repo("org/ds").branches["main"] and info.private is False
    assert info.card_data["license"] == "mit"
    assert siblings["data/a.parquet"].lfs.sha256 == hashlib.sha256(bytes(range(256)) * 40).hexdigest()
    assert siblings["notes.txt"].lfs is None and siblings["notes.txt"].blob_id == git_blob_id(b"x" * 100)

    # paginated (page size 5 in the fixture) recursive listing, directories included
    tree = {e.path: e for e in api.list_repo_tree("org/ds", repo_type="dataset", recursive=True)}
    assert set(tree) == {".gitattributes", "README.md", "notes.txt", "data", "data/a.parquet", "data/sub",
                         "data/sub/b.txt"}
    assert any("cursor=" in r.query for r in hub.requests("tree"))
    assert [e.path for e in api.list_repo_tree("org/ds", "data", repo_type="dataset")] == ["data/sub",
                                                                                         "data/a.parquet"]
    expanded = list(api.list_repo_tree("org/ds", "data/sub", repo_type="dataset", expand=True))
    assert expanded[0].last_commit.title == "add files"

    infos = api.get_paths_info("org/ds", ["data", "notes.txt", "missing"], repo_type="dataset")
    assert [i.path for i in infos] == ["data", "notes.txt"] and infos[0].tree_id == tree["data"].tree_id
    assert api.list_repo_refs("org/ds", repo_type="dataset").branches[0].name == "main"
    assert [c.title for c in api.list_repo_commits("org/ds", repo_type="dataset")] == ["add files", "initial commit"]
    assert api.file_exists("org/ds", "data/sub/b.txt", repo_type="dataset")


def test_tags_and_branches(hub, api):
    head = hub.get_repo("org/ds").branches["main"]
    api.create_tag("org/ds", tag="v1", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag("org/ds", tag="v1", repo_type="dataset")
    assert exc.value.response.status_code == 409
    api.create_branch("org/ds", branch="dev", repo_type="dataset")
    api.create_commit("org/ds", repo_type="dataset", revision="dev", commit_message="rm",
                      operations=[CommitOperationDelete("notes.txt")])
    refs = api.list_repo_refs("org/ds", repo_type="dataset")
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": head}
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert "notes.txt" not in api.list_repo_files("org/ds", repo_type="dataset", revision="dev")
    assert "notes.txt" in api.list_repo_files("org/ds", repo_type="dataset", revision="v1")

    api.delete_tag("org/ds", tag="v1", repo_type="dataset")
    api.delete_branch("org/ds", branch="dev", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("org/ds", revision="v1")


def test_downloads_resolve_and_ranges(hub, api, tmp_path):
    content = bytes(range(256)) * 40
    path = hf_hub_download("org/ds", "data/a.parquet", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)
    assert open(path, "rb").read() == content
    head = [r for r in hub.requests("resolve") if r.method == "HEAD"]
    assert head and head[0].status == 200
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/ds", "nope.txt", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)

    with urllib.request.urlopen(urllib.request.Request(f"{hub.url}/datasets/org/ds/resolve/main/data/a.parquet",
                                                       method="HEAD")) as resp:
        assert resp.headers["X-Linked-Etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
        assert resp.headers["X-Linked-Size"] == resp.headers["Content-Length"] == str(len(content))
        assert resp.headers["X-Repo-Commit"] == hub.get_repo("org/ds").branches["main"]

    fs = HfFileSystem(endpoint=hub.url, skip_instance_cache=True)
    with fs.open("datasets/org/ds/data/a.parquet", "rb", block_size=1000) as fh:  # Range requests
        fh.seek(3000)
        assert fh.read(500) == content[3000:3500]
    assert any(r.status == 206 for r in hub.requests("resolve"))
    assert fs.glob("datasets/org/ds/data/**/*.txt") == ["datasets/org/ds/data/sub/b.txt"]


def test_auth_and_privacy(hub, api, token):
    other = hub.add_user("mallory")
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub.url, token=False).create_repo("org/x", repo_type="dataset")
    assert exc.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub.url, token=other).create_commit(
            "org/ds", repo_type="dataset", commit_message="x", operations=[CommitOperationAdd("x.txt", b"x")])
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub.url, token="hf_not_a_real_token_at_all").dataset_info("org/ds")
    assert exc.value.response.status_code == 401

    api.update_repo_settings("org/ds", repo_type="dataset", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).dataset_info("org/ds")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=other).dataset_info("org/ds")
    assert api.dataset_info("org/ds").private is True
    assert all(token not in str(r) for r in hub.requests())


def test_lfs_integrity_is_enforced(hub, api, token):
    # a commit may only reference LFS objects that were uploaded
    body = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "sneaky"}},
        {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]).encode()
    request = urllib.request.Request(f"{hub.url}/api/datasets/org/ds/commit/main", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request)
    assert exc.value.code == 422

    # an upload whose bytes do not hash to the announced oid is rejected
    data = b"payload" * 10
    oid = hashlib.sha256(data).hexdigest()
    batch = urllib.request.Request(
        f"{hub.url}/datasets/org/ds.git/info/lfs/objects/batch", method="POST",
        data=json.dumps({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
                        ).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.git-lfs+json"})
    with urllib.request.urlopen(batch) as resp:
        href = json.loads(resp.read())["objects"][0]["actions"]["upload"]["href"]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(urllib.request.Request(href, data=b"X" + data[1:], method="PUT"))
    assert exc.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as exc:  # the signature covers the object: no reuse for another
        urllib.request.urlopen(urllib.request.Request(href.replace(oid, "1" * 64), data=data, method="PUT"))
    assert exc.value.code == 403
    with urllib.request.urlopen(urllib.request.Request(href, data=data, method="PUT")) as resp:
        assert resp.status == 200
    assert hub.get_repo("org/ds").lfs[oid] == data


def test_unknown_routes_are_logged_and_answered_404(hub):
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{hub.url}/api/datasets/org/ds/discussions")
    assert exc.value.code == 404 and "no route" in json.loads(exc.value.read())["error"]
    assert [r.path for r in hub.unknown_requests()] == ["/api/datasets/org/ds/discussions"]
    hub.clear_log()  # expected here; the fixture fails any other test that hits an unknown route


def test_lfs_only_server_refuses_xet_tokens(hub):
    # Asking whether the server offers Xet is a known question with a clear "no", not an unknown route.
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{hub.url}/api/datasets/org/ds/xet-write-token/main")
    assert exc.value.code == 404 and exc.value.headers["X-Error-Code"] == "XetNotEnabled"
    assert [r.kind for r in hub.requests()] == ["xet_write_token"] and hub.unknown_requests() == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_object_ids_are_gits(tmp_path):
    files = {"a.txt": b"x", "data/b.txt": b"yy", "data/sub/c.txt": b"zzz", "data-x.txt": b"q"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "m"], check=True)
    expected = subprocess.run([*git, "rev-parse", "HEAD^{tree}", "HEAD:data", "HEAD:data/sub"], check=True,
                              capture_output=True, text=True).stdout.split()
    ids = tree_ids({p: Entry(len(d), git_blob_id(d)) for p, d in files.items()})
    assert [ids[""], ids["data"], ids["data/sub"]] == expected
