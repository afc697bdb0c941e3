"""The release's two formats loaded from a Hub repository (the local Hub server), the way a user would:
Parquet from the published revision, and the WebDataset variant from a revision of its own whose root is the
release's `wds/` folder (its card declares Image + ClassLabel), as `mll23 publish` puts it on branch
`webdataset`, tagged `v1.0.0-webdataset`. `data_dir="wds"` is shown for contrast: there
the root card wins and the tar features are inferred, so the labels lose their names and images of the other
suffix are dropped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.build import build_release
from pipeline.lifecycle.publish.steps import publish
from tests.consumerkit import consumer_env, mixed_format_raw, small_shards

REPO = "org/mll23-consumers"
WDS_REVISION = "v1.0.0-webdataset"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

_CONSUMER = r"""
import json, sys
import datasets

repo, wds_revision = sys.argv[1], sys.argv[2]

def describe(ds):
    out = {}
    for name, split in ds.items():
        rows = list(split)
        features = split.features
        out[name] = {
            "rows": len(rows),
            "features": {k: type(v).__name__ for k, v in features.items()},
            "names": next((v.names for v in features.values() if isinstance(v, datasets.ClassLabel)), None),
            "images": sum(1 for r in rows for k, v in features.items() if isinstance(v, datasets.Image) and r[k] is not None),
        }
    return out

def without_features():
    try:
        return describe(datasets.load_dataset(repo, revision="v1.0.0", data_dir="wds"))
    except Exception as exc:  # reported to the test: inferring from five samples may fail outright
        return {"error": f"{type(exc).__name__}: {exc} (cause: {exc.__cause__!r})"}

print("RESULT " + json.dumps({
    "parquet": describe(datasets.load_dataset(repo, revision="v1.0.0")),
    "parquet_streaming": describe(datasets.load_dataset(repo, revision="v1.0.0", streaming=True)),
    "webdataset": describe(datasets.load_dataset(repo, revision=wds_revision)),
    "webdataset_streaming": describe(datasets.load_dataset(repo, revision=wds_revision, streaming=True)),
    "data_dir_wds": without_features(),
}))
"""


def load_from_hub(hub, tmp_path) -> dict:
    home = tmp_path / "consumer"
    env = consumer_env(hub.url, home)
    proc = subprocess.run([sys.executable, "-c", _CONSUMER, REPO, WDS_REVISION], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"consumer failed:\n{proc.stderr[-4000:]}\nserver log:\n{hub.format_log()}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_both_formats_load_from_a_hub_repository(hub, token, tmp_path, config):
    mixed_format_raw(tmp_path / "raw")
    release = build_release(tmp_path / "raw", tmp_path / "release", small_shards(config), workers=1).out_dir
    publish(release, REPO, token=token, endpoint=hub.url, log=lambda _: None)  # main, then wds/ as `webdataset`

    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    expected = {s: v["num_examples"] for s, v in manifest["splits"].items() if v["num_examples"]}
    loaded = load_from_hub(hub, tmp_path)
    for way in ("parquet", "parquet_streaming", "webdataset", "webdataset_streaming"):
        assert {s: v["rows"] for s, v in loaded[way].items()} == expected, way
        assert {s: v["images"] for s, v in loaded[way].items()} == expected, way  # every row has its image
        for split in loaded[way].values():
            assert split["names"] == config.class_names, way
            assert "ClassLabel" in split["features"].values() and "Image" in split["features"].values(), way
    # the contrast: through the root card the tar columns are inferred from the first five samples, so at best the
    # labels lose their names (the images all arrive: every sample names its image member `png`), and when a
    # metadata field is empty in those five (this archive has images without a patient id) the load fails
    contrast = loaded["data_dir_wds"]
    if "error" in contrast:
        assert contrast["error"].startswith("DatasetGenerationError") and "Couldn't cast array of type" in contrast["error"], contrast
    else:
        assert all(v["names"] is None and v["features"]["cls"] == "Value" for v in contrast.values())
        assert {s: v["images"] for s, v in contrast.items()} == expected
