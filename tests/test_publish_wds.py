"""`mll23 publish` puts a release's WebDataset variant (wds/) on branch `webdataset` as its root, tagged
v{version}-webdataset, with the main publish's guarantees; the real `datasets` loads it by that tag."""

from __future__ import annotations

import json
import types
from collections import Counter

import pytest
from typer.testing import CliRunner

from pipeline.build import build_release
from pipeline.cli import app
from pipeline.lifecycle.publish.plan import PublishError
from pipeline.lifecycle.publish.steps import publish
from tests.rawkit import simple_raw

REPO = "org/mll23-wds"
WDS_TAG = "v1.0.0-webdataset"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

# Loads each check's revision with `datasets` and describes every split (run by `run_consumer`).
_WDS_CONSUMER = r"""
import json, sys
import datasets

spec = json.loads(sys.argv[1])
out = {}
for check in spec["checks"]:
    ds = datasets.load_dataset(spec["repo_id"], revision=check["revision"])
    splits = {}
    for name, split in ds.items():
        features = split.features
        images = [k for k, v in features.items() if isinstance(v, datasets.Image)]
        labels = [k for k, v in features.items() if isinstance(v, datasets.ClassLabel)]
        rows = list(split)
        splits[name] = {
            "num_rows": split.num_rows,
            "features": {k: type(v).__name__ for k, v in features.items()},
            "label_names": features[labels[0]].names if labels else None,
            "labels": sorted(features[labels[0]].int2str(r[labels[0]]) for r in rows) if labels else None,
            "with_image": sum(1 for r in rows if any(r[k] is not None for k in images)),
            "first_size": next(list(r[k].size) for r in rows for k in images if r[k] is not None),
        }
    out[check["revision"]] = splits
print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def built_release(tmp_path, config):
    raw = tmp_path / "raw"
    simple_raw(raw, ["myeloblast", "monocyte", "basophil"], per_class=7)
    return build_release(raw, tmp_path / "release", config, workers=1).out_dir


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client retries a failed request with exponential backoff; only the sleeps are shortened."""
    import huggingface_hub.utils._http as http

    real_sleep = http.time.sleep
    monkeypatch.setattr(http, "time", types.SimpleNamespace(sleep=lambda s: real_sleep(min(s, 0.01))))


def manifest_of(release) -> dict:
    return json.loads((release / "manifest.json").read_text(encoding="utf-8"))


def wds_files(manifest: dict) -> dict[str, str]:
    """path under wds/ (the prefix stripped) -> sha256, from the manifest."""
    return {f["path"].removeprefix("wds/"): f["sha256"] for f in manifest["files"] if f["path"].startswith("wds/")}


