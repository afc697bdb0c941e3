"""The local Hub in Xet mode (tests/hubserver.py, `HubServer(xet_dir=...)`) with the real clients: huggingface_hub
uploads through its real Xet path (hf_xet chunking into a `local://` CAS), downloads come back through hf_xet or as
ranges read from the CAS, and a re-upload of a slightly changed file stores only the changed chunks.

Figures (random 20 MB file, 1 kB inserted in the middle) are printed by `test_a_small_insertion_stores_a_small_
fraction`; run with `-s` to see them."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import hf_xet
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from tests.consumerkit import consumer_env
from tests.hubserver import HubServer, parse_shard

REPO = "org/ds"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def hub(hf_env, tmp_path):
    """The conftest's local Hub, in Xet mode, with the same teardown checks; its CAS is a directory of this test."""
    server = HubServer(tree_page_size=5, max_lifetime=300, xet_dir=tmp_path / "cas").start()
    try:
        yield server
        assert server.token_sightings == [], f"token leaked: {server.token_sightings}"
        assert server.unknown_requests() == [], "\n".join(map(str, server.unknown_requests()))
        crashes = [r for r in server.requests() if r.note.startswith("hubserver internal error")]
        assert crashes == [], "\n".join(map(str, crashes))
    finally:
        server.stop()


@pytest.fixture
def api(hub, token, monkeypatch):
    # The real client decides on its own: Xet whenever hf_xet is importable and HF_HUB_DISABLE_XET is off.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo(REPO, repo_type="dataset")
    return api


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def commit(api: HfApi, files: dict[str, bytes | Path], message: str = "add", revision: str | None = None) -> None:
    ops = [CommitOperationAdd(path, str(src) if isinstance(src, Path) else src) for path, src in files.items()]
    api.create_commit(REPO, repo_type="dataset", operations=ops, commit_message=message, revision=revision)


def kinds(hub: HubServer) -> list[str]:
    return [r.kind for r in hub.requests()]


