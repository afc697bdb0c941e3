"""A publish killed anywhere leaves `main` on the old release or the new one, never a mix; the re-run finishes
it sending only what the server lacks; an older version never moves `main`.

Kills are server faults (tests/hubserver.py `inject_fault`: every later request of that kind fails, so the client
gives up after its retries) at every step of the upload and the commit, each in a repository of its own on one
server; after every kill the head of `main` is loaded with the real `datasets.load_dataset` in a subprocess. Over
Xet, whose uploads bypass the server, the publishing process itself is killed (SIGKILL) at moments spread over
its run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.lifecycle.publish.plan import PublishError, choose_branch
from pipeline.lifecycle.publish.steps import publish
from tests.release_fixture import split_counts, write_fixture_release
from tests.test_publish import fast_retries, hub_tree, release_tree  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

# Kill points: (request kind, nth request of that kind, fault mode, per distinct LFS object). v1.1.0 below
# uploads 6 LFS objects (3 Parquet shards, 3 gallery PNGs), in one LFS batch, each PUT then verified.
KILLS = [
    ("xet_write_token", 1, "500", False),  # asking whether the server offers Xet
    ("preupload", 1, "500", False),  # asking which files are LFS
    ("lfs_batch", 1, "drop", False),  # the LFS batch request
    ("lfs_put", 1, "drop", True),  # before any object is stored
    ("lfs_put", 2, "drop", True),  # one object stored
    ("lfs_put", 4, "500", True),  # three stored
    ("lfs_put", 6, "drop", True),  # all but the last stored
    ("lfs_verify", 3, "500", False),  # a stored object's verify fails
    ("commit", 1, "500", False),  # every object stored, the commit refused
    ("commit", 1, "drop", False),  # the commit's connection lost half-way through its body
    ("refs", 3, "500", False),  # the commit landed; reading the refs to check the branch fails
    ("tag_create", 1, "500", False),  # the commit landed; tagging fails
]

LOAD = r"""
import json, sys
import datasets
spec = json.loads(sys.argv[1])
out = {}
for check in spec["checks"]:
    ds = datasets.load_dataset(check["repo"], revision=check["revision"])
    out[check["repo"] + "@" + check["revision"]] = {name: list(split["image_id"]) for name, split in ds.items()}
    streamed = datasets.load_dataset(check["repo"], revision=check["revision"], split="train", streaming=True)
    out[check["repo"] + "@" + check["revision"]]["train (streamed)"] = [row["image_id"] for row in streamed]
print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def release_v11(tmp_path: Path) -> Path:
    """v1.1.0 changes every Parquet shard and the whole gallery: six new LFS objects to kill the upload between."""
    return write_fixture_release(tmp_path / "release-1.1.0", version="1.1.0", rows={"train": 7},
                                 salt={"train": 1, "validation": 1, "test": 1},
                                 gallery=("mll23_00003", "mll23_00004", "mll23_00005"), notes=("1.0.0", "1.1.0"))


def image_ids(release: Path) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    ids = {split: sorted(pq.read_table(p, columns=["image_id"]).column(0).to_pylist()
                         for p in sorted((release / "data").glob(f"{split}-*.parquet")))
           for split in split_counts(release)}
    return {split: [i for group in groups for i in group] for split, groups in ids.items()}


def stored_puts(hub) -> list[str]:
    """The LFS object ids the server stored, one per successful PUT."""
    return [r.path.rsplit("/", 1)[-1] for r in hub.requests("lfs_put", status=200)]