def test_cli_publish_puts_wds_on_its_own_branch_and_datasets_loads_it(
    hub, token, built_release, run_consumer, config, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", token)
    runner = CliRunner()
    manifest = manifest_of(built_release)
    expected_wds = wds_files(manifest)
    assert {"README.md", "train-000000.tar"} <= set(expected_wds)

    dry = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--dry-run", "--endpoint", hub.url])
    assert dry.exit_code == 0, dry.output
    assert f"as v1.0.0 to dataset repo {REPO}" in dry.output and f"as {WDS_TAG} to dataset repo {REPO}" in dry.output
    assert any(line.split()[:1] == ["new"] and line.endswith("  train-000000.tar") for line in dry.output.splitlines())
    assert ("dataset", REPO) not in hub.repos and token not in dry.output

    first = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--endpoint", hub.url])
    assert first.exit_code == 0, first.output
    assert f"published {REPO} v1.0.0:" in first.output and f"published {REPO} {WDS_TAG}:" in first.output
    assert token not in first.output

    repo = hub.get_repo(REPO)
    assert repo.tags[WDS_TAG] == repo.branches["webdataset"] != repo.tags["v1.0.0"]
    # the branch's tree is exactly wds/ (plus the Hub's .gitattributes), tars stored as the same LFS objects
    tree = hub.tree(REPO, WDS_TAG)
    assert set(tree) - {".gitattributes"} == set(expected_wds)
    for path, sha in expected_wds.items():
        if path.endswith(".tar"):
            assert tree[path].lfs_oid == sha
    # its history starts at the repo's first commit: no Parquet in any of its commits
    branch_history = repo.history(repo.branches["webdataset"])
    assert branch_history[-1].id == repo.history(repo.branches["main"])[-1].id
    assert not any(p.startswith("data/") for commit in branch_history for p in commit.tree)
    # no bytes uploaded twice: every LFS object went up exactly once, so each tar only with the main branch
    puts = Counter(r.path.rsplit("/", 1)[-1] for r in hub.requests("lfs_put", status=200))
    assert set(puts.values()) == {1}
    assert {sha for p, sha in expected_wds.items() if p.endswith(".tar")} <= set(puts)
    assert sum(r.bytes_in for r in hub.requests("lfs_put", status=200)) == sum(len(repo.lfs[oid]) for oid in puts)

    loaded = run_consumer(REPO, [{"revision": WDS_TAG}], script=_WDS_CONSUMER)[WDS_TAG]
    counts = {s: v["num_examples"] for s, v in manifest["splits"].items() if v["num_examples"]}
    assert {s: v["num_rows"] for s, v in loaded.items()} == counts
    assert {s: v["with_image"] for s, v in loaded.items()} == counts  # every sample decodes to an image
    for split in loaded.values():
        assert "Image" in split["features"].values() and split["features"]["cls"] == "ClassLabel"
        assert split["label_names"] == config.class_names and len(split["label_names"]) == 18
        assert split["first_size"] == [288, 288]
    labels = sorted(label for split in loaded.values() for label in split["labels"])
    assert labels == sorted(["myeloblast"] * 7 + ["monocyte"] * 7 + ["basophil"] * 7)

    hub.clear_log()
    again = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--endpoint", hub.url])
    assert again.exit_code == 0, again.output
    assert again.output.count("nothing to do") == 2 and WDS_TAG in again.output
    assert hub.writes() == [] and hub.requests("lfs_put") == []

    dry_again = runner.invoke(app, ["publish", str(built_release), "--repo", REPO, "--dry-run", "--endpoint", hub.url])
    assert dry_again.exit_code == 0, dry_again.output
    assert "branch main" in dry_again.output and "branch webdataset" in dry_again.output
    assert f"tag {WDS_TAG} already exists" in dry_again.output and "0 to upload" in dry_again.output
    assert hub.writes() == []


def test_interrupted_wds_publish_resumes_without_uploading_again(hub, token, built_release, fast_retries):
    expected_wds = wds_files(manifest_of(built_release))
    hub.inject_fault("branch_create", nth=1, count=None, mode="500")
    with pytest.raises(PublishError, match="failed while creating branch webdataset") as err:
        publish(built_release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    assert f"{WDS_TAG} is not tagged yet" in str(err.value) and token not in str(err.value)
    repo = hub.get_repo(REPO)
    assert "v1.0.0" in repo.tags and "webdataset" not in repo.branches

    hub.clear_faults()
    hub.inject_fault("commit", nth=1, count=None, mode="500")  # the branch exists now; its one commit fails
    with pytest.raises(PublishError, match="failed while committing to branch webdataset"):
        publish(built_release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    # the branch shows nothing of the release rather than part of it
    assert set(hub.tree(REPO, "webdataset")) == {".gitattributes"} and WDS_TAG not in repo.tags

    hub.clear_faults()
    hub.clear_log()
    result = publish(built_release, REPO, token=token, endpoint=hub.url, log=lambda _: None)

    wds = result.webdataset
    assert result.already_published and wds is not None and not wds.already_published
    assert wds.skipped == [] and set(wds.uploaded) == set(expected_wds) and len(wds.commits) == 1
    assert hub.requests("lfs_put") == []  # every tar was already in the repo's LFS store
    assert [r.kind for r in hub.writes()].count("branch_create") == 0
    assert set(hub.tree(REPO, WDS_TAG)) - {".gitattributes"} == set(expected_wds)
    assert repo.tags[WDS_TAG] == wds.commit == repo.branches["webdataset"]


def test_publish_refuses_when_the_wds_tag_holds_other_content(hub, token, built_release, monkeypatch):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo(REPO, repo_type="dataset")
    api.create_tag(REPO, tag=WDS_TAG, repo_type="dataset")  # the empty first commit: not the wds/ folder
    hub.clear_log()
    monkeypatch.setenv("HF_TOKEN", token)

    result = CliRunner().invoke(app, ["publish", str(built_release), "--repo", REPO, "--endpoint", hub.url])

    assert result.exit_code == 1
    assert f"tag {WDS_TAG} already exists" in result.output and "refusing to move a published tag" in result.output
    assert hub.writes() == []  # refused before anything was written, main branch included
    assert "v1.0.0" not in hub.get_repo(REPO).tags
