"""Every code block of both dataset cards runs as printed: from the Hub repository the config names (the local
Hub server, after `publish`) and from a local copy in the directory the cards name. Nothing is substituted."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.build import build_release
from pipeline.config import validate_config
from pipeline.lifecycle.publish.plan import WDS_TAG_SUFFIX
from pipeline.lifecycle.publish.steps import publish
from pipeline.release.snippets import WDS_TAG_SUFFIX as CARD_WDS_TAG_SUFFIX
from tests.consumerkit import consumer_env, mixed_format_raw

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "org/mll23-card"
LOCAL_DIR = "mll23-1.0.0"  # where the cards say a local copy is: {name}-{version}

_RUN_BLOCKS = r"""
import json, sys, traceback
results = []
for block in json.loads(sys.argv[1]):
    scope = {"__name__": "__card__"}
    try:
        exec(compile(block, "card block", "exec"), scope)
        results.append({"ok": True, "names": sorted(k for k in scope if not k.startswith("__"))})
    except Exception:
        results.append({"ok": False, "error": traceback.format_exc()[-3000:]})
print("RESULT " + json.dumps(results))
"""


def code_blocks(card: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.read_text(encoding="utf-8"), re.S)


def _config(config, repo_id: str | None):
    doc = copy.deepcopy(config.raw)
    if repo_id:
        doc["card"] = {**doc.get("card", {}), "repo_id": repo_id}
    return validate_config(doc, "test config")


def _run(blocks: list[str], cwd: Path, env: dict[str, str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _RUN_BLOCKS, json.dumps(blocks)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    failed = [f"--- block:\n{block}\n--- error:\n{r['error']}" for block, r in zip(blocks, results) if not r["ok"]]
    assert not failed, "\n".join(failed)
    return results


def test_the_cards_name_no_placeholder_and_no_repository_when_none_is_configured(tmp_path, config):
    mixed_format_raw(tmp_path / "raw")
    release = build_release(tmp_path / "raw", tmp_path / LOCAL_DIR, _config(config, None), workers=1).out_dir
    for card in (release / "README.md", release / "wds" / "README.md"):
        text = card.read_text(encoding="utf-8")
        assert not re.search(r"<(this|release|downloaded|repo)[^>]*>", text)
        blocks = code_blocks(card)
        assert blocks and not any("revision=" in b or "snapshot_download" in b for b in blocks)
    # without a repository, every block reads the local copy: run them beside it
    home = tmp_path / "consumer"
    env = consumer_env("http://127.0.0.1:9", home) | {"HF_HUB_OFFLINE": "1"}
    _run(code_blocks(release / "README.md") + code_blocks(release / "wds" / "README.md"), tmp_path, env)


def test_every_card_block_runs_as_printed_from_the_hub_and_from_the_download(hub, token, tmp_path, config):
    assert CARD_WDS_TAG_SUFFIX == WDS_TAG_SUFFIX  # the tag the wds card names is the one publish sets
    mixed_format_raw(tmp_path / "raw")
    release = build_release(tmp_path / "raw", tmp_path / "built", _config(config, REPO), workers=1).out_dir
    publish(release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
    root_blocks, wds_blocks = code_blocks(release / "README.md"), code_blocks(release / "wds" / "README.md")
    for blocks in (root_blocks, wds_blocks):
        assert any(f'"{REPO}"' in b for b in blocks) and any(f'"{LOCAL_DIR}' in b for b in blocks)
    assert any("num_workers" in b and "webdataset" in b for b in root_blocks)  # a PyTorch block per format
    assert any("num_workers" in b and "load_dataset" in b and "streaming=True" in b for b in root_blocks)

    work = tmp_path / "consumer-work"
    work.mkdir()
    env = consumer_env(hub.url, tmp_path / "consumer")
    results = _run(root_blocks + wds_blocks, work, env)
    assert (work / LOCAL_DIR / "manifest.json").read_bytes() == (release / "manifest.json").read_bytes()  # the download block
    assert all("images" in r["names"] and "labels" in r["names"] for b, r in zip(root_blocks + wds_blocks, results) if "DataLoader" in b)


def test_sample_config_is_a_stratified_percent_of_every_split(tmp_path, config):
    from pipeline.synth.generator import synthesize

    import datasets

    synthesize(tmp_path / "raw", config=config, scale=0.01, seed=11, workers=2)
    release = build_release(tmp_path / "raw", tmp_path / "rel", config, workers=2).out_dir
    manifest = json.loads((release / "manifest.json").read_text())
    header = yaml.safe_load((release / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default", "sample"]
    full = datasets.load_dataset(str(release))
    sample = datasets.load_dataset(str(release), "sample")
    names = full["train"].features["label"].names
    assert sample["train"].features["label"].names == names == config.class_names
    for split in sample:
        per_class = manifest["counts"]["splits"][split]["per_class"]
        got = {}
        for row in sample[split]:
            got.setdefault(names[row["label"]], []).append(row["image_id"])
        assert {c: len(ids) for c, ids in got.items()} == {c: max(1, round(n * config.sample_fraction)) for c, n in per_class.items() if n}
        raw_full = {r["image_id"]: r for r in full[split].cast_column("image", datasets.Image(decode=False))}
        for c, ids in got.items():  # the smallest image ids of the class
            assert sorted(ids) == sorted(i for i, r in raw_full.items() if names[r["label"]] == c)[: len(ids)]
        for row in sample[split].cast_column("image", datasets.Image(decode=False)):  # the full split's very bytes
            assert row["image"]["bytes"] == raw_full[row["image_id"]]["image"]["bytes"]
    card = (release / "README.md").read_text(encoding="utf-8")
    total = sum(sample[s].num_rows for s in sample)
    assert f"The `sample` config holds {total:,} images" in card


def test_card_flags_rare_classes_from_the_measured_counts(tmp_path, config):
    from pipeline.records import ReleaseCounts
    from pipeline.release.card import rare_classes

    counts = {"splits": {s: {"total": 10, "per_class": {}} for s in ("train", "validation", "test")}}
    for c in config.class_names:
        for s in counts["splits"]:
            counts["splits"][s]["per_class"][c] = 100
    counts["splits"]["test"]["per_class"]["lymphocyte_reactive"] = 0
    counts["splits"]["validation"]["per_class"]["lymphocyte_reactive"] = 3
    counts["splits"]["train"]["per_class"]["basophil"] = config.rare_class_min_images - 1
    text = rare_classes(config, ReleaseCounts.from_manifest(counts))
    floor = config.rare_class_min_images
    assert f"- `lymphocyte_reactive`: train 100, validation 3, test 0 (under {floor} in validation, test)" in text
    assert f"- `basophil`: train {floor - 1}, validation 100, test 100 (under {floor} in train)" in text
    assert text.count("\n- ") == 2
    assert "33" not in config.datasheet.limitations  # no fixed count in the prose: the card measures them


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("repo_id", 'org/x"); import os; ("', "card.repo_id"),  # quoted into the card's Python: only ORG/NAME passes
        ("repo_id", "no-slash", "card.repo_id"),
        ("sample_fraction", 0, "card.sample_fraction"),
        ("rare_class_min_images", 0, "card.rare_class_min_images"),
    ],
)
def test_card_keys_are_validated_naming_the_key(config, key, value, message):
    from pipeline.config import ConfigError

    doc = copy.deepcopy(config.raw)
    doc["card"] = {key: value}
    with pytest.raises(ConfigError, match=re.escape(f"key '{message}'")):
        validate_config(doc, "test config")


def test_build_repo_option_sets_the_cards_repository_and_is_validated(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from tests.rawkit import simple_raw

    simple_raw(tmp_path / "raw", ["myeloblast", "monocyte"], per_class=5)
    bad = CliRunner().invoke(app, ["build", str(tmp_path / "raw"), "--out", str(tmp_path / "bad"), "--repo", "not a repo"])
    assert bad.exit_code == 2 and "card.repo_id" in bad.output and not (tmp_path / "bad").exists()
    good = CliRunner().invoke(app, ["build", str(tmp_path / "raw"), "--out", str(tmp_path / "rel"), "--repo", "lab/blood-cells", "--workers", "1"])
    assert good.exit_code == 0, good.output
    assert 'load_dataset("lab/blood-cells", revision="v1.0.0")' in (tmp_path / "rel" / "README.md").read_text(encoding="utf-8")
