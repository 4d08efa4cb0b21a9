"""The `moa-local` command line."""

from moa_local.cli.main import main

__all__ = ["main"]