def test_upload_goes_through_xet_and_reads_come_back_identical(hub, api, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(3_000_000, seed=1))
    small = random_bytes(300_000, seed=2)  # bytes in memory take the Xet path too (start_upload_bytes)
    before = hub.store_usage()
    commit(api, {"data/big.bin": big, "data/small.bin": small, "notes.txt": b"plain text\n"})

    # The bytes went to the CAS, never through the server: a write token, then the commit.
    assert kinds(hub)[-3:] == ["preupload", "xet_write_token", "commit"]
    stored = hub.store_usage() - before
    assert stored.lfs_bytes == 0 and stored.xorb_bytes >= 3_300_000  # random data does not compress
    tree = hub.tree(REPO)
    assert tree["data/big.bin"].xet_hash == hf_xet.hash_files([str(big)])[0].hash
    assert tree["data/big.bin"].lfs_oid == hashlib.sha256(big.read_bytes()).hexdigest()
    assert tree["notes.txt"].xet_hash is None  # small text files stay regular git blobs
    listed = {f.path: f for f in api.list_repo_tree(REPO, "data", repo_type="dataset")}
    assert listed["data/big.bin"].xet_hash == tree["data/big.bin"].xet_hash

    hub.clear_log()
    path = hf_hub_download(REPO, "data/big.bin", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == big.read_bytes()
    assert ("GET", "xet_read_token") in [(r.method, r.kind) for r in hub.requests()]
    assert [r for r in hub.requests("resolve") if r.method == "GET"] == []  # hf_xet read the CAS, not /resolve

    hub.clear_log()
    fs = HfFileSystem(endpoint=hub.url, token=api.token, skip_instance_cache=True)
    with fs.open(f"datasets/{REPO}/data/small.bin", "rb", block_size=10_000) as fh:  # HTTP ranges, from the CAS
        fh.seek(123_456)
        assert fh.read(5_000) == small[123_456:128_456]
    assert {r.status for r in hub.requests("resolve") if r.method == "GET"} == {302}  # to the bridge, as on the Hub
    bridge = hub.requests("xet_bridge")
    assert bridge and all(r.status == 206 and not r.authenticated for r in bridge)  # ranges, and no Hub token
    fs.get_file(f"datasets/{REPO}/data/small.bin", str(tmp_path / "small.bin"))  # whole file: through hf_xet
    assert (tmp_path / "small.bin").read_bytes() == small
    assert hub.file_bytes(REPO, "data/small.bin") == small


def test_a_small_insertion_stores_a_small_fraction(hub, api, tmp_path, monkeypatch):
    v1 = random_bytes(20_000_000, seed=3)
    v2 = v1[:10_000_000] + random_bytes(1_000, seed=4) + v1[10_000_000:]
    stored = {}
    for name, data in (("v1", v1), ("v2", v2), ("v2 again", v2)):
        hub.cas.forget_clients()  # each upload from a fresh machine: dedup only against what the CAS stores
        before = hub.store_usage()
        commit(api, {"data/x.bin": data}, message=name)
        stored[name] = hub.store_usage() - before
    assert hub.file_bytes(REPO, "data/x.bin") == v2

    # The same change over LFS: the whole file again (LFS stores objects, not chunks).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    before = hub.store_usage()
    commit(api, {"data/x.bin": v2}, message="v2 over LFS")
    stored["v2 over LFS"] = hub.store_usage() - before
    assert "lfs_put" in kinds(hub)

    for name, usage in stored.items():
        print(f"{name}: {usage.total:,} B newly stored ({usage.total / len(v2):.2%} of the file; "
              f"xorbs {usage.xorb_bytes:,}, shards {usage.shard_bytes:,}, lfs {usage.lfs_bytes:,})")
    assert stored["v1"].xet_bytes >= len(v1)
    assert stored["v2"].total < 0.10 * len(v2)
    assert stored["v2 again"].xorb_bytes == 0  # a resumed or repeated upload stores no chunk twice
    assert stored["v2 over LFS"].lfs_bytes == len(v2)


def test_upload_first_then_one_commit(hub, api, tmp_path):
    """The atomic-publish pattern: every large object uploaded (to the CAS) before the commit that names them."""
    ops = [CommitOperationAdd(f"data/{i}.bin", random_bytes(500_000, seed=10 + i)) for i in range(3)]
    head = hub.get_repo(REPO).branches["main"]
    before = hub.store_usage()
    api.preupload_lfs_files(REPO, ops, repo_type="dataset")
    assert hub.get_repo(REPO).branches["main"] == head and hub.store_usage().xorb_bytes > before.xorb_bytes
    hub.clear_log()
    api.create_commit(REPO, repo_type="dataset", operations=ops, commit_message="all at once")
    assert kinds(hub) == ["commit"]  # upload modes known, bytes already in the CAS: nothing asked or sent again
    assert len(hub.tree(REPO)) == 4


def raw_commit(hub: HubServer, token: str, path: str, oid: str, size: int) -> int:
    """Status of a commit naming one large object, sent by hand (as a client that skipped the upload would)."""
    body = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "by hand"}},
        {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": size}},
    ]).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    request = urllib.request.Request(f"{hub.url}/api/datasets/{REPO}/commit/main", data=body, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_commits_name_only_what_the_cas_really_holds(hub, api, token, tmp_path):
    assert raw_commit(hub, token, "x.bin", "0" * 64, 3) == 422  # an object nobody uploaded

    # a shard claiming a sha256 its bytes do not have (hf_xet takes the sha256 from the client), after the same
    # bytes were committed honestly: the honest check must not vouch for the false claim
    data = random_bytes(100_000, seed=9)
    honest, claimed = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"something else").hexdigest()
    for sha256 in (honest, claimed):
        with hf_xet.XetSession().new_upload_commit(endpoint=hub.cas.url) as upload:
            upload.start_upload_bytes(data, sha256=sha256)
    assert raw_commit(hub, token, "honest.bin", honest, len(data)) == 200
    assert hub.file_bytes(REPO, "honest.bin") == data
    assert hub.cas.find(claimed) is not None
    assert raw_commit(hub, token, "liar.bin", claimed, len(data)) == 422

    # an upload whose chunks were lost from the store before the commit
    op = CommitOperationAdd("data/lost.bin", random_bytes(200_000, seed=5))
    before = set((hub.cas.store / "xorbs").iterdir())
    api.preupload_lfs_files(REPO, [op], repo_type="dataset")
    lost = [x for x in set((hub.cas.store / "xorbs").iterdir()) - before if not x.name.endswith(".tagset")]
    assert lost
    for xorb in lost:
        xorb.unlink()
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(REPO, repo_type="dataset", operations=[op], commit_message="lost")
    assert exc.value.response.status_code == 422
    assert "data/lost.bin" not in hub.tree(REPO)


