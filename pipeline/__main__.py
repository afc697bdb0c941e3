"""`python -m pipeline ...` runs the `mll23` command (useful where the console script is not on PATH)."""

from pipeline.cli import main

main()
