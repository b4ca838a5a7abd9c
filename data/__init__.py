"""Data for training and evaluation: ``build_data(cfg)`` returns the loaders; ``SOURCES`` names the sources."""

from data.loaders import SOURCES, DataBundle, build_data

__all__ = ["SOURCES", "DataBundle", "build_data"]
