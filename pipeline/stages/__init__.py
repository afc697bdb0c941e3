"""The build's stages, in the order data flows through them: ingest, decode, dedup, exclude, validate, split."""
