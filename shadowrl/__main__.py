"""``python -m shadowrl`` is the ``shadowrl`` command."""

from shadowrl.cli import app

app(prog_name="shadowrl")
