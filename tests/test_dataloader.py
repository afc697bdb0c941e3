"""PyTorch's real DataLoader with 8 workers over every split, through webdataset and `datasets` streaming.

Workers are processes: their warnings and log lines never reach this process's `warnings` filters or caplog,
so each loader runs in a fresh interpreter with every warning shown ("always") and logging on stderr, and
the test reads that stderr, which the workers share. A control run on a release cut into one shard per split
shows that the same check does see the shard warnings and errors the issue reported.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build import build_release
from pipeline.config import SPLITS, validate_config
from pipeline.release.layout import read_manifest
from pipeline.synth.generator import synthesize

pytest.importorskip("torch")

WORKERS = 8
SCALE = 0.008  # about 340 crops: every split has more rows than workers
# what webdataset and datasets say when a split has too few shards for the workers (torch's own warning that
# 8 workers exceed this machine's cores is about the machine, not the release)
SHARD_WORDS = re.compile(r"shard|too many dataloader workers", re.IGNORECASE)

_LOADERS = r"""
import json, logging, sys, warnings
warnings.simplefilter("always")
warnings.filterwarnings("ignore", category=ResourceWarning)  # webdataset leaves tar files to the garbage collector
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

import datasets
import torch
import webdataset as wds
from torch.utils.data import DataLoader

DIR, WORKERS = sys.argv[1], int(sys.argv[2])
manifest = json.load(open(f"{DIR}/manifest.json"))
out = {}
for split, info in manifest["splits"].items():
    if not info["num_examples"]:
        continue
    result = out[split] = {}
    tars = wds.WebDataset(f"{DIR}/{info['webdataset']['pattern']}", shardshuffle=False,
                          nodesplitter=wds.single_node_only, workersplitter=wds.split_by_worker)
    tars = tars.decode("torchrgb8").to_tuple("__key__", "png", "cls").batched(16)
    streamed = datasets.load_dataset(DIR, split=split, streaming=True).select_columns(["image_id", "image", "label"])
    loaders = {
        "webdataset": (DataLoader(tars, batch_size=None, num_workers=WORKERS), lambda b: (b[0], b[1], b[2])),
        "streaming": (DataLoader(streamed.with_format("torch"), batch_size=16, num_workers=WORKERS),
                      lambda b: (b["image_id"], b["image"], b["label"])),
    }
    for name, (loader, unpack) in loaders.items():
        try:
            ids, labels, shapes = [], [], set()
            for batch in loader:
                batch_ids, images, batch_labels = unpack(batch)
                ids += list(batch_ids)
                labels += [int(x) for x in batch_labels]
                shapes.add((str(images.dtype), tuple(images.shape[1:])))
            result[name] = {"ids": ids, "labels": labels, "shapes": sorted(shapes)}
        except Exception as exc:
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
print("RESULT " + json.dumps(out))
"""


def _build(base: Path, config, **shards_keys) -> Path:
    raw = base / "raw"
    if not raw.exists():
        synthesize(raw, config=config, scale=SCALE, seed=5, workers=2)
    doc = copy.deepcopy(config.raw)
    doc["shards"] = {**doc["shards"], **shards_keys}
    out = base / f"release-{len(list(base.glob('release-*')))}"
    return build_release(raw, out, validate_config(doc, "test config"), workers=2).out_dir


def _run_loaders(release: Path, tmp: Path) -> tuple[dict, str]:
    env = {
        **os.environ,
        "HF_HOME": str(tmp / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp / "hf_datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    proc = subprocess.run([sys.executable, "-c", _LOADERS, str(release), str(WORKERS)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), proc.stderr


def _parquet_labels(release: Path, manifest: dict, split: str) -> dict[str, int]:
    labels = {}
    for path in manifest["splits"][split]["parquet"]:
        table = pq.read_table(release / path, columns=["image_id", "label"])
        labels.update(zip(table.column("image_id").to_pylist(), table.column("label").to_pylist()))
    return labels


@pytest.fixture(scope="module")
def builds(tmp_path_factory, config):
    return tmp_path_factory.mktemp("dataloader")


def test_eight_workers_read_every_image_of_every_split_exactly_once_without_shard_warnings(builds, config):
    release = _build(builds, config)  # the shipped config's [shards]
    manifest = read_manifest(release)
    assert all(manifest["splits"][s]["num_examples"] >= WORKERS for s in SPLITS)
    result, stderr = _run_loaders(release, builds)
    assert set(result) == set(SPLITS)
    for split in SPLITS:
        expected = _parquet_labels(release, manifest, split)
        for name in ("webdataset", "streaming"):
            got = result[split][name]
            assert "error" not in got, (split, name, got)
            assert sorted(got["ids"]) == sorted(expected), (split, name)  # each image once: no loss, no repeat
            assert dict(zip(got["ids"], got["labels"])) == expected
            assert got["shapes"] == [["torch.uint8", [3, 288, 288]]]  # decoded images, channels first
    assert not [line for line in stderr.splitlines() if SHARD_WORDS.search(line)], stderr[-4000:]


def test_the_check_sees_too_few_shards_for_the_workers(builds, config):
    """Control: one shard per split (the old layout of a small release) must fail the checks above."""
    release = _build(builds, config, min_shards_per_split=1)
    manifest = read_manifest(release)
    assert all(len(manifest["splits"][s]["parquet"]) == 1 for s in SPLITS)
    result, stderr = _run_loaders(release, builds)
    assert any("fewer shards than workers" in result[s]["webdataset"].get("error", "") for s in SPLITS)
    assert "Too many dataloader workers" in stderr


_README_RECIPES = r"""
import sys
DIR = sys.argv[1]
{code}
counts = {{}}
for name, loader in (("webdataset", wds_loader), ("map", map_loader), ("streaming", stream_loader)):
    n = 0
    for batch in loader:
        images, labels = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 288, 288), images.shape
        assert len(labels) == len(images)
        n += len(images)
    counts[name] = n
print("RESULT " + json.dumps(counts))
"""


def test_readme_training_recipes_run_as_printed(builds, config):
    """README's "Training with PyTorch" block, unchanged, with DIR set: one epoch of each loader over train."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    code = text.split("### Training with PyTorch", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "num_workers=8" in code
    release = sorted(builds.glob("release-*"))[0] if list(builds.glob("release-*")) else _build(builds, config)
    manifest = read_manifest(release)
    env = {**os.environ, "HF_HOME": str(builds / "hf_home"), "HF_DATASETS_CACHE": str(builds / "hf_datasets"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _README_RECIPES.format(code=code), str(release)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    counts = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    train = manifest["splits"]["train"]["num_examples"]
    assert counts == {"webdataset": train, "map": train, "streaming": train}
    assert not [line for line in proc.stderr.splitlines() if SHARD_WORDS.search(line)], proc.stderr[-4000:]
