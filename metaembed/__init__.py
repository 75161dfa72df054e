"""MetaEmbed: multi-vector retrieval whose accuracy, latency and index size are chosen at serving time."""

__version__ = "0.1.0"
