"""Readers for input we did not write: release files opened safely, formats checked before parsing, text made printable."""
