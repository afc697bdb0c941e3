"""Publishing a release with the real huggingface_hub client, and reading it back with the real `datasets`,
against the local Hub of tests/hubserver.py. See tests/conftest.py for how the environment is isolated."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import types
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError

from pipeline.lifecycle.publish.plan import PublishError, plan_publish, self_check
from pipeline.lifecycle.publish.steps import publish
from tests.hubserver import HubServer
from tests.release_fixture import read_manifest, split_counts, write_fixture_release

REPO = "org/mll23"
# huggingface_hub's own LFS PUT passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def release_tree(release: Path) -> dict[str, str]:
    """path -> sha256 of every file of a release, manifest.json included."""
    return {p.relative_to(release).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in release.rglob("*") if p.is_file()}


def hub_tree(hub: HubServer, revision: str, repo: str = REPO) -> dict[str, str]:
    """path -> sha256 of every file at `revision` on the server, Hub-managed .gitattributes left out."""
    return {path: hashlib.sha256(hub.file_bytes(repo, path, revision)).hexdigest()
            for path in hub.tree(repo, revision) if path != ".gitattributes"}


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client retries a failed request 5 times with exponential backoff (1+2+4+8+8 s). The retries still
    happen (the server log shows them); only their sleeps are shortened to keep the tests fast."""
    import huggingface_hub.utils._http as http

    real_sleep = http.time.sleep
    monkeypatch.setattr(http, "time", types.SimpleNamespace(sleep=lambda s: real_sleep(min(s, 0.01))))


def test_publish_tags_release_and_datasets_loads_it(hub, token, release_v1, run_consumer, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)  # the token comes from the usual place, not an argument
    lines: list[str] = []

    result = publish(release_v1, REPO, endpoint=hub.url, log=lines.append)

    assert result.tag == "v1.0.0" and not result.already_published and result.created_repo
    repo = hub.get_repo(REPO)
    assert repo.tags["v1.0.0"] == result.commit == repo.branches["main"]
    assert hub_tree(hub, "v1.0.0") == release_tree(release_v1)  # the tag holds exactly the release
    # one commit on top of the repo's first: main went from nothing to the whole release at once
    assert len(result.commits) == 1 and len(hub.requests("commit", status=200)) == 1
    commit = repo.commits[result.commits[0]]
    assert set(commit.tree) - set(repo.commits[commit.parents[0]].tree) == set(release_tree(release_v1))
    # large and binary files went through the LFS batch API + PUT, small text files inline in the commit
    assert hub.tree(REPO, "v1.0.0")["data/train-00000-of-00001.parquet"].lfs_oid is not None
    assert hub.tree(REPO, "v1.0.0")["README.md"].lfs_oid is None
    assert len(hub.requests("lfs_put", status=200)) == 6  # 3 parquet shards + 3 gallery PNGs
    assert any("tagged v1.0.0" in line for line in lines)

    manifest = read_manifest(release_v1)
    got = run_consumer(REPO, [{"revision": "v1.0.0", "files": [f["path"] for f in manifest["files"]]}])["v1.0.0"]
    assert {name: s["num_rows"] for name, s in got["splits"].items()} == split_counts(release_v1)
    for split in got["splits"].values():
        assert split["features"] == {"image": "Image", "label": "ClassLabel", "image_id": "Value"}
        assert split["label_names"] == ["myeloblast", "lymphocyte", "monocyte"]
        assert split["first_image"] == ["PIL.PngImagePlugin", [16, 16]]
    assert got["files"] == {f["path"]: f["sha256"] for f in manifest["files"]}


def test_publishing_again_is_a_no_op(hub, token, release_v1):
    first = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    hub.clear_log()
    lines: list[str] = []

    again = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lines.append)

    assert again.already_published and again.commit == first.commit and again.commits == [] and again.uploaded == []
    assert hub.requests("lfs_put") == [] and hub.requests("commit") == []
    assert hub.writes() == [], hub.format_log()
    assert any("nothing to do" in line for line in lines)


