"""Synthetic raw archives in the input layout of any shipped config, with planted duplicates and a truth file."""
