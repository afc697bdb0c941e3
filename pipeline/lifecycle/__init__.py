"""A release after it is built: its ancestry, diffs and notes, harmonising several releases, verify and publish."""