def test_second_version_keeps_the_first_loadable(hub, token, release_v1, release_v2, run_consumer):
    v1 = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    hub.clear_log()

    v2 = publish(release_v2, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert v2.tag == "v1.1.0"
    repo = hub.get_repo(REPO)
    assert repo.tags == {"v1.0.0": v1.commit, "v1.1.0": v2.commit}
    assert hub_tree(hub, "v1.1.0") == release_tree(release_v2)  # removed image deleted, so tree == release
    assert hub_tree(hub, "v1.0.0") == release_tree(release_v1)
    old, new = release_tree(release_v1), release_tree(release_v2)
    assert sorted(v2.uploaded) == sorted(p for p in new if old.get(p) != new[p])
    assert v2.deleted == ["images/mll23_00002.png"]
    assert "data/validation-00000-of-00001.parquet" in v2.skipped
    # only the changed Parquet shard went up again
    assert [r.note.split()[0] for r in hub.requests("lfs_put", status=200)] == [
        new["data/train-00000-of-00001.parquet"][:12]]

    got = run_consumer(REPO, [{"revision": "v1.0.0"}, {"revision": "v1.1.0"}])
    assert got["v1.0.0"]["splits"]["train"]["num_rows"] == 6
    assert got["v1.1.0"]["splits"]["train"]["num_rows"] == 7
    assert got["v1.1.0"]["splits"]["train"]["image_ids"][-1] == "mll23_00006"
    assert "mll23_00006" not in got["v1.0.0"]["splits"]["train"]["image_ids"]


def test_refuses_to_move_an_existing_tag(hub, token, release_v1, tmp_path):
    first = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    other = write_fixture_release(tmp_path / "other-1.0.0", version="1.0.0", salt={"train": 1})  # same version, new pixels
    hub.clear_log()

    with pytest.raises(PublishError, match="refusing to move"):
        publish(other, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert hub.writes() == []
    assert hub.get_repo(REPO).tags["v1.0.0"] == first.commit
    lines: list[str] = []
    with pytest.raises(PublishError, match="refusing to move"):
        publish(other, REPO, token=token, endpoint=hub.url, log=lines.append, dry_run=True)
    assert any("DIFFERENT content" in line for line in lines)


@pytest.mark.parametrize("mode", ["drop", "500"])
def test_interrupted_upload_resumes_with_only_the_missing_files(hub, token, release_v1, fast_retries, mode):
    # The 4th distinct LFS object never makes it (every retry fails too), the others go through.
    hub.inject_fault("lfs_put", nth=4, count=None, mode=mode, per_object=True)

    with pytest.raises(PublishError) as excinfo:
        publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    message = str(excinfo.value)
    assert re.search(r"failed while uploading \d+ files over LFS", message) and "Re-run the same command to resume" in message
    repo = hub.get_repo(REPO)
    assert "v1.0.0" not in repo.tags
    failed = hub.faults[0].objects[3]
    assert len(hub.requests("lfs_put")) > 6  # the client did retry the failing upload
    first_run = {r.path.rsplit("/", 1)[-1] for r in hub.requests("lfs_put", status=200)}
    committed_first = set(hub.tree(REPO, "main"))
    assert failed not in first_run and failed not in repo.lfs

    hub.clear_faults()
    hub.clear_log()
    result = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert hub_tree(hub, "v1.0.0") == release_tree(release_v1)
    second_run = {r.path.rsplit("/", 1)[-1] for r in hub.requests("lfs_put", status=200)}
    assert failed in second_run
    assert not (second_run & first_run)  # nothing uploaded twice: stored LFS objects are not sent again
    assert not (set(result.uploaded) & committed_first)  # committed files are skipped
    assert set(result.skipped) == committed_first - {".gitattributes"}


def test_failure_at_tagging_resumes_without_uploading_again(hub, token, release_v1):
    hub.inject_fault("tag_create", nth=1, count=1, mode="500")
    with pytest.raises(PublishError, match="failed while tagging v1.0.0"):
        publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    head = hub.get_repo(REPO).branches["main"]
    hub.clear_log()

    result = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    assert result.commit == head and result.commits == [] and result.uploaded == []
    assert [r.kind for r in hub.writes()] == ["tag_create"]
    assert hub.get_repo(REPO).tags["v1.0.0"] == head


def test_dry_run_prints_the_plan_and_writes_nothing(hub, token, release_v1, release_v2):
    lines: list[str] = []
    result = publish(release_v1, REPO, token=token, endpoint=hub.url, log=lines.append, dry_run=True)

    assert result.dry_run and result.commit is None
    assert hub.writes() == [] and (("dataset", REPO) not in hub.repos)
    text = "\n".join(lines)
    assert "does not exist yet" in text
    for item in read_manifest(release_v1)["files"]:
        assert any(line.split()[0] == "new" and line.endswith(item["path"]) for line in lines), item["path"]

    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    hub.clear_log()
    lines.clear()
    publish(release_v2, REPO, token=token, endpoint=hub.url, log=lines.append, dry_run=True)

    assert hub.writes() == [], hub.format_log()
    assert all(r.method in ("GET", "HEAD") for r in hub.requests()), hub.format_log()
    status = {line.rsplit(None, 1)[-1]: line for line in lines if line.startswith("  ")}
    assert "already on Hub" in status["data/validation-00000-of-00001.parquet"]
    assert "new (changed)" in status["data/train-00000-of-00001.parquet"]
    assert "new" in status["release_notes/v1.1.0.md"]
    assert status["images/mll23_00002.png"].split()[0] == "delete"


def test_token_never_shows_up(hub, token, release_v1, release_v2, tmp_path, capsys, caplog, fast_retries):
    # huggingface_hub and our own loggers at DEBUG (httpcore's DEBUG trace of raw response headers is left out: it
    # would faithfully record what the deliberately broken server below sends back)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    caplog.set_level(logging.DEBUG, logger="pipeline")
    lines: list[str] = []
    errors: list[str] = []

    def attempt(*args, **kwargs):
        try:
            publish(*args, token=token, endpoint=hub.url, log=lines.append, **kwargs)
        except PublishError as err:
            errors.append(str(err))

    attempt(release_v1, REPO, dry_run=True)
    hub.inject_fault("lfs_put", nth=2, count=None, mode="drop", per_object=True)
    attempt(release_v1, REPO)  # interrupted
    hub.clear_faults()
    attempt(release_v1, REPO)  # resumed
    attempt(release_v1, REPO)  # no-op
    attempt(write_fixture_release(tmp_path / "clash", version="1.0.0", salt={"test": 3}), REPO)  # refused
    assert len(errors) == 2

    # A misbehaving server that echoes the credential in an error: publish must redact it.
    hub.inject_fault("commit", nth=1, count=None, mode="echo_auth")
    attempt(release_v2, REPO)
    assert len(errors) == 3 and "***" in errors[-1] and "Authorization" in errors[-1]
    assert hub.token_sightings, "the server's leak detector should have seen its own echo"
    hub.token_sightings.clear()  # expected for this deliberately broken response only

    captured = capsys.readouterr()
    for where, text in {"stdout": captured.out, "stderr": captured.err, "logging": caplog.text,
                        "log": "\n".join(lines), "errors": "\n".join(errors), "server log": hub.format_log()}.items():
        assert token not in text, f"token printed in {where}"
    assert hub.token_sightings == []


def test_visibility_public_by_default_private_on_request(hub, token, release_v1, tmp_path):
    publish(release_v1, "org/open", token=token, endpoint=hub.url, log=lambda _: None)
    publish(release_v1, "org/closed", token=token, endpoint=hub.url, log=lambda _: None, private=True)

    assert hub.get_repo("org/open").private is False
    assert hub.get_repo("org/closed").private is True
    anonymous = HfApi(endpoint=hub.url, token=False)
    assert anonymous.dataset_info("org/open").private is False
    with pytest.raises(RepositoryNotFoundError):
        anonymous.dataset_info("org/closed")
    assert HfApi(endpoint=hub.url, token=token).dataset_info("org/closed").private is True

    v2 = write_fixture_release(tmp_path / "v2", version="1.0.1")
    with pytest.raises(PublishError, match="is public but a private publish was requested"):
        publish(v2, "org/open", token=token, endpoint=hub.url, log=lambda _: None, private=True)


def test_refuses_a_release_that_fails_verification(hub, token, release_v1):
    with pytest.raises(PublishError, match="(?s)failed verification.*labels look wrong"):
        publish(release_v1, REPO, token=token, endpoint=hub.url, verify=lambda d: ["labels look wrong"])
    assert self_check(release_v1) == []

    (release_v1 / "data" / "train-00000-of-00001.parquet").open("ab").write(b"x")
    (release_v1 / "stray.txt").write_text("not in the manifest")
    failures = self_check(release_v1)
    assert any("train-00000-of-00001.parquet: size" in f for f in failures)
    assert "stray.txt is in the release but not listed in manifest.json (remove it, or rebuild)" in failures
    with pytest.raises(PublishError, match="failed verification"):
        publish(release_v1, REPO, token=token, endpoint=hub.url, verify=lambda d: [])
    assert hub.requests() == []  # refused before talking to the Hub


def test_refuses_a_repository_other_than_the_one_its_card_loads_from(hub, token, release_v1):
    """A card built for org/mll23 prints snippets that load org/mll23: published elsewhere, consumers would copy
    code that loads another dataset. The repository the card names is accepted."""
    manifest_path = release_v1 / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"] = {"card": {"repo_id": REPO}}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(PublishError, match=f"card loads from {REPO}, not org/other: publish it to {REPO}, or rebuild with --repo org/other"):
        publish(release_v1, "org/other", token=token, endpoint=hub.url)
    assert hub.requests() == []  # refused before talking to the Hub
    manifest["config"] = {"card": {"repo_id": "org/x\x1b[2J::warning::" + "y" * 5000}}  # a hostile card repo id
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(PublishError) as refused:
        publish(release_v1, "org/other", token=token, endpoint=hub.url)
    message = str(refused.value)
    assert "\x1b" not in message and "::warning::" not in message and len(message) < 1000, message
    assert "card loads from org/x\\x1b[2J" in message  # escaped, shown, capped
    manifest["config"] = {"card": {"repo_id": REPO}}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert publish(release_v1, REPO, token=token, endpoint=hub.url).tag == "v1.0.0"


def test_needs_a_token_and_uploads_without_xet(hub, token, release_v1, monkeypatch):
    with pytest.raises(PublishError, match="no Hugging Face token"):
        publish(release_v1, REPO, endpoint=hub.url, log=lambda _: None)

    import huggingface_hub._commit_api as commit_api

    def no_xet(**kwargs):
        raise AssertionError("publish must upload through Git LFS, not Xet")

    monkeypatch.setattr(commit_api, "_upload_xet_files", no_xet)
    assert constants.HF_HUB_DISABLE_XET is False  # hf_xet is installed and Xet would be used by default
    (constants_file := Path(constants.HF_TOKEN_PATH)).write_text(token)  # `hf auth login` stores it here
    publish(release_v1, REPO, endpoint=hub.url, log=lambda _: None)
    constants_file.unlink()
    assert constants.HF_HUB_DISABLE_XET is False  # restored afterwards
    assert hub.get_repo(REPO).tags["v1.0.0"]


def test_plan_compares_sha256_for_lfs_and_git_blob_ids_for_small_files(hub, token, release_v1, release_v2):
    publish(release_v1, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    plan = plan_publish(release_v2, REPO, api=HfApi(endpoint=hub.url, token=token))

    by_path = {f.path: f for f in plan.files}
    assert by_path["data/test-00000-of-00001.parquet"].on_hub  # LFS, same sha256
    assert by_path["release_notes/v1.0.0.md"].on_hub  # regular file, same git blob id
    assert not by_path["README.md"].on_hub and by_path["README.md"].replaces
    assert plan.deletions == ["images/mll23_00002.png"]
    assert plan.tag_commit is None and plan.repo_exists and plan.private is False


def test_an_unchanged_release_is_not_verified_again(hub, token, release_v1, tmp_path):
    import os

    from pipeline.lifecycle.verify import stamp

    calls: list[Path] = []

    def verify(path: Path) -> list[str]:
        calls.append(path)
        return []

    def run(**kwargs) -> list[str]:
        lines: list[str] = []
        publish(release_v1, REPO, token=token, endpoint=hub.url, log=lines.append, verify=verify, **kwargs)
        return lines

    run(verify_name="checks")
    lines = run(verify_name="checks")  # the no-op publish: nothing changed since the verify
    assert len(calls) == 1 and any("not verified again" in line for line in lines)
    stamps = list(stamp.stamp_dir().iterdir())
    assert len(stamps) == 1 and not any(release_v1.rglob("*stamp*"))  # kept outside the release
    run()  # an anonymous verifier is never skipped
    assert len(calls) == 2
    run(verify_name="other checks")  # nor one stamped under another name
    assert len(calls) == 3

    shard = release_v1 / "data" / "test-00000-of-00001.parquet"
    os.utime(shard)  # the same bytes, touched: its stat changed, so verify runs again
    run(verify_name="checks")
    assert len(calls) == 4
    (release_v1 / "extra").mkdir()
    os.link(release_v1 / "README.md", release_v1 / "extra" / "README.md")
    with pytest.raises(PublishError, match="hard link"):  # a new name for a file: refused, not skipped
        run(verify_name="checks")
    (release_v1 / "extra" / "README.md").unlink()
    (release_v1 / "extra").rmdir()
    data = bytearray(shard.read_bytes())
    data[200] ^= 1
    shard.write_bytes(bytes(data))  # changed in place (same inode, same size)
    with pytest.raises(PublishError, match="test-00000-of-00001.parquet: sha256"):
        run(verify_name="checks")


def test_published_versions_follow_semver_precedence_as_the_build_does():
    from pipeline.lifecycle.publish.plan import published_versions

    tags = {f"v{v}": "sha" for v in ("1.0.0", "1.0.0-rc.10", "1.0.0-rc.9", "0.9.1", "1.0.0-webdataset")}
    tags["v1.0.0-rc.9-webdataset"] = "sha"
    tags["latest"] = "sha"
    assert published_versions(tags) == ["0.9.1", "1.0.0-rc.9", "1.0.0-rc.10", "1.0.0"]
