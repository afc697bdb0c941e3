"""Shared fixtures: an isolated Hugging Face environment, a local Hub server, and release directories.

Environment variables and import time: huggingface_hub 2.4.0 reads most of its settings once, when
`huggingface_hub.constants` is imported (HF_ENDPOINT -> ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE and HF_URL_HOSTS;
HF_HOME -> HF_HUB_CACHE, HF_TOKEN_PATH; HF_HUB_OFFLINE, HF_HUB_DISABLE_TELEMETRY, HF_HUB_DISABLE_XET), and
`huggingface_hub.utils._http._HUB_ORIGINS` is derived from ENDPOINT at import too; datasets 5.2.0 copies
HF_ENDPOINT into `datasets.config.HF_ENDPOINT` / `HUB_DATASETS_URL` and its cache paths from HF_HOME /
HF_DATASETS_CACHE at import. Patching all of those per test would be fragile, so:

* this module sets, before anything imports huggingface_hub, the variables that must hold for the whole session:
  telemetry off (with telemetry on, building the user agent fetches `{ENDPOINT}/api/agent-harnesses`, i.e. the
  real Hub), offline mode off, and HF_HOME in a throw-away directory so the in-process constants never point at
  the machine's ~/.cache/huggingface or its token;
* `pipeline.lifecycle.publish.steps.publish` takes the endpoint as an argument (or reads HF_ENDPOINT when called) and gives it
  to `HfApi(endpoint=...)`, which all its calls honour, so publishing runs in-process against any server port;
* consumers (`datasets.load_dataset`, `hf_hub_download`) run in a fresh Python subprocess whose environment has
  HF_ENDPOINT, HF_HOME and HF_DATASETS_CACHE pointing at this test's server and tmp_path, set before import, the
  way a user would run them (`run_consumer`);
* per test, `hf_env` also monkeypatches the environment (HF_HOME, HF_DATASETS_CACHE into tmp_path, no HF_TOKEN,
  no HF_ENDPOINT) and `huggingface_hub.constants.HF_TOKEN_PATH`, so nothing leaks between tests.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_SESSION_HF_HOME = tempfile.mkdtemp(prefix="mll23-test-hf-home-")
atexit.register(shutil.rmtree, _SESSION_HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _SESSION_HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ.pop("HF_ENDPOINT", None)
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_DISABLE_XET", None)  # publish must disable Xet by itself

import pytest  # noqa: E402

from tests.consumerkit import consumer_env  # noqa: E402
from tests.hubserver import HubServer  # noqa: E402
from tests.release_fixture import write_fixture_release  # noqa: E402


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Hugging Face home for this test; returns it."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


@pytest.fixture
def hub(hf_env: Path):
    """A fresh local Hub per test (ephemeral port, stops itself after 5 minutes at most).

    On teardown: no token may have shown up anywhere the server looks, and the clients must not have needed an
    endpoint the server does not implement."""
    server = HubServer(tree_page_size=5, max_lifetime=300).start()
    try:
        yield server
        assert server.token_sightings == [], f"token leaked: {server.token_sightings}"
        assert server.unknown_requests() == [], "\n".join(map(str, server.unknown_requests()))
        crashes = [r for r in server.requests() if r.note.startswith("hubserver internal error")]
        assert crashes == [], "\n".join(map(str, crashes))  # a client retry must not hide a server bug
    finally:
        server.stop()


@pytest.fixture
def token(hub: HubServer) -> str:
    """Write token of user 'alice', member of organisation 'org'."""
    return hub.add_user("alice", orgs=["org"])


@pytest.fixture
def release_v1(tmp_path: Path) -> Path:
    return write_fixture_release(tmp_path / "release-1.0.0", version="1.0.0")


@pytest.fixture
def release_v2(tmp_path: Path) -> Path:
    """v1.1.0: train split changed (one more row), one gallery image removed, a release note added."""
    return write_fixture_release(
        tmp_path / "release-1.1.0",
        version="1.1.0",
        rows={"train": 7},
        gallery=("mll23_00000", "mll23_00001"),
        notes=("1.0.0", "1.1.0"),
    )


_CONSUMER = r"""
import hashlib, json, sys
import datasets
from huggingface_hub import hf_hub_download

spec = json.loads(sys.argv[1])
out = {}
for check in spec["checks"]:
    revision = check["revision"]
    ds = datasets.load_dataset(spec["repo_id"], revision=revision)
    splits = {}
    for name, split in ds.items():
        features = split.features
        first = split[0]
        splits[name] = {
            "num_rows": split.num_rows,
            "features": {k: type(v).__name__ for k, v in features.items()},
            "label_names": getattr(features.get("label"), "names", None),
            "image_ids": list(split["image_id"]),
            "first_image": [type(first["image"]).__module__, list(first["image"].size)],
        }
    files = {}
    for path in check.get("files", []):
        local = hf_hub_download(spec["repo_id"], path, repo_type="dataset", revision=revision)
        files[path] = hashlib.sha256(open(local, "rb").read()).hexdigest()
    out[revision] = {"splits": splits, "files": files}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def run_consumer(hub: HubServer, tmp_path: Path):
    """Load revisions of a dataset repo with the real `datasets.load_dataset` / `hf_hub_download`, in a fresh
    interpreter configured by environment variables only (see the module docstring)."""

    def run(repo_id: str, checks: list[dict], *, token: str | None = None, script: str = _CONSUMER) -> dict:
        """`script` reads {"repo_id", "checks"} as JSON from argv[1] and prints one line "RESULT <json>"."""
        home = tmp_path / "consumer"
        env = consumer_env(hub.url, home)
        if token:
            env["HF_TOKEN"] = token
        spec = json.dumps({"repo_id": repo_id, "checks": checks})
        proc = subprocess.run([sys.executable, "-c", script, spec], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, f"consumer failed:\n{proc.stderr[-4000:]}\nserver log:\n{hub.format_log()}"
        line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    return run


@pytest.fixture(autouse=True)
def _isolated_hf_caches(tmp_path_factory, monkeypatch):
    """datasets/huggingface_hub caches of in-process loads go to this session's temp dir, never the machine's."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))


@pytest.fixture(autouse=True)
def _isolated_mll23_cache(tmp_path_factory, monkeypatch):
    """`mll23 build` keeps its per-image cache under $XDG_CACHE_HOME: per test, never the machine's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))


@pytest.fixture(scope="session")
def config():
    from pipeline.config import load_config

    return load_config()
