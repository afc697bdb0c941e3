"""`mll23 verify hf://datasets/ORG/NAME@v1.0.0` of a whole release on a local Hub: bytes, disk, time, and a tamper.

    python bench/bench_remote_verify.py --scale 1 --work /tmp/rv        # synth + build + publish + verify
    python bench/bench_remote_verify.py --release DIR --work /tmp/rv    # an existing release directory

Steps: a synthetic archive (`mll23 synth`) and its release (`mll23 build`, timed) unless `--release` names one;
publish to a local Hub (tests/hubserver.py, LFS mode: the server keeps the objects in memory, so it needs about the
release's size in RAM); then `mll23 verify hf://datasets/org/mll23@v1.0.0` in a child process (the CLI as a user
runs it, default sample of 300 images, with the streaming smoke test), whose HF_HOME and TMPDIR are fresh
directories polled for their size every 0.05 s while it runs (a file that lives shorter than a poll can be
missed), and every temporary directory's size logged just before it is deleted (verify keeps what it downloads
there until then): the peak disk is the larger of the two. Reported: the bytes the server sent (`HubServer.requests()`, every
response body, redirects and the smoke test's child included) against the release's bytes, peak disk, wall time. Then one byte of a Parquet shard is flipped in the server's store, inside an
image of a row group the default sample reads, and the same command must exit 1 naming that shard (and the row).
`--sample all` and `--no-smoke` runs are optional (`--also-all`, `--also-no-smoke`).

The work directory is deleted at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from pipeline.lifecycle.publish.steps import publish  # noqa: E402
from pipeline.lifecycle.verify.remote import DEFAULT_SAMPLE, _sample_groups  # noqa: E402
from tests.hubserver import HubServer  # noqa: E402

REPO = "org/mll23"
URL = f"hf://datasets/{REPO}@v1.0.0"


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while walking
    return total


def release_bytes(release: Path) -> int:
    return sum(p.stat().st_size for p in release.rglob("*") if p.is_file())


def run_timed(cmd: list[str], env: dict | None = None, watch: list[Path] = ()) -> dict:
    """Run `cmd`; wall time, exit code, output, and the peak of du(watch) polled every 0.05 s (and at the end)."""
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], sum(du(w) for w in watch))
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    start = time.perf_counter()
    poller.start()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    done.set()
    poller.join()
    at_end = sum(du(w) for w in watch)
    return {"rc": proc.returncode, "out": proc.stdout + proc.stderr, "seconds": seconds,
            "peak_disk": max(peak[0], at_end), "disk_at_end": at_end}


def timed_cli(args: list[str], work: Path, name: str) -> float:
    start = time.perf_counter()
    log = work / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if proc.returncode != 0:
        sys.exit(f"{name} failed, see {log}")
    return time.perf_counter() - start


# The CLI, with every tempfile.TemporaryDirectory's size (apparent bytes of its files) logged just before it is
# deleted: verify keeps what it downloads in such directories until they go (its small files, the smoke test's
# HF_HOME), so the largest logged size is the most they held at once, which a poll can miss.
_CLI_LOGGING_TEMP_DIRS = """
import os, sys, tempfile
_cleanup = tempfile.TemporaryDirectory.cleanup
def cleanup(self):
    size = sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(self.name) for f in fs)
    with open(os.environ["BENCH_TEMP_LOG"], "a") as fh:
        fh.write(self.name + chr(9) + str(size) + chr(10))
    _cleanup(self)
tempfile.TemporaryDirectory.cleanup = cleanup
sys.argv[0] = "mll23"
from pipeline.cli import app
app()
"""


def verify_cli(hub: HubServer, token: str, work: Path, name: str, extra: list[str] = ()) -> dict:
    home, tmp = work / f"{name}-hf_home", work / f"{name}-tmp"
    for d in (home, tmp):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update({"HF_TOKEN": token, "HF_HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    temp_log = work / f"{name}-tempdirs.tsv"
    temp_log.unlink(missing_ok=True)
    env["BENCH_TEMP_LOG"] = str(temp_log)
    hub.clear_log()
    result = run_timed([sys.executable, "-c", _CLI_LOGGING_TEMP_DIRS, "verify", URL, "--endpoint", hub.url, *extra],
                       env, watch=[home, tmp])
    sizes = [int(line.split("\t")[1]) for line in temp_log.read_text().splitlines()] if temp_log.exists() else []
    result["largest_temp"] = max(sizes, default=0)
    result["served"] = sum(r.bytes_out for r in hub.requests())
    small = re.search(r"small files downloaded \(([\d,]+) B\)", result["out"])
    result["small"] = int(small.group(1).replace(",", "")) if small else 0
    result["requests"] = len(hub.requests())
    return result


def tamper_sampled_image(hub: HubServer, release: Path) -> tuple[str, int, int]:
    """Flip one byte in the middle of the first image of the first row group the default sample reads, in the
    server's stored object of that shard. Returns (shard, row group, offset in the file)."""
    shards = sorted(p.relative_to(release).as_posix() for p in (release / "data").glob("*.parquet"))
    sizes = {}
    for rel in shards:
        meta = pq.ParquetFile(release / rel).metadata
        sizes[rel] = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    shard, group = _sample_groups(sizes, DEFAULT_SAMPLE)[0]
    first = pq.ParquetFile(release / shard).read_row_group(group, columns=["image"]).column("image")[0].as_py()["bytes"]
    repo = hub.get_repo(REPO)
    oid = hub.tree(REPO, "v1.0.0")[shard].lfs_oid
    data = bytearray(repo.lfs[oid])
    at = data.find(first)
    assert at >= 0 and data.find(first, at + 1) < 0, "image bytes not found once in the stored shard"
    at += len(first) // 2
    data[at] ^= 0xFF
    repo.lfs[oid] = bytes(data)
    assert hashlib.sha256(repo.lfs[oid]).hexdigest() != oid
    return shard, group, at


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True, help="working directory (must not exist unless --raw/--release lie in it)")
    parser.add_argument("--raw", type=Path, help="an existing synthetic archive (skip `mll23 synth`)")
    parser.add_argument("--release", type=Path, help="an existing release directory (skip synth and build)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--also-no-smoke", action="store_true", help="also a run with --no-smoke")
    parser.add_argument("--also-all", action="store_true", help="also a run with --sample all (reads every row group)")
    return parser.parse_args()