def test_xet_tokens_follow_repo_permissions(hub, api, token):
    def status(path: str, who: str | None) -> int:
        headers = {"Authorization": f"Bearer {who}"} if who else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{hub.url}{path}", headers=headers)) as resp:
                body = json.loads(resp.read())
                assert body["casUrl"] == resp.headers["X-Xet-Cas-Url"] == hub.cas.url
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    mallory = hub.add_user("mallory")
    write, read = f"/api/datasets/{REPO}/xet-write-token/main", f"/api/datasets/{REPO}/xet-read-token/main"
    assert [status(write, token), status(write, mallory), status(write, None)] == [200, 403, 401]
    assert [status(read, None), status(f"/api/datasets/{REPO}/xet-write-token/nope", token)] == [200, 404]
    api.update_repo_settings(REPO, repo_type="dataset", private=True)
    assert [status(read, token), status(read, mallory), status(read, None)] == [200, 404, 401]



def test_the_bridge_serves_only_what_resolve_signed(hub, api, token):
    data = random_bytes(50_000, seed=12)
    commit(api, {"data/x.bin": data})
    api.update_repo_settings(REPO, repo_type="dataset", private=True)

    def get(url: str, auth: str | None = None) -> tuple[int, dict, bytes]:
        split = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(split.hostname, split.port, timeout=10)
        conn.request("GET", f"{split.path}?{split.query}", headers={"Authorization": f"Bearer {auth}"} if auth else {})
        resp = conn.getresponse()
        out = resp.status, dict(resp.getheaders()), resp.read()
        conn.close()
        return out

    resolve = f"{hub.url}/datasets/{REPO}/resolve/main/data/x.bin"
    assert get(resolve)[0] == 401  # private: no redirect without the token
    status, headers, _ = get(resolve, token)
    assert status == 302 and headers["X-Linked-Size"] == str(len(data))
    location = headers["Location"]
    assert urllib.parse.urlsplit(location).hostname == "localhost"  # another origin than the Hub's 127.0.0.1
    assert get(location)[::2] == (200, data)
    assert get(location.replace("sig=", "sig=0"))[0] == 403
    assert get(location.replace(f"size={len(data)}", f"size={len(data) - 1}"))[0] == 403

