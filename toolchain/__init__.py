"""ACSL edge-deployment toolchain: prune, slim, recover, export, build, profile."""
__version__ = "0.1.0"
