"""Release notes `release_notes/vX.Y.Z.md`: generated from the diff, with a section the maintainers own.

Everything outside the maintainer markers is rewritten on every build; the text between them is carried
over, byte for byte, from the existing notes file of the same version (in the notes directory). The build
writes the notes into the release (`DIR/release_notes/vX.Y.Z.md`, listed in the manifest, linked from
the card) and, when given a notes directory, keeps the editable copy there.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pipeline.config import SPLITS
from pipeline.lifecycle.diff import ReleaseSummary, diff_summaries, markdown_table, render_diff, summary_from_dir, summary_from_parts
from pipeline.release.layout import notes_relpath

BEGIN = "<!-- mll23:maintainer-notes:begin -->"
END = "<!-- mll23:maintainer-notes:end -->"
_HEADER_COMMENT = (
    "<!-- Written by `mll23 build`. Only the text between the maintainer-notes markers is kept when these notes\n"
    "     are regenerated; everything else is rewritten from the diff against the previous release. -->"
)
_PROMPT = (
    "\n<!-- Maintainers: write here what the figures below do not say (why labels changed, where a new batch\n"
    "     comes from, what users should do). Text between these markers is kept across regenerations. -->\n"
)


class NotesError(ValueError):
    """A notes file whose maintainer section cannot be found; the message names the file."""


def maintainer_words(path: Path) -> str:
    """The text between the markers of an existing notes file; the blank prompt for a new one."""
    if not path.is_file():
        return _PROMPT
    text = path.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise NotesError(
            f"{path}: expected one '{BEGIN}' line followed by one '{END}' line around the maintainers' words; "
            "restore them (or move the file away) so that the words are not lost"
        )
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)]


def render_first_release(new: ReleaseSummary) -> str:
    """The generated part for a release without a predecessor: what is in it."""
    per_split = {s: {} for s in SPLITS}
    for image in new.kept.values():
        per_split[image.split][image.label] = per_split[image.split].get(image.label, 0) + 1
    rows = []
    for c in new.class_names:
        n = [per_split[s].get(c, 0) for s in SPLITS]
        if sum(n):
            rows.append([c, *(f"{x:,}" for x in n), f"{sum(n):,}"])
    totals = [sum(per_split[s].values()) for s in SPLITS]
    rows.append(["**total**", *(f"{x:,}" for x in totals), f"{sum(totals):,}"])
    fates: dict[str, int] = {}
    for f in new.inputs.values():
        fates[f.fate] = fates.get(f.fate, 0) + 1
    fate_rows = [[fate, f"{n:,}"] for fate, n in sorted(fates.items())] + [["**raw inputs**", f"{sum(fates.values()):,}"]]
    return (
        f"## First release\n\n{len(new.kept):,} images in {len(rows) - 1} classes, from {sum(fates.values()):,} raw inputs.\n\n"
        "### Counts per class and split\n\n" + markdown_table(["class", *SPLITS, "total"], rows) + "\n\n"
        "### Cleaning: fate of the raw inputs\n\n" + markdown_table(["fate", "images"], fate_rows) + "\n"
    )


def render_notes(new: ReleaseSummary, previous: ReleaseSummary | None, words: str) -> str:
    if previous is None:
        base = "First release."
        generated = render_first_release(new)
    else:
        base = f"Previous release: v{previous.version} ({previous.release_date})."
        generated = render_diff(diff_summaries(previous, new))
    return (
        f"# {new.name} v{new.version}\n\n{_HEADER_COMMENT}\n\nReleased {new.release_date}. {base}\n\n"
        f"{BEGIN}{words}{END}\n\n{generated}"
    )


def card_section(version: str, previous_version: str | None) -> str:
    """The dataset card's link to the notes (a relative link: it works on the Hub and in a checkout)."""
    rel = notes_relpath(version)
    since = f"what changed since v{previous_version}" if previous_version else "what this first release contains"
    return f"\n## Release notes\n\nVersion {version}: {since} is in [{rel}]({rel}).\n"


def notes_for_build(manifest_body: dict, ledger_text: str, previous_dir: Path | None, words: str) -> str:
    """The notes of the release being built, from the same manifest and ledger it is about to write."""
    rows = list(csv.DictReader(io.StringIO(ledger_text)))
    new = summary_from_parts(manifest_body, rows)
    previous = summary_from_dir(previous_dir) if previous_dir is not None else None
    return render_notes(new, previous, words)


def write_editable_copy(notes_dir: Path, relpath: str, text: str) -> Path:
    """The maintainers' copy, next to their other notes: the file they edit before the next build."""
    target = notes_dir / Path(relpath).name
    notes_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target
