"""Text from untrusted sources (file names, a release's strings, raw archives, Hub answers) made safe to print.

A name can hold a newline (a forged second line of output), ESC sequences (terminal control), bidi overrides
(text that reads differently from what it is) or GitHub Actions workflow commands (`::error::`, `::add-mask::`,
`::stop-commands::`), which the runner executes when a line of the log starts with them. `printable()` turns
every such character into a visible escape, so one message stays one line that says exactly what it holds.
"""

from __future__ import annotations

import unicodedata

DEFAULT_LIMIT = 400  # characters of one quoted value; a 1 MB "file name" must not flood a CI log

# Categories never printed raw: controls (Cc: C0, DEL, C1), formats (Cf: bidi overrides, zero-width joiners,
# BOM), line and paragraph separators (Zl, Zp), surrogates and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """`text` as one line of visible characters: controls escaped, `::` broken, at most `limit` characters kept.

    The backslash is escaped too, so an escape in the output always means the character was there,
    never that the input spelt it out.
    """
    s = text if isinstance(text, str) else str(text)
    cut = len(s) - limit if limit and len(s) > limit else 0
    if cut:
        s = s[:limit]
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    safe = "".join(out).replace("::", ":\\x3a")
    if cut:
        safe += f"...[{cut} more characters]"
    return safe


def show(rel: object, limit: int = 200) -> str:
    """A release-controlled value for a message, cut to `limit` characters. Escaping is left to where messages
    are printed (`printable` on the whole message), so that it happens exactly once."""
    text = rel if isinstance(rel, str) else repr(rel)
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more characters]"
