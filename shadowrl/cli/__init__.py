"""The ``shadowrl`` command line: parsing and rendering only."""

from shadowrl.cli.main import app

__all__ = ["app"]
