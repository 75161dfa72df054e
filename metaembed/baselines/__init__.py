"""Reproducible baselines scored by the same harness and metrics as MetaEmbed models."""

from metaembed.baselines.single_vector import MiniLMEncoder, SingleVectorEncoder

__all__ = ["MiniLMEncoder", "SingleVectorEncoder"]
