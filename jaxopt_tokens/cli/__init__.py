"""The `jaxopt-tokens` command line: one module per command, `main` in `main.py`."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
