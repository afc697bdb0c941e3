"""The `mll23` command: a thin typer layer over the pipeline's functions.

Exit codes: 0 success; 1 the input or release failed a check (invalid inputs under --strict, a failed
verification); 2 wrong usage or an invalid config (nothing was done).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pipeline import build as build_mod
from pipeline.config import SPLITS, ConfigError, load_config
from pipeline.runtime.integrity import IntegrityError
from pipeline.untrusted.safetext import DEFAULT_LIMIT, printable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="Build, check and publish MLL23 dataset releases.")

# The consoles are made per command, not at import, so that tests and embedding callers see their own streams.
def _consoles() -> tuple[Console, Console]:
    return Console(), Console(stderr=True)

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class RichProgress(build_mod.Progress):
    def __init__(self, console: Console) -> None:
        self._bar = Progress(
            TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._tasks: dict[str, int] = {}

    def start(self, stage: str, total: int | None) -> None:
        if not self._tasks:
            self._bar.start()
        self._tasks[stage] = self._bar.add_task(stage, total=total)

    def advance(self, stage: str, n: int = 1) -> None:
        self._bar.advance(self._tasks[stage], n)

    def finish(self, stage: str) -> None:
        self._bar.refresh()

    def close(self) -> None:
        if self._tasks:
            self._bar.stop()


def _fail(message: str, code: int) -> typer.Exit:
    # escape(): messages quote file names, and a name like "x[/].tif" must print as itself, not as markup
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def shown(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """Text from a raw archive (file names, annotations.csv values) as one safe line: safetext.printable, except
    that backslashes are kept. Names arrive as ingest's readable names, whose backslashes already are escapes
    (a literal one is shown as \\x5c), so the printed name stays the one in ledger.csv."""
    text = str(text)
    cut = len(text) - limit if len(text) > limit else 0
    safe = "\\".join(printable(part, limit=0) for part in text[:limit].split("\\"))
    return safe + (f"...[{cut} more characters]" if cut else "")


def _fail_shown(message: str, code: int) -> typer.Exit:
    """_fail for a message that quotes the raw archive: each of its lines made safe on its own, printed with
    neither markup nor emoji codes (a name holding ':cat:' or '[/]' prints as itself)."""
    safe = "\n".join(shown(line, limit=4 * DEFAULT_LIMIT) for line in message.split("\n"))
    _, err = _consoles()
    err.print("error:", style="bold red", end=" ", highlight=False, markup=False)
    err.print(safe, highlight=False, markup=False, emoji=False, soft_wrap=True)
    return typer.Exit(code)


def _load_config(config: Path | None, version: str | None, repo_id: str | None = None, release_date: str | None = None):
    try:
        return load_config(config, version=version, repo_id=repo_id, release_date=release_date)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def summary_table(report: build_mod.BuildReport) -> Table:
    counts = report.counts
    table = Table(title=f"release {escape(str(report.out_dir))}", show_lines=False)
    table.add_column("fate")
    table.add_column("images", justify="right")
    for fate, n in counts.ledger.items():
        table.add_row(fate, f"{n:,}")
    table.add_row("[bold]ledger total[/]", f"[bold]{sum(counts.ledger.values()):,}[/]")
    for split in SPLITS:
        table.add_row(f"split {split}", f"{counts.splits[split].total:,}")
    return table


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the synthetic RAW archive (must not exist)")],
    scale: Annotated[float, typer.Option(help="1.0 gives the 41,906 raw crops of MLL23; 0.01 about 420")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed; same seed and scale give identical files")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (0: all cores)")] = 0,
    config: Annotated[Path | None, typer.Option(help="Release config TOML, or a shipped config by name: mll23 (default), matek19, acevedo20")] = None,
) -> None:
    """Write realistic synthetic raw crops with planted duplicates, conflicts, dysplastic cells and look-alikes."""
    from pipeline.synth.generator import synthesize

    out, _ = _consoles()
    cfg = _load_config(config, None)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise _fail(f"{out_dir} exists and is not empty; choose a new directory", EXIT_USAGE)
    if not 0 < scale <= 10:
        raise _fail(f"--scale must be in (0, 10], got {scale}", EXIT_USAGE)
    summary = synthesize(out_dir, config=cfg, scale=scale, seed=seed, workers=workers or build_mod.default_workers())
    out.print(f"wrote {summary.files:,} raw images to {out_dir} (truth: {out_dir / 'synth_truth.csv'})")
    out.print(f"a correct build keeps {sum(summary.expected_published.values()):,} of them")


@app.command()
def build(
    raw: Annotated[Path, typer.Argument(help="RAW directory: one folder per class, optional annotations.csv")],
    out_dir: Annotated[Path, typer.Option("--out", help="Release directory to create")],
    config: Annotated[Path | None, typer.Option(help="Release config TOML (default: the shipped MLL23 config)")] = None,
    version: Annotated[str | None, typer.Option(help="Release version X.Y.Z (overrides the config)")] = None,
    repo: Annotated[str | None, typer.Option(help="Hub repository ORG/NAME the card's snippets load from (overrides the config's [card] repo_id)")] = None,
    release_date: Annotated[str | None, typer.Option(help="Release date YYYY-MM-DD (overrides the config)")] = None,
    strict: Annotated[bool, typer.Option(help="Fail, writing nothing, if any input is invalid")] = False,
    workers: Annotated[int, typer.Option(help="Processes for per-image work (0: all cores)")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing release directory")] = False,
    executor: Annotated[str, typer.Option(help="Where per-image work runs: local (process pool) or dask")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address for --executor dask, e.g. tcp://head:8786")] = None,
    cache: Annotated[Path | None, typer.Option(help="Per-image result cache (default: $XDG_CACHE_HOME/mll23, else ~/.cache/mll23)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the per-image cache")] = False,
    verify_cache: Annotated[bool, typer.Option(help="Re-hash every file and reuse cached results by sha256 only")] = False,
    previous: Annotated[Path | None, typer.Option(help="The previous release: its images keep their image_id and split")] = None,
    notes_dir: Annotated[
        Path | None,
        typer.Option(help="Where the editable release notes live, e.g. your repository's release_notes/ (default: only inside the release)"),
    ] = None,
) -> None:
    """Build a release: ingest, decode, dedup, exclude, validate, split, write."""
    from pipeline.runtime.cache import default_cache_dir
    from pipeline.runtime.executor import ExecutorError, make_executor

    out, err = _consoles()
    cfg = _load_config(config, version, repo, release_date)
    if not raw.is_dir():
        raise _fail(f"RAW directory not found: {raw}", EXIT_USAGE)
    cache_dir = None if no_cache else (cache or default_cache_dir())
    try:
        engine = make_executor(executor, workers or build_mod.default_workers(), scheduler)
    except ExecutorError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    report = _run_build(
        engine, RichProgress(err), raw, out_dir, cfg, strict=strict, overwrite=overwrite, cache_dir=cache_dir,
        verify_cache=verify_cache, previous=previous, notes_dir=notes_dir,
    )
    _print_build_report(report, out, err, f"{engine.describe()}", cache_dir)
    _print_notes_location(report, out, out_dir, notes_dir)


def _run_build(engine, progress: RichProgress, raw: Path, out_dir: Path, cfg, **options) -> build_mod.BuildReport:
    """build_release on ``engine``, its failures turned into exit codes; the engine is closed either way."""
    from pipeline.runtime.executor import ExecutorError
    from pipeline.lifecycle.ancestry import AncestryError
    from pipeline.lifecycle.notes import NotesError

    try:
        report = build_mod.build_release(raw, out_dir, cfg, progress=progress, executor=engine, **options)
    except ExecutorError as exc:
        progress.close()
        raise _fail(str(exc), EXIT_USAGE) from None
    except (build_mod.BuildError, IntegrityError) as exc:
        progress.close()
        raise _fail_shown(str(exc), EXIT_CHECK_FAILED) from None
    except (AncestryError, NotesError) as exc:
        progress.close()
        raise _fail_shown(str(exc), EXIT_USAGE) from None
    except OSError as exc:  # a full disk, a vanished directory: the staging copy is gone, nothing is published
        progress.close()
        raise _fail_shown(f"cannot build the release: {exc}; no release was written to {out_dir}", EXIT_CHECK_FAILED) from None
    finally:
        engine.close()
    progress.close()
    return report


def _print_build_report(report: build_mod.BuildReport, out: Console, err: Console, engine: str, cache_dir: Path | None) -> None:
    # Everything below may quote the raw archive (names, annotations.csv values): printed with markup off, via shown()
    for note in report.warnings:
        err.print(f"warning: {shown(note)}", style="yellow", highlight=False, markup=False, emoji=False, soft_wrap=True)
    for move in report.split_moves:
        err.print(f"split change: {shown(move.describe())}", style="yellow", highlight=False, markup=False, emoji=False, soft_wrap=True)
    work = report.work
    err.print(
        f"per-image work on {engine}: {work['decoded']:,} decoded, {work['from_cache']:,} from the cache"
        + (f" ({cache_dir})" if cache_dir else " (cache off)"),
        highlight=False,
        soft_wrap=True,
    )
    err.print("stage times: " + " ".join(f"{stage}={seconds:.2f}s" for stage, seconds in report.timings.items()), highlight=False, soft_wrap=True)
    err.print("stage CPU: " + " ".join(f"{stage}={seconds:.2f}s" for stage, seconds in report.cpu_timings.items()), highlight=False, soft_wrap=True)
    for entry in report.problems:
        err.print(f"invalid: {shown(entry.relpath)}: {shown(entry.reason)}", style="yellow", highlight=False, markup=False, emoji=False, soft_wrap=True)
    if report.ignored:
        names = ", ".join(shown(name) for name in report.ignored[:10])
        err.print(f"ignored {len(report.ignored)} non-input file(s): {names}", highlight=False, markup=False, emoji=False, soft_wrap=True)
    out.print(summary_table(report))
    out.print(f"ledger: {report.balance.line()}", highlight=False, soft_wrap=True, markup=False)


def _print_notes_location(report: build_mod.BuildReport, out: Console, out_dir: Path, notes_dir: Path | None) -> None:
    editable = f" (editable copy: {notes_dir / Path(report.notes_path).name})" if notes_dir is not None else " (pass --notes-dir to keep an editable copy)"
    out.print(f"release notes: {out_dir / report.notes_path}{editable}", highlight=False, soft_wrap=True)


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The earlier release directory")],
    new: Annotated[Path, typer.Argument(help="The later release directory")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON instead of Markdown")] = False,
) -> None:
    """Print what changed between two releases: the same text as the release notes' generated part."""
    import json

    from pipeline.lifecycle.diff import DiffError, diff_releases, render_diff

    try:
        d = diff_releases(old, new)
    except DiffError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    # plain print: the Markdown must come out byte for byte as the notes carry it, not re-wrapped by rich
    typer.echo(json.dumps(d.to_json(), indent=2, sort_keys=True) if as_json else render_diff(d), nl=False)


