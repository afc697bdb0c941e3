"""What a check reports: its failures, escaped for printing and capped in number, and the result of each check."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.untrusted.safetext import printable

MAX_LISTED = 20  # failures of one kind listed one by one before the rest are counted
MESSAGE_CHARS = 2000  # one failure message, escaped, at most this long


@dataclass(frozen=True)
class Failure:
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass
class CheckResult:
    name: str
    description: str
    failures: list[Failure] = field(default_factory=list)
    skipped: str | None = None  # why a loader check did not run (an earlier check failed)


def escaped(check: str, message: str) -> Failure:
    """A failure whose message, which may quote the release, is safe to print."""
    return Failure(check, printable(message, limit=MESSAGE_CHARS))


def capped(check: str, messages: Iterable[str]) -> list[Failure]:
    """The first failures, escaped for printing, and a count of the rest (counted, not kept)."""
    out, more = [], 0
    for m in messages:
        if len(out) < MAX_LISTED:
            out.append(escaped(check, m))
        else:
            more += 1
    if more:
        out.append(Failure(check, f"... and {more} more like these"))
    return out
