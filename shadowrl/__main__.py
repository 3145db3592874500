"""``python -m shadowrl`` is the ``shadowrl`` command."""

from shadowrl.cli.main import app

app(prog_name="shadowrl")