@app.command()
def verify(
    release_arg: Annotated[str, typer.Argument(metavar="RELEASE", help="The release directory to check, or a published release hf://datasets/ORG/NAME@vX.Y.Z")],
    rebuild: Annotated[Path | None, typer.Option(help="RAW directory: also rebuild and compare byte for byte")] = None,
    previous: Annotated[
        Path | None, typer.Option(help="With --rebuild: the release this one was built on (default: found beside it by hash)")
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes for the rebuild (0: all cores)")] = 0,
    notes_dir: Annotated[Path | None, typer.Option(help="Also check that the release's notes equal the editable copy here")] = None,
    sample: Annotated[str, typer.Option(help="hf:// only: images decoded against pixel_sha256 (a number, or 'all')")] = "300",
    endpoint: Annotated[str | None, typer.Option(help="hf:// only: Hub URL (default: HF_ENDPOINT, else huggingface.co)")] = None,
    smoke: Annotated[bool, typer.Option(help="hf:// only: finish with a streaming load_dataset of the release")] = True,
) -> None:
    """Check a release for CI: exit 0 only when every check holds; each failure is named. An hf:// release is
    checked on the Hub without downloading it (pipeline.lifecycle.verify.remote)."""
    from pipeline.lifecycle.verify import run_checks

    out, err = _consoles()
    if release_arg.startswith("hf://"):
        _verify_remote(release_arg, sample, endpoint, smoke, out)
        return
    release = Path(release_arg)
    if not release.is_dir():
        raise _fail(f"release directory not found: {printable(release)}", EXIT_USAGE)
    if rebuild is not None and not rebuild.is_dir():
        raise _fail(f"RAW directory not found: {rebuild}", EXIT_USAGE)
    results = run_checks(release, rebuild_raw=rebuild, previous=previous, workers=workers or None, notes_dir=notes_dir)
    failed = [r for r in results if r.failures]
    for r in results:
        status = "[red]FAIL[/]" if r.failures else "[yellow]skip[/]" if r.skipped else "[green]ok[/]  "
        out.print(f"{status} {r.name:<16} {r.description}", highlight=False, soft_wrap=True)
        if r.skipped:
            out.print(f"     ({r.skipped})", highlight=False, markup=False, soft_wrap=True)
        # verify escapes what it quotes from the release (pipeline.untrusted.safetext); markup=False: printed as written
        for f in r.failures:
            out.print(f"     - {f.message}", highlight=False, markup=False, soft_wrap=True)
    if failed:
        n = sum(len(r.failures) for r in failed)
        out.print(f"{printable(release)}: {len(failed)} of {len(results)} checks failed ({n} problem(s))", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_CHECK_FAILED)
    out.print(f"{printable(release)}: all {len(results)} checks passed", highlight=False, markup=False, soft_wrap=True)


def _verify_remote(url: str, sample: str, endpoint: str | None, smoke: bool, out) -> None:
    import os

    from huggingface_hub import get_token

    from pipeline.lifecycle.verify.remote import RemoteError, release_urls, verify_remote

    if sample != "all" and not (sample.isdigit() and int(sample) > 0):
        raise _fail(f"--sample must be a positive number or 'all', got {printable(sample)}", EXIT_USAGE)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    say = lambda line: out.print(line, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    failed = 0
    try:
        urls = [url] if "@" in url else release_urls(url, endpoint=endpoint, token=get_token())
        for one in urls:
            say(f"verifying {one}")
            report = verify_remote(one, endpoint=endpoint, token=get_token(), log=say, smoke=smoke,
                                   sample=None if sample == "all" else int(sample))
            for failure in report.failures:
                say(f"     - {failure}")
            if report.failures:
                failed += 1
                say(f"{printable(one)}: {len(report.failures)} problem(s)")
            else:
                say(f"{printable(one)}: passed ({report.checked_by_metadata} large files by the Hub's sha256,"
                    f" {len(report.downloaded)} small files, {report.images_checked} images)")
    except RemoteError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except Exception as exc:  # the Hub unreachable or refusing: a failed check, named
        raise _fail(printable(f"{url}: could not be read from the Hub: {type(exc).__name__}: {exc}", limit=600),
                    EXIT_CHECK_FAILED) from None
    if failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("ci-workflow")
def ci_workflow(
    install: Annotated[
        str | None,
        typer.Option(help="pip requirement for the tool in CI (default: this version, mll23-pipeline==X.Y.Z); verify's extras are added"),
    ] = None,
    hub_repo: Annotated[str | None, typer.Option(help="The public Hub dataset ORG/NAME the releases are published to")] = None,
) -> None:
    """Print a GitHub Actions workflow that verifies a repository's releases: on the Hub (tag push, weekly, on
    demand) and the release directories a pull request changes (read-only, no secrets); the extras verify
    needs are added to the requirement."""
    from pipeline.resources import RequirementError, ci_workflow_text

    try:
        text = ci_workflow_text(install, hub_repo)
    except RequirementError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    typer.echo(text, nl=False)


@app.command()
def publish(
    release_dir: Annotated[Path, typer.Argument(help="A release directory built by `mll23 build`")],
    repo: Annotated[str, typer.Option("--repo", help="Dataset repository ORG/NAME on the Hub")],
    private: Annotated[bool, typer.Option(help="Create the repository private (default: public)")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the plan (files, sizes, what the Hub has) and change nothing")] = False,
    endpoint: Annotated[str | None, typer.Option(help="Hub URL (default: HF_ENDPOINT, else huggingface.co)")] = None,
) -> None:
    """Verify a release, upload what the Hub does not have yet, and tag it vX.Y.Z (never moving a tag); wds/
    goes to branch `webdataset`, tagged vX.Y.Z-webdataset.

    The token comes from the usual huggingface_hub places (HF_TOKEN, `hf auth login`); it is never printed."""
    from pipeline.lifecycle.publish.plan import PublishError
    from pipeline.lifecycle.verify import verify_messages
    from pipeline.lifecycle.publish.steps import publish as publish_release
    from pipeline.release.layout import MANIFEST

    out, _ = _consoles()
    if not (release_dir / MANIFEST).is_file():
        raise _fail(f"{release_dir} is not a release directory (no {MANIFEST})", EXIT_USAGE)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise _fail(f"--repo must be ORG/NAME, got {repo!r}", EXIT_USAGE)
    try:
        result = publish_release(
            release_dir, repo, private=private, dry_run=dry_run, endpoint=endpoint,
            # publish runs verify's pass over the files' bytes itself (refusing hard links too), so each file is hashed once
            verify=lambda path: verify_messages(path, files_hashed=True), verify_name="mll23 verify", log=lambda line: out.print(line, highlight=False, markup=False, soft_wrap=True),
        )
    except PublishError as exc:
        raise _fail(str(exc), EXIT_CHECK_FAILED) from None
    if not dry_run:
        for published in (result, result.webdataset):
            if published is not None:
                out.print(f"published {published.repo_id} {published.tag}: {published.url}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry
    app()


@app.command()
def harmonise(
    releases: Annotated[list[Path], typer.Argument(help="Source release directories (built with `mll23 build`), e.g. MLL23, Matek 2019, Acevedo 2020")],
    out_dir: Annotated[Path, typer.Option("--out", help="Harmonised release directory to create")],
    map_path: Annotated[Path | None, typer.Option("--map", help="Label map CSV: harmonised,<source>_label,... (default: the shipped map of the 11 shared classes)")] = None,
    name: Annotated[str, typer.Option(help="Dataset name of the harmonised release")] = "blood-cells-harmonised",
    version: Annotated[str, typer.Option(help="Version X.Y.Z of the harmonised release")] = "1.0.0",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing release directory")] = False,
) -> None:
    """One release of several releases' shared classes: a `source` column, per-source and leave-one-source-out configs."""
    from pipeline.lifecycle.harmonise import HarmoniseError, iter_report_lines
    from pipeline.lifecycle.harmonise import harmonise as harmonise_releases

    out, _ = _consoles()
    try:
        report = harmonise_releases(releases, out_dir, map_path=map_path, name=name, version=version, overwrite=overwrite)
    except HarmoniseError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except OSError as exc:  # a full disk, a vanished directory: the staging copy is removed, nothing is published
        raise _fail(f"cannot write the harmonised release: {exc}; nothing was written to {out_dir}", EXIT_CHECK_FAILED) from None
    for line in iter_report_lines(report):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(f"wrote {report.counts.kept:,} images in {len(report.counts.per_class)} classes to {out_dir}", highlight=False, soft_wrap=True)
