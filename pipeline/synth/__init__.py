"""Synthetic raw archives in the input layout of any shipped config, with planted duplicates and a truth file.

generator (writes the archive: `synthesize`) <- plan (which cells and files) and variants (one cell's files)
<- field (drawing a field) <- shapes, styles (masks, class looks) and camera (the noise model).
"""
