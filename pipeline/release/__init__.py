"""What a release is made of: its shard plan, the Parquet and WebDataset writers, card, Croissant, figures, manifest and ledger."""
