"""Stage progress: what the build and the writers report to; the CLI draws bars, tests and libraries stay silent."""

from __future__ import annotations


class Progress:
    """Receives stage progress; this silent default is what tests and libraries use (cli.RichProgress draws bars)."""

    def start(self, stage: str, total: int | None) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def finish(self, stage: str) -> None: ...