def _isolate_hub_client(work: Path) -> None:
    """This process publishes over LFS (the server stores plain objects, which can be tampered with), quietly,
    with its own Hugging Face home."""
    os.environ["HF_HOME"] = str(work / "publish_hf_home")
    os.environ["XDG_CACHE_HOME"] = str(work / "xdg")
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import constants
    constants.HF_HUB_DISABLE_XET = True
    constants.HF_HUB_DISABLE_PROGRESS_BARS = True


def _release(args: argparse.Namespace, work: Path) -> Path:
    """The release to publish: the one given, or built (from the archive given, or a new synthetic one)."""
    if args.release is not None:
        return args.release.resolve()
    raw = args.raw
    if raw is None:
        raw = work / "raw"
        s = timed_cli(["synth", str(raw), "--scale", str(args.scale), "--seed", str(args.seed), "--workers", "2"], work, "synth")
        print(f"mll23 synth --scale {args.scale}: {s:.0f} s", flush=True)
    release = work / "release"
    s = timed_cli(["build", str(raw), "--out", str(release), "--workers", "2", "--no-cache"], work, "build")
    print(f"mll23 build: {s:.0f} s", flush=True)
    return release.resolve()


def _row(label: str, r: dict, total: int) -> str:
    return (f"| {label} | {r['rc']} | {r['served']:,} | {r['served'] / total:.2%} | {r['requests']} | {r['small']:,} |"
            f" {r['largest_temp']:,} | {r['peak_disk']:,} | {r['disk_at_end']:,} | {r['seconds']:.1f} |")


def _verify_runs(hub: HubServer, token: str, work: Path, args: argparse.Namespace, total: int) -> None:
    runs = [("default", [])]
    if args.also_no_smoke:
        runs.append(("no-smoke", ["--no-smoke"]))
    if args.also_all:
        runs.append(("sample-all", ["--sample", "all", "--no-smoke"]))
    print("| run | exit | served B | share of the release | requests | small files B | largest temp dir B |"
          " peak disk B (polled) | disk at end B | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name, extra in runs:
        r = verify_cli(hub, token, work, name, extra)
        print(_row(f"`{' '.join(['mll23 verify', URL, *extra])}`", r, total), flush=True)
        (work / f"verify-{name}.out").write_text(r["out"])
        if r["rc"] != 0:
            print(r["out"][-3000:])


def _tampered_run(hub: HubServer, token: str, work: Path, release: Path, total: int) -> bool:
    """Flip a byte of an image the default sample reads; True when verify exits 1 naming the shard."""
    shard, group, at = tamper_sampled_image(hub, release)
    print(f"tampered: {shard}, byte {at:,} flipped (an image of row group {group}, which the default sample reads)", flush=True)
    r = verify_cli(hub, token, work, "tampered")
    (work / "verify-tampered.out").write_text(r["out"])
    named = [line.strip() for line in r["out"].splitlines() if shard in line]
    print(_row(f"tampered: `mll23 verify {URL}`", r, total))
    print("lines naming the shard:", *named[:5], sep="\n  ", flush=True)
    ok = r["rc"] == 1 and bool(named)
    print("tamper detected and named" if ok else "TAMPER NOT REPORTED AS EXPECTED", flush=True)
    return ok


def main() -> None:
    args = _arguments()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    _isolate_hub_client(work)
    release = _release(args, work)
    total = release_bytes(release)
    parquet = sum(p.stat().st_size for p in (release / "data").glob("*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (release / "data").glob("*.parquet"))
    print(f"release {release}: {total:,} B ({parquet:,} B of Parquet shards, {rows:,} rows)", flush=True)
    with HubServer(max_lifetime=None) as hub:
        token = hub.add_user("alice", orgs=["org"])
        start = time.perf_counter()
        publish(release, REPO, token=token, endpoint=hub.url, log=lambda _: None)
        print(f"publish (LFS, local server): {time.perf_counter() - start:.0f} s; server holds"
              f" {hub.store_usage().lfs_bytes:,} B", flush=True)
        _verify_runs(hub, token, work, args, total)
        ok = _tampered_run(hub, token, work, release, total)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
