"""The installed version of sepconv."""

__version__ = "0.1.0"
