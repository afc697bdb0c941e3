"""printable(): untrusted text printed as one visible line."""

from pipeline.untrusted.safetext import printable


def test_controls_newlines_and_escape_sequences_are_visible_escapes():
    assert printable("a\nb") == "a\\x0ab"
    assert printable("x\x1b[31mred") == "x\\x1b[31mred"
    assert printable("tab\there\r") == "tab\\x09here\\x0d"
    assert printable("\u202egnp.exe") == "\\u202egnp.exe"  # bidi override
    assert printable("\u2028") == "\\u2028"
    assert "\n" not in printable("".join(chr(c) for c in range(0x20)) + "\x7f\x85")


def test_workflow_commands_cannot_start_or_appear():
    s = printable("::error file=x::forged")
    assert "::" not in s
    assert s == ":\\x3aerror file=x:\\x3aforged"
    assert "::" not in printable(":::")


def test_backslash_is_escaped_so_escapes_are_unambiguous():
    assert printable("a\\x0ab") == "a\\\\x0ab"
    assert printable("a\\x0ab") != printable("a\nb")


def test_ordinary_text_is_unchanged():
    name = "data/train-00000-of-00001.parquet — Zelle µm 細胞"
    assert printable(name) == name


def test_long_values_are_cut_with_a_count():
    s = printable("a" * 1000, limit=10)
    assert s == "aaaaaaaaaa...[990 more characters]"
