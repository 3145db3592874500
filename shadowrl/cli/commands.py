"""The command classes every ``shadowrl`` command uses, and the help texts they share."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup, TyperOption

JSON_HELP = "Print one JSON object on stdout (progress and logs go to stderr)."

def _without_flag_types(params: list[Any]) -> list[Any]:
    """Typer's rich help prints a value type even for a flag (``--json <bool>``), though a
    flag takes no value; an empty metavar leaves the type column of flags blank."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose help shows no value type for flags (``--json``, ``--help``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """The ``shadowrl`` group, its ``--help`` shown as a flag like its commands' flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))

