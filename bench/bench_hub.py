"""Bytes a re-release newly stores on the Hub (Xet and LFS), and bytes `mll23 verify hf://...` reads.

    python bench/bench_hub.py [--scale 0.02] [--seed 0] [--only 1pct|date|label ...] [--how same|fresh|lfs ...]

Builds v1.0.0 from a synthetic archive, then three re-releases with `--previous`: v1.1.0 (1% of the images
removed), v1.0.1-date (only the config's release_date changed) and v1.0.2-label (one image relabelled). Each is
published after v1.0.0 to a fresh local Hub (tests/hubserver.py) three ways: over Xet from the same machine
(hf_xet's client cache holds v1.0.0's chunks), over Xet from a fresh machine (`LocalCas.forget_clients()`: only
hf_xet's global dedup, a file's first chunk and 1 in 1024 chunks), and over Git LFS. Reported: bytes newly
stored (`HubServer.store_usage()` after minus before), as a share of the re-release's bytes. Then remote verify
of v1.0.0 (default sample of 300 images): bytes the server sent against the release's bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from huggingface_hub import constants  # noqa: E402

from pipeline.build import build_release  # noqa: E402
from pipeline.config import load_config, validate_config  # noqa: E402
from pipeline.lifecycle.publish.steps import publish  # noqa: E402
from pipeline.lifecycle.verify.remote import verify_remote  # noqa: E402
from pipeline.synth.generator import synthesize  # noqa: E402
from tests.hubserver import HubServer  # noqa: E402

REPO = "org/mll23"


def release_bytes(release: Path) -> int:
    return sum(p.stat().st_size for p in release.rglob("*") if p.is_file())


def copy_raw(raw: Path, out: Path) -> Path:
    shutil.copytree(raw, out)
    return out


def rows(raw: Path) -> list[dict]:
    with open(raw / "annotations.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(raw: Path, table: list[dict]) -> None:
    with open(raw / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def remove_one_percent(raw: Path) -> None:
    table = rows(raw)
    drop = {r["image"] for i, r in enumerate(sorted(table, key=lambda r: r["image"])) if i % 100 == 50}
    for rel in drop:
        (raw / rel).unlink()
    write_rows(raw, [r for r in table if r["image"] not in drop])


def relabel_one(raw: Path, labels: list[str]) -> None:
    table = rows(raw)
    row = sorted(table, key=lambda r: r["image"])[len(table) // 2]
    new = next(label for label in labels if label != row["label"] and (raw / label).is_dir())
    target = f"{new}/{Path(row['image']).name}"
    (raw / row["image"]).rename(raw / target)
    row["image"], row["label"] = target, new
    write_rows(raw, table)


def config_with(config, **changes):
    doc = json.loads(json.dumps(config.raw))
    doc.update(changes)
    return validate_config(doc, "bench config")


def measure(base: Path, release: Path, how: str, work: Path) -> dict:
    with HubServer(xet_dir=work / f"cas-{how}-{release.name}", max_lifetime=3600) as hub:
        if how == "lfs":
            os.environ["HF_HUB_DISABLE_XET"] = "1"
        token = hub.add_user("alice", orgs=["org"])
        try:
            publish(base, REPO, token=token, endpoint=hub.url, log=lambda _: None)
            if how == "xet, fresh machine":
                hub.cas.forget_clients()
            before = hub.store_usage()
            start = time.perf_counter()
            publish(release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
            seconds = time.perf_counter() - start
            stored = hub.store_usage() - before
        finally:
            os.environ.pop("HF_HUB_DISABLE_XET", None)
    return {"release": release.name, "how": how, "stored": stored.total, "xorbs": stored.xorb_bytes,
            "shards": stored.shard_bytes, "lfs": stored.lfs_bytes, "bytes": release_bytes(release),
            "seconds": round(seconds, 1)}


def remote_verify_bytes(base: Path, work: Path) -> dict:
    with HubServer(xet_dir=work / "cas-verify", max_lifetime=3600) as hub:
        token = hub.add_user("alice", orgs=["org"])
        publish(base, REPO, token=token, endpoint=hub.url, log=lambda _: None)
        out = {}
        for smoke in (False, True):
            hub.clear_log()
            report = verify_remote(f"hf://datasets/{REPO}@v1.0.0", endpoint=hub.url, token=token, smoke=smoke)
            assert report.failures == [], report.failures
            out[smoke] = sum(r.bytes_out for r in hub.requests())
        return {"served": out[False], "served_with_smoke": out[True], "bytes": release_bytes(base),
                "row_groups": report.row_groups_read, "images": report.images_checked, "rows": report.rows_total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-only", action="store_true", help="only the remote verify measurement")
    parser.add_argument("--no-verify", action="store_true", help="leave out the remote verify measurement")
    parser.add_argument("--no-fresh", action="store_true", help="leave out the 'xet, fresh machine' rows")
    parser.add_argument("--how", choices=("same", "fresh", "lfs"), action="append",
                        help="measure only these transports (repeatable): same = xet, same machine; fresh = xet,"
                             " fresh machine; lfs")
    parser.add_argument("--only", choices=("1pct", "date", "label"), action="append",
                        help="measure only these re-releases (repeatable): 1pct = v1.1.0, date = v1.0.1, label = v1.0.2")
    parser.add_argument("--keep", type=Path, help="build in this directory and keep it (releases for byte-level diffs)")
    args = parser.parse_args()
    constants.HF_HUB_DISABLE_XET = False
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants.HF_HUB_DISABLE_TELEMETRY = True
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        work = args.keep.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="mll23-bench-hub-"))
    os.environ["HF_HOME"] = str(work / "hf_home")
    os.environ["XDG_CACHE_HOME"] = str(work / "xdg")
    config = load_config()
    raw = work / "raw"
    synthesize(raw, config=config, scale=args.scale, seed=args.seed, workers=2)
    v1 = build_release(raw, work / "v1.0.0", config, workers=2).out_dir
    if not args.verify_only:
        hows = ("xet, same machine", "lfs") if args.no_fresh else ("xet, same machine", "xet, fresh machine", "lfs")
        if args.how:
            names = {"same": "xet, same machine", "fresh": "xet, fresh machine", "lfs": "lfs"}
            hows = tuple(h for h in hows if any(names[k] == h for k in args.how))
        rerelease_table(v1, raw, config, work, args.scale, hows, set(args.only or ("1pct", "date", "label")))
    if not args.no_verify:
        v = remote_verify_bytes(v1, work)
        print(f"remote verify of v1.0.0 (sample 300): {v['served']:,} B served of {v['bytes']:,} B"
              f" ({v['served'] / v['bytes']:.2%}); {v['row_groups']} row groups, {v['images']} images of {v['rows']};"
              f" with the streaming smoke test {v['served_with_smoke']:,} B ({v['served_with_smoke'] / v['bytes']:.2%})")
    if args.keep:
        for cas in work.glob("cas-*"):
            shutil.rmtree(cas, ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def rerelease_table(v1: Path, raw: Path, config, work: Path, scale: float, hows: tuple[str, ...],
                    only: set[str]) -> None:
    labels = list(config.class_names)
    releases = []
    if "1pct" in only:
        raw_removed = copy_raw(raw, work / "raw-removed")
        remove_one_percent(raw_removed)
        releases.append(build_release(raw_removed, work / "v1.1.0", config_with(config, version="1.1.0"),
                                      workers=2, previous=v1).out_dir)
    if "date" in only:
        releases.append(build_release(raw, work / "v1.0.1", config_with(config, version="1.0.1",
                                                                          release_date="2026-01-15"),
                                      workers=2, previous=v1).out_dir)
    if "label" in only:
        raw_label = copy_raw(raw, work / "raw-label")
        relabel_one(raw_label, labels)
        releases.append(build_release(raw_label, work / "v1.0.2", config_with(config, version="1.0.2"),
                                      workers=2, previous=v1).out_dir)
    print(f"scale {scale}: v1.0.0 {release_bytes(v1):,} B", flush=True)
    print("| re-release | transport | newly stored B | share of the release | xorbs | shards | LFS | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for release in releases:
        for how in hows:
            r = measure(v1, release, how, work)
            print(f"| {r['release']} | {r['how']} | {r['stored']:,} | {r['stored'] / r['bytes']:.2%} |"
                  f" {r['xorbs']:,} | {r['shards']:,} | {r['lfs']:,} | {r['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
