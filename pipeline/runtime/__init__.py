"""The machinery the build runs on: executors, the per-image cache, I/O overlap, shard checks and atomic writes."""