def test_killed_anywhere_main_is_old_or_new_and_the_rerun_sends_only_what_is_missing(
        hub, token, release_v1, release_v11, run_consumer, fast_retries):  # noqa: F811
    old_tree, new_tree = release_tree(release_v1), release_tree(release_v11)
    new_objects = {new_tree[p] for p in new_tree if p.endswith((".parquet", ".png"))} - set(old_tree.values())
    assert len(new_objects) == 6
    checks, outcomes = [], []
    for number, (kind, nth, mode, per_object) in enumerate(KILLS):
        repo = f"org/kill-{number:02d}"
        publish(release_v1, repo, token=token, endpoint=hub.url, log=lambda _: None)
        old_head = hub.get_repo(repo).branches["main"]
        hub.clear_log()
        fault = hub.inject_fault(kind, nth=nth, count=None, mode=mode, per_object=per_object)

        with pytest.raises(PublishError, match="v1.1.0 is not tagged yet. Re-run the same command to resume"):
            publish(release_v11, repo, token=token, endpoint=hub.url, log=lambda _: None)

        assert fault.fired >= 1, f"kill point {kind} #{nth} was never reached"
        head = hub.get_repo(repo).branches["main"]
        on_main = hub_tree(hub, "main", repo)
        assert on_main in (old_tree, new_tree), f"main holds a mix after a kill at {kind} #{nth}"
        assert "v1.1.0" not in hub.get_repo(repo).tags
        assert len(hub.requests("commit", status=200)) <= 1
        killed_puts = stored_puts(hub)
        checks.append({"repo": repo, "revision": head})
        outcomes.append("old" if on_main == old_tree else "new")
        if on_main == old_tree:
            assert head == old_head

        hub.clear_faults()
        hub.clear_log()
        resumed = publish(release_v11, repo, token=token, endpoint=hub.url, log=lambda _: None)

        assert hub_tree(hub, "v1.1.0", repo) == new_tree == hub_tree(hub, "main", repo)
        assert hub.get_repo(repo).tags["v1.1.0"] == resumed.commit == hub.get_repo(repo).branches["main"]
        resumed_puts = stored_puts(hub)
        assert not set(resumed_puts) & set(killed_puts), f"sent twice after a kill at {kind} #{nth}"
        assert sorted(killed_puts + resumed_puts) == sorted(new_objects)  # each new object sent exactly once
        assert len(hub.requests("commit", status=200)) == (0 if on_main == new_tree else 1)
        assert [r.kind for r in hub.writes()].count("tag_create") == 1

    # the commit landed before the kill only for the kills after it
    assert outcomes == ["old"] * 10 + ["new"] * 2
    got = run_consumer("unused", checks, script=LOAD)
    old_ids, new_ids = image_ids(release_v1), image_ids(release_v11)
    for check, outcome in zip(checks, outcomes):
        loaded = got[f"{check['repo']}@{check['revision']}"]
        expected = old_ids if outcome == "old" else new_ids
        assert {s: sorted(ids) for s, ids in loaded.items() if s in expected} == expected
        assert sorted(loaded["train (streamed)"]) == expected["train"]  # no row twice


def test_an_older_version_never_moves_main(hub, token, release_v1, tmp_path, run_consumer):
    v12 = write_fixture_release(tmp_path / "release-1.2.0", version="1.2.0", rows={"train": 8}, notes=("1.0.0", "1.2.0"))
    v101 = write_fixture_release(tmp_path / "release-1.0.1", version="1.0.1", salt={"test": 2}, notes=("1.0.0", "1.0.1"))
    v103 = write_fixture_release(tmp_path / "release-1.0.3", version="1.0.3", salt={"test": 3}, notes=("1.0.0", "1.0.3"))
    first = publish(release_v1, REPO_OLD, token=token, endpoint=hub.url, log=lambda _: None)
    newest = publish(v12, REPO_OLD, token=token, endpoint=hub.url, log=lambda _: None)
    lines: list[str] = []

    patch = publish(v101, REPO_OLD, token=token, endpoint=hub.url, log=lines.append)

    repo = hub.get_repo(REPO_OLD)
    assert patch.branch == "v1.0.x" and repo.branches["main"] == newest.commit  # main did not move
    assert repo.tags["v1.0.1"] == patch.commit == repo.branches["v1.0.x"]
    assert repo.commits[patch.commit].parents == (first.commit,)  # the line continues v1.0.0's history
    assert hub_tree(hub, "v1.0.1", REPO_OLD) == release_tree(v101)
    assert hub_tree(hub, "main", REPO_OLD) == release_tree(v12)
    assert any("main is left alone, the release goes to branch v1.0.x" in line for line in lines)

    following = publish(v103, REPO_OLD, token=token, endpoint=hub.url, log=lambda _: None)
    assert following.branch == "v1.0.x" and repo.branches["v1.0.x"] == following.commit
    assert repo.commits[following.commit].parents == (patch.commit,)
    with pytest.raises(PublishError, match="1.0.2 is older than 1.0.3, already published in the same 1.0 line"):
        publish(write_fixture_release(tmp_path / "late-1.0.2", version="1.0.2", salt={"test": 9}), REPO_OLD,
                token=token, endpoint=hub.url, log=lambda _: None)
    # publishing an already tagged old version again is a no-op wherever its tag is
    assert publish(v101, REPO_OLD, token=token, endpoint=hub.url, log=lambda _: None).already_published
    assert repo.branches["main"] == newest.commit

    got = run_consumer(REPO_OLD, [{"revision": "main"}, {"revision": "v1.0.x"}])
    assert {s: v["num_rows"] for s, v in got["main"]["splits"].items()} == split_counts(v12)
    assert {s: v["num_rows"] for s, v in got["v1.0.x"]["splits"].items()} == split_counts(v103)


REPO_OLD = "org/lines"


@pytest.mark.parametrize(("version", "tags", "branch"), [
    ("1.0.0", {}, "main"),
    ("1.1.0", {"v1.0.0": "a", "v1.0.0-webdataset": "b"}, "main"),
    ("2.0.0-rc.1", {"v1.9.9": "a"}, "main"),
    ("2.0.0", {"v2.0.0-rc.1": "a"}, "main"),  # a release is newer than its pre-releases
    ("1.0.1", {"v1.0.0": "a", "v1.2.0": "b"}, "v1.0.x"),
    ("1.10.1", {"v1.10.0": "a", "v1.9.0": "b", "v2.0.0": "c"}, "v1.10.x"),  # numeric order, not text
    ("1.2.0", {"v1.2.0": "a"}, "main"),  # its own tag: the publish is a no-op or refused, main untouched
])
def test_choose_branch(version, tags, branch):
    assert choose_branch(version, tags) == branch


