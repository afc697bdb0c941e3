"""Build benchmark: `mll23 build` against the hand-written baseline, the floors, and an incremental rebuild.

    python bench/run.py --scale 1            # full MLL23 size: 41,906 crops, 10.4 GB (generated once, cached)

One run, on one synthetic archive (bench/.cache/, made once per scale and seed):
  1. floors: read every file once (one process; also warms the page cache), decode every image with
     Pillow in N processes;
  2. `mll23 build --no-cache` end to end, with its stage times;
  3. the hand-written baseline on the same files: imagehash.phash in N processes + equal-hash grouping,
     push_to_hub's Parquet shard writing, webdataset's ShardWriter (bench/baseline.py), each timed;
  4. incremental rebuild: build with an empty cache, change 1% of the images, rebuild with the cache,
     and check the result is byte-identical to a clean build of the changed archive.
Each command runs in its own process tree, timed by wall clock and CPU (user+sys of the tree), with its
peak RSS sampled every 50 ms (summed over the tree, and the largest single process). Ratios are only
taken between figures of the same run. The run is appended to bench/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Build: `mll23 build` vs the hand-written baseline"
SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
CHANGED_FRACTION = 0.01


# ---- measuring a command ----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    wall: float
    cpu: float
    rss_tree: int  # peak of the summed RSS of the process and its descendants (sampled)
    rss_largest: int  # peak RSS of the largest single process (kernel's ru_maxrss)
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)


def _sample_tree(proc: psutil.Process, peak: list[int], done: threading.Event) -> None:
    while not done.is_set():
        total = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak[0] = max(peak[0], total)
        done.wait(0.05)


def measure(name: str, cmd: list[str]) -> Run:
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    out_path, err_path = OUT / f".{name}.stdout", OUT / f".{name}.stderr"
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        peak, done = [0], threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(psutil.Process(child.pid), peak, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if child.returncode != 0:
        raise SystemExit(f"{name} failed ({child.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return Run(name, wall, usage.ru_utime + usage.ru_stime, peak[0], usage.ru_maxrss * 1024, stdout, stderr)


# ---- the archive ------------------------------------------------------------------------------------


def archive(scale: float, seed: int, workers: int) -> Path:
    """The synthetic archive for (scale, seed) of pipeline.synth.generator, generated once into bench/.cache/."""
    raw = CACHE / f"raw-synth-scale{scale:g}-seed{seed}"
    if (raw / ".complete").is_file():
        return raw
    if raw.exists():
        shutil.rmtree(raw)  # an interrupted generation
    print(f"generating {raw.name} (once; cached) ...", flush=True)
    from pipeline.config import load_config

    from pipeline.synth.generator import synthesize

    start = time.perf_counter()
    files = synthesize(raw, config=load_config(), scale=scale, seed=seed, workers=workers).files
    (raw / ".complete").write_text(json.dumps({"files": files, "seconds": round(time.perf_counter() - start, 1)}))
    return raw


def image_files(raw: Path) -> list[Path]:
    return sorted(p for p in raw.glob("*/*") if p.suffix.lower() in SUFFIXES)


# ---- floors -----------------------------------------------------------------------------------------


def _decode(path: str) -> int:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.size[0]


def floors(files: list[Path], workers: int) -> dict[str, float]:
    start = time.perf_counter()
    total = 0
    for p in files:
        with open(p, "rb") as fh:
            total += len(fh.read())
    read = time.perf_counter() - start
    start, before = time.perf_counter(), os.times()
    pool = get_context("fork").Pool(workers)
    list(pool.imap_unordered(_decode, [str(p) for p in files], chunksize=64))
    pool.close()
    pool.join()  # reaped workers count in os.times().children_*
    after = os.times()
    cpu = after.children_user - before.children_user + after.children_system - before.children_system
    return {"read": read, "decode": time.perf_counter() - start, "decode_cpu": cpu, "bytes": total}


# ---- our build --------------------------------------------------------------------------------------


def mll23_build(name: str, raw: Path, out: Path, workers: int, cache: Path | None) -> Run:
    cmd = [sys.executable, "-m", "pipeline", "build", str(raw), "--out", str(out), "--workers", str(workers), "--overwrite"]
    cmd += ["--cache", str(cache)] if cache else ["--no-cache"]
    run = measure(name, cmd)
    times = re.search(r"stage times: (.*)", run.stderr)
    work = re.search(r"([\d,]+) decoded, ([\d,]+) from the cache", run.stderr)
    if not times or not work:
        raise SystemExit(f"{name}: no stage times / work line in the output:\n{run.stderr[-2000:]}")
    run.extra["stages"] = {k: float(v) for k, v in re.findall(r"([\w+]+)=([\d.]+)s", times.group(1))}
    cpu = re.search(r"stage CPU: (.*)", run.stderr)
    run.extra["stage_cpu"] = {k: float(v) for k, v in re.findall(r"([\w+]+)=([\d.]+)s", cpu.group(1))} if cpu else {}
    run.extra["decoded"] = int(work.group(1).replace(",", ""))
    run.extra["from_cache"] = int(work.group(2).replace(",", ""))
    kept = re.search(r"ledger: ([\d,]+) kept", run.stdout)
    run.extra["kept"] = int(kept.group(1).replace(",", "")) if kept else None
    return run


def hardlink_tree(raw: Path, tree: Path, replicas: int = 1) -> None:
    """A tree of hard links to the cached archive: files in it can be replaced without touching the cache.

    With replicas > 1 every image appears that many times under new names (``name_r1.tif``, ...), with
    annotation rows of their own (patient ids suffixed the same way): ``replicas`` times the inputs for
    no extra disk, every copy beyond the first an exact duplicate of it.
    """
    if tree.exists():
        shutil.rmtree(tree)
    for src in raw.rglob("*"):
        rel = src.relative_to(raw)
        if src.is_dir():
            (tree / rel).mkdir(parents=True, exist_ok=True)
        elif src.suffix.lower() in SUFFIXES:
            for r in range(replicas):
                dst = tree / (rel if r == 0 else rel.with_name(f"{src.stem}_r{r}{src.suffix}"))
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
        elif src.name == "annotations.csv":
            _replicate_annotations(src, tree / rel, replicas)


def _replicate_annotations(src: Path, dst: Path, replicas: int) -> None:
    import csv

    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["image", "label"], lineterminator="\n")
        writer.writeheader()
        for r in range(replicas):
            for row in rows:
                if r:
                    path = Path(row["image"])
                    row = dict(row, image=path.with_name(f"{path.stem}_r{r}{path.suffix}").as_posix())
                    if row.get("patient_id"):
                        row["patient_id"] += f"_r{r}"
                writer.writerow(row)


def change_images(tree: Path, fraction: float) -> int:
    """Give every 1/fraction-th image new pixels (one pixel value changed), replacing its link by a new file."""
    from PIL import Image

    files = image_files(tree)
    chosen = files[:: max(1, round(1 / fraction))]
    for path in chosen:
        with Image.open(path) as img:
            pixels = np.array(img.convert("RGB"))
            fmt = img.format
        pixels[0, 0, 0] ^= 1
        tmp = path.with_name(path.name + ".tmp")
        Image.fromarray(pixels).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, path)
    return len(chosen)


# ---- the run ----------------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1 = 41,906 crops (MLL23's size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-baseline", action="store_true", help="skip the hand-written baseline")
    ap.add_argument("--no-incremental", action="store_true", help="skip the cached rebuild after a 1%% change")
    ap.add_argument("--no-record", action="store_true", help="do not append the run to bench/RESULTS.md")
    ap.add_argument("--replicate", type=int, default=1, help="each image K times under new names (hard links): K x the inputs, no extra disk")
    return ap.parse_args(argv)


def run_baseline(tree: Path, workers: int) -> list[Run]:
    """The hand-written baseline, one part at a time (phash, parquet, wds), its outputs removed after each."""
    baseline: list[Run] = []
    bout = OUT / "baseline"
    shutil.rmtree(bout, ignore_errors=True)
    for part in ("phash", "parquet", "wds"):
        run = measure(f"baseline-{part}", [sys.executable, str(BENCH / "baseline.py"), part, str(tree), str(bout), "--workers", str(workers)])
        run.extra = json.loads(run.stdout.split("RESULT ", 1)[1])
        baseline.append(run)
        shutil.rmtree(bout / part, ignore_errors=True)
        print(f"baseline {part}: {run.wall:.1f} s, {mib(run.rss_tree)} peak", flush=True)
    shutil.rmtree(bout, ignore_errors=True)
    return baseline


def run_incremental(tree: Path, workers: int) -> dict:
    """A cold cached build, a rebuild after changing 1% of the images, and a clean build to compare it with."""
    cache = OUT / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cold = mll23_build("cold-cache", tree, OUT / "release", workers, cache)
    shutil.rmtree(OUT / "release")
    changed = change_images(tree, CHANGED_FRACTION)
    warm = mll23_build("rebuild-1pct", tree, OUT / "release", workers, cache)
    # The manifest lists every file's sha256: equal manifests mean identical releases. One release on
    # disk at a time (a full-scale one is ~21 GB).
    rebuilt_manifest = (OUT / "release" / "manifest.json").read_bytes()
    shutil.rmtree(OUT / "release")
    clean = mll23_build("clean-after-change", tree, OUT / "release", workers, None)
    identical = rebuilt_manifest == (OUT / "release" / "manifest.json").read_bytes()
    shutil.rmtree(OUT / "release")
    shutil.rmtree(cache)
    print(f"rebuild after {changed} changed: {warm.wall:.1f} s vs clean {clean.wall:.1f} s; identical {identical}", flush=True)
    return {"cold": cold, "warm": warm, "clean": clean, "changed": changed, "identical": identical}


def main(argv: list[str] | None = None) -> None:
    a = _arguments(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    raw = archive(a.scale, a.seed, a.workers)
    tree = OUT / "raw"
    hardlink_tree(raw, tree, a.replicate)
    files = image_files(tree)
    n = len(files)
    print(f"archive {raw.name}: {n:,} images, workers {a.workers}", flush=True)
    floor = floors(files, a.workers)
    print(f"floors: read {floor['read']:.1f} s ({floor['bytes'] / 1e9:.2f} GB), decode {floor['decode']:.1f} s", flush=True)

    ours = mll23_build("mll23-build", tree, OUT / "release", a.workers, None)
    release_bytes = sum(p.stat().st_size for p in (OUT / "release").rglob("*") if p.is_file())
    shutil.rmtree(OUT / "release")
    print(f"mll23 build: {ours.wall:.1f} s, {mib(ours.rss_tree)} peak (tree), stages {ours.extra['stages']}", flush=True)

    baseline = [] if a.no_baseline else run_baseline(tree, a.workers)
    incremental = {} if a.no_incremental else run_incremental(tree, a.workers)
    shutil.rmtree(tree)

    report = render(a, raw, n, floor, ours, release_bytes, baseline, incremental, load_before, os.getloadavg())
    print(report)
    if not a.no_record:
        record(report)


def render(a, raw, n, floor, ours, release_bytes, baseline, incremental, load_before, load_after) -> str:
    commit = git("rev-parse", "HEAD")
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/RESULTS.md") else ""
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, scale {a.scale:g} ({n:,} images), commit `{commit[:12]}`{dirty}",
        "",
        f"- Command: `python bench/run.py --scale {a.scale:g}" + (f" --replicate {a.replicate}" if a.replicate > 1 else "") + (" --no-baseline" if a.no_baseline else "") + (" --no-incremental" if a.no_incremental else "") + "`"
        + f"; archive `{raw.name}` ({floor['bytes'] / 1e9:.2f} GB); workers {a.workers}; {os.cpu_count()} CPUs;"
        + f" load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (shared machine)",
        "",
        "| what | wall s | CPU s | images/s | peak RSS (tree) | largest process |",
        "|---|---:|---:|---:|---:|---:|",
        f"| floor: read every file (1 process) | {floor['read']:.1f} | | {n / floor['read']:,.0f} | | |",
        f"| floor: decode every image ({a.workers} processes) | {floor['decode']:.1f} | {floor['decode_cpu']:.1f} | {n / floor['decode']:,.0f} | | |",
        f"| **`mll23 build`** (no cache) | **{ours.wall:.1f}** | {ours.cpu:.1f} | {n / ours.wall:,.0f} | {mib(ours.rss_tree)} | {mib(ours.rss_largest)} |",
    ]
    for stage, seconds in ours.extra["stages"].items():
        cpu = ours.extra["stage_cpu"].get(stage)
        lines.append(f"| &nbsp;&nbsp;stage {stage} | {seconds:.1f} | {'' if cpu is None else f'{cpu:.1f}'} | | | |")
    if baseline:
        total = sum(r.wall for r in baseline)
        for r in baseline:
            lines.append(f"| baseline {r.name.split('-', 1)[1]} | {r.wall:.1f} | {r.cpu:.1f} | {n / r.wall:,.0f} | {mib(r.rss_tree)} | {mib(r.rss_largest)} |")
        lines.append(f"| **baseline total** | **{total:.1f}** | {sum(r.cpu for r in baseline):.1f} | {n / total:,.0f} | {mib(max(r.rss_tree for r in baseline))} | |")
    lines += ["", "Ratios (same run):", ""]
    if baseline:
        lines.append(
            f"- baseline / `mll23 build`: **{sum(r.wall for r in baseline) / ours.wall:.2f}x** wall (target >= 3x), "
            f"{sum(r.cpu for r in baseline) / ours.cpu:.2f}x CPU"
        )
    lines.append(f"- `mll23 build` / decode floor: **{ours.wall / floor['decode']:.2f}x** wall (target <= 3x), {ours.cpu / floor['decode_cpu']:.2f}x CPU")
    lines.append(f"- peak RSS of the build: {mib(ours.rss_tree)} summed over its processes, {mib(ours.rss_largest)} for the largest (target < 1.5 GB at scale 1)")
    lines.append(f"- release size {release_bytes / 1e9:.2f} GB; images kept: ours {ours.extra['kept']:,}" + (f", baseline (equal pHash = duplicate) {baseline[0].extra['kept']:,}" if baseline else ""))
    if incremental:
        warm, clean, cold = incremental["warm"], incremental["clean"], incremental["cold"]
        lines.append(
            f"- incremental: {incremental['changed']:,} images changed ({incremental['changed'] / n:.1%}); rebuild with the cache "
            f"decoded {warm.extra['decoded']:,} and took {warm.wall:.1f} s = **{warm.wall / clean.wall:.0%}** of a clean build of the same input "
            f"({clean.wall:.1f} s; target < 15%); output byte-identical: **{incremental['identical']}**; "
            f"filling an empty cache took {cold.wall:.1f} s; rebuild stage times {warm.extra['stages']}"
        )
    return "\n".join(lines) + "\n"


def record(report: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nRuns of `python bench/run.py`, newest last.\n"
    head, _, tail = text.partition(SECTION)
    # Our runs go at the end of our section, before any section that follows it.
    next_section = re.search(r"^## ", tail[1:], flags=re.M)
    cut = next_section.start() + 1 if next_section else len(tail)
    text = head + SECTION + tail[:cut].rstrip("\n") + "\n\n" + report + ("\n" + tail[cut:] if next_section else "")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
