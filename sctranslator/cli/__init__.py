"""The command line: `sctranslator COMMAND ...` (entry.py) and the bundled demo (demo.py)."""

from sctranslator.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