def test_choose_branch_refuses_going_back_in_a_line():
    with pytest.raises(PublishError, match="1.0.1 is older than 1.0.3"):
        choose_branch("1.0.1", {"v1.0.3": "a", "v1.2.0": "b"})



KILLER = r"""
import sys
from pathlib import Path
from huggingface_hub import constants
constants.HF_HUB_DISABLE_XET = False
from pipeline.lifecycle.publish.steps import publish
print("START", flush=True)
publish(Path(sys.argv[1]), sys.argv[2], token=sys.argv[3], endpoint=sys.argv[4], log=lambda _: None)
print("DONE", flush=True)
"""


def test_a_xet_publish_killed_at_random_moments(hf_env, tmp_path, release_v1, release_v11):
    """SIGKILL of a publishing process over Xet at 8 moments spread over a clean run's duration, each on a server
    of its own: main is old or new after every kill; the re-run leaves it new and tagged, and the CAS then holds
    no more chunk bytes than a clean publish stores (nothing stored twice)."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from tests.hubserver import HubServer

    old_tree, new_tree = release_tree(release_v1), release_tree(release_v11)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HOME": str(tmp_path / "h"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_DISABLE_XET", None)

    def run(hub, token, repo, release, kill_after=None) -> tuple[bool, float]:
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(release), repo, token, hub.url], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "START"
        start = time.perf_counter()
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=120)[0]
        return "DONE" in out, time.perf_counter() - start

    with HubServer(xet_dir=tmp_path / "ref-cas", max_lifetime=300) as reference:
        token = reference.add_user("alice", orgs=["org"])
        assert run(reference, token, "org/ref", release_v1)[0]
        before = reference.store_usage()
        done, took = run(reference, token, "org/ref", release_v11)
        assert done
        clean = reference.store_usage() - before

    rng = random.Random(13)  # moments spread over a clean run's duration, each at a random point of its share
    delays = [round(took * (k + rng.random()) / 8, 3) for k in range(8)]
    outcomes = []
    for number, delay in enumerate(delays):  # each kill on a server of its own: what it stores is its own
        with HubServer(xet_dir=tmp_path / f"cas-{number}", max_lifetime=300) as hub:
            token = hub.add_user("alice", orgs=["org"])
            assert run(hub, token, "org/kill", release_v1)[0]
            before = hub.store_usage()
            finished = run(hub, token, "org/kill", release_v11, kill_after=delay)[0]
            on_main = hub_tree(hub, "main", "org/kill")
            assert on_main in (old_tree, new_tree), f"a mix on main after a kill at {delay} s"
            outcomes.append("finished" if finished else "old" if on_main == old_tree else "new")
            assert run(hub, token, "org/kill", release_v11)[0]
            stored = hub.store_usage() - before
            repo = hub.get_repo("org/kill")
            assert hub_tree(hub, "v1.1.0", "org/kill") == new_tree and repo.tags["v1.1.0"] == repo.branches["main"]
            assert stored.lfs_bytes == 0 and stored.xorb_bytes <= clean.xorb_bytes, delay  # no chunk stored twice
    print(f"\nclean run {took:.2f} s ({clean.xorb_bytes:,} B of xorbs); killed after {delays} s: {outcomes}")
    assert outcomes.count("old") >= 2 and "finished" not in outcomes[:2]


def test_publish_targets_and_branch_starts_of_an_old_line(release_v1):
    from pipeline.lifecycle.publish.plan import FileSource, PublishTarget, branch_start, publish_targets, read_manifest

    tags = {"v1.0.0": "c100", "v1.0.0-webdataset": "w100", "v1.2.0": "c120", "v1.2.0-webdataset": "w120"}
    manifest = {**read_manifest(release_v1), "version": "1.0.1"}
    (target,) = publish_targets(release_v1, manifest, tags)  # the fixture has no wds/ card: one target
    assert (target.branch, target.tag) == ("v1.0.x", "v1.0.1")
    empty = FileSource(release_v1, {})
    first = lambda: "first"  # noqa: E731
    assert branch_start(target, tags, first) == "c100"
    assert branch_start(PublishTarget("v1.0.x-webdataset", "v1.0.1-webdataset", empty), tags, first) == "w100"
    assert branch_start(PublishTarget("v1.1.x", "v1.1.1", empty), tags, first) == "first"  # a line never tagged
    assert branch_start(PublishTarget("webdataset", "v1.3.0-webdataset", empty), tags, first) == "first"
