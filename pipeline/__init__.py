"""mll23-pipeline: raw MLL23 crops in, a deduplicated, validated, versioned dataset release out."""

__version__ = "0.1.0"