def test_lfs_clients_still_work_against_a_xet_server(hub, api, tmp_path, monkeypatch):
    xet_stored = random_bytes(400_000, seed=6)
    commit(api, {"data/xet.bin": xet_stored})
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # a client without Xet (or publish as it is today)
    lfs_stored = random_bytes(400_000, seed=7)
    commit(api, {"data/lfs.bin": lfs_stored})
    assert "lfs_put" in kinds(hub) and hub.tree(REPO)["data/lfs.bin"].xet_hash is None
    hub.clear_log()
    for name, data in (("xet.bin", xet_stored), ("lfs.bin", lfs_stored)):
        path = hf_hub_download(REPO, f"data/{name}", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == data
    assert "xet_read_token" not in kinds(hub)  # the Xet-stored file came as plain bytes, read from the CAS
    assert [(r.status, r.authenticated) for r in hub.requests("xet_bridge")] == [(200, False)]

    # a client offering the "xet" transfer in the LFS batch API is told to use it
    oid = hashlib.sha256(b"abc").hexdigest()
    batch = urllib.request.Request(
        f"{hub.url}/datasets/{REPO}.git/info/lfs/objects/batch", method="POST",
        data=json.dumps({"operation": "upload", "transfers": ["basic", "multipart", "xet"],
                         "objects": [{"oid": oid, "size": 3}]}).encode(),
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/vnd.git-lfs+json"})
    with urllib.request.urlopen(batch) as resp:
        assert json.loads(resp.read()) == {"transfer": "xet", "objects": [{"oid": oid, "size": 3}],
                                           "hash_algo": "sha256"}


def test_shards_name_each_file_with_its_sha256_and_xet_hash(tmp_path):
    """The server's shard reader against hf_xet's own upload report."""
    data = random_bytes(1_500_000, seed=8)
    with hf_xet.XetSession().new_upload_commit(endpoint=f"local://{tmp_path / 'cas'}") as upload:
        handle = upload.start_upload_bytes(data, sha256=hf_xet.COMPUTE_SHA256)
    info = handle.result().xet_info
    shards = sorted((tmp_path / "cas" / "xet" / "xorbs" / "shards").glob("*.mdb"))
    files = [f for shard in shards for f in parse_shard(shard.read_bytes())]
    assert [(f.xet_hash, f.size, f.sha256) for f in files] == [(info.hash, len(data), hashlib.sha256(data).hexdigest())]
    with pytest.raises(ValueError):
        parse_shard(shards[0].read_bytes()[:100])


_LOAD = r"""
import json, sys
import datasets
repo = sys.argv[1]
out = {}
for streaming in (False, True):
    rows = list(datasets.load_dataset(repo, split="train", streaming=streaming))
    out["streaming" if streaming else "download"] = [[r["image_id"], r["label"], r["blob"].hex()] for r in rows]
print("RESULT " + json.dumps(out))
"""


def test_load_dataset_of_a_xet_stored_parquet_dataset(hub, api, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"img_{i:04d}", i % 7, random_bytes(2_000, seed=100 + i)) for i in range(300)]
    table = pa.table({"image_id": [r[0] for r in rows], "label": [r[1] for r in rows], "blob": [r[2] for r in rows]})
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=100)
    commit(api, {"data/train-00000-of-00001.parquet": tmp_path / "train.parquet"})
    assert hub.tree(REPO)["data/train-00000-of-00001.parquet"].xet_hash is not None
    hub.clear_log()

    proc = subprocess.run([sys.executable, "-c", _LOAD, REPO], env=consumer_env(hub.url, tmp_path / "consumer"),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"consumer failed:\n{proc.stderr[-4000:]}\nserver log:\n{hub.format_log()}"
    loaded = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    expected = [[i, label, blob.hex()] for i, label, blob in rows]
    assert loaded == {"download": expected, "streaming": expected}
    assert "xet_read_token" in kinds(hub)  # the download went through hf_xet
    assert any(r.status == 206 for r in hub.requests("xet_bridge"))  # streaming read ranges through the bridge



_UPLOAD = r"""
import sys, time
from huggingface_hub import HfApi
start = time.monotonic()
try:
    HfApi(endpoint=sys.argv[1], token=sys.argv[2]).upload_file(
        path_or_fileobj=bytes(range(256)) * 400, path_in_repo="data/x.bin", repo_id=sys.argv[3], repo_type="dataset")
    print("RESULT uploaded")
except Exception as exc:
    print(f"RESULT {type(exc).__name__} after {time.monotonic() - start:.0f} s")
"""


def test_a_failing_write_token_route_fails_the_upload_and_commits_nothing(hub, api, token, tmp_path):
    # hf_xet retries a 5xx from the token route 5 times with a 3 s base delay (about 2 minutes in all); a consumer
    # subprocess lets this test turn that down (hf_xet reads its settings when the process creates its session).
    hub.inject_fault("xet_write_token", count=None, mode="500")
    env = consumer_env(hub.url, tmp_path / "uploader") | {"HF_XET_CLIENT_RETRY_MAX_ATTEMPTS": "1",
                                                          "HF_XET_CLIENT_RETRY_BASE_DELAY": "100ms"}
    proc = subprocess.run([sys.executable, "-c", _UPLOAD, hub.url, token, REPO], env=env, capture_output=True,
                          text=True, timeout=60)
    result = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    assert result.startswith("RESULT ConnectionError"), proc.stdout + proc.stderr[-2000:]
    assert len(hub.requests("xet_write_token")) >= 1 and hub.requests("commit") == []
    assert hub.store_usage().xet_bytes == 0
    # hf_xet keeps a log file per process under HF_HOME/xet/logs; it names the failing request, not the token
    logs = "".join(f.read_text() for f in (tmp_path / "uploader").rglob("xet/logs/*.log"))
    assert "xet-write-token" in logs and token not in logs


def test_a_fresh_uploader_finds_old_chunks_only_through_global_dedup(hub, api):
    """hf_xet asks the CAS about a file's first chunk and about 1 chunk in 1024 (hash % 1024 == 0, >= 256 chunks
    apart); every other chunk is deduplicated only against shards the client holds: those of xorbs it uploaded
    itself (its shard cache) and those the CAS's answers brought. So a file whose first chunk changed is sent whole
    by a fresh machine (a CI runner without the publisher's HF_XET_CACHE), and deduplicated by the machine that
    uploaded the old version."""
    v1 = random_bytes(8_000_000, seed=13)
    commit(api, {"data/x.bin": v1}, message="v1")

    def stored_by(data: bytes, fresh: bool) -> float:
        if fresh:
            hub.cas.forget_clients()
        before = hub.store_usage()
        commit(api, {"data/x.bin": data})
        return (hub.store_usage() - before).xet_bytes / len(data)

    assert stored_by(b"new first chunk" * 100 + v1, fresh=False) < 0.05  # the machine that uploaded v1
    assert stored_by(b"another first chunk" * 100 + v1, fresh=True) > 0.95
    assert stored_by(v1[:4_000_000] + b"new middle chunk" * 100 + v1[4_000_000:], fresh=True) < 0.05
