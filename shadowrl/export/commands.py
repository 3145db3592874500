"""Export's command templates: the shell lines that carry out each step of a procedure.

Every action has a default Kubernetes command; a step's ``run:`` replaces it (the ``run:``
field: docs/scenario-format.md, ``run`` and ``sim``). Actions with no generic Kubernetes command
(``migrate_down``, ``flush_cache``, ``warm_cache``, ``disable_flag``, ``command`` without
``run``) become placeholders that *fail when run* and are flagged ``PLACEHOLDER`` so nobody
mistakes them for a working step.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shadowrl.core.plan import ordered_steps
from shadowrl.core.spec import (
    Scenario,
    Service,
    Step,
    format_duration,
    parse_duration,
    setting_kind,
)
from shadowrl.export.sources import ExportSource, export_error

PARAM_REF = re.compile(r"\{\{inputs\.parameters\.[A-Za-z0-9_-]+\}\}")
# a setting as command text: what the spec's settings normalise to (whole numbers, names,
# true/false); anything else could not be pasted into a command (Argo substitutes the
# parameter's value into the step's script as it is)
_SETTING_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# words the shell reads as syntax in a command's first position even when shlex.quote
# leaves them bare ("if", "time"): quoted, they name a command again
_RESERVED = frozenset("case coproc do done elif else esac fi for function if in select then "
                      "time until while".split())
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")


def whole_seconds(value: Any) -> int:
    """Durations in commands are whole seconds, rounded up (never shorter than chosen)."""
    return max(0, math.ceil(float(value) - 1e-9))


def setting_text(action: str, key: str, value: Any) -> str:
    """A setting as command text: durations in whole seconds, booleans as true/false."""
    if setting_kind(action, key) == "duration":
        return str(whole_seconds(parse_duration(value)))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def setting_label(action: str, key: str, value: Any) -> str:
    """A setting for people (comments): durations as ``30s``/``5m``, else as in commands."""
    if setting_kind(action, key) == "duration":
        return format_duration(parse_duration(value))
    return setting_text(action, key, value)


@dataclass(frozen=True)
class StepCommand:
    """The shell lines that carry out one step, with its chosen settings."""

    step: Step
    settings: dict[str, str]  # setting -> value text (durations in whole seconds)
    lines: tuple[str, ...]
    placeholder: str | None = None  # why the step must be filled in by hand
    notes: tuple[str, ...] = ()
    embedded: tuple[str, ...] = ()  # the scenario's free text the lines carry (run:, manifest)

    @property
    def script(self) -> str:
        """The lines as one ``sh -c`` script (``set -eu`` when there are several)."""
        if len(self.lines) == 1:
            return self.lines[0]
        return "\n".join(("set -eu", *self.lines))


def quote_word(token: str, refs: bool = False) -> str:
    """Shell-quote one word. With ``refs`` (the templates' own words only, never a ``run:``
    argument), Argo parameter references (``{{inputs.parameters.K}}``) stay outside the quotes
    so Argo still sees them; their values are checked setting texts."""
    if not refs:
        return shlex.quote(token)
    parts = PARAM_REF.split(token)
    found = PARAM_REF.findall(token)
    out = shlex.quote(parts[0]) if parts[0] or not found else ""
    for ref, part in zip(found, parts[1:]):
        out += ref + (shlex.quote(part) if part else "")
    return out


def command_word(token: str) -> str:
    """Shell-quote a command's first word: also quote the bare words the shell would read as
    a reserved word (``if``, ``time``) or an assignment (``A=b``), so it always names the
    program to run, and a leading ``-``."""
    word = shlex.quote(token)
    if word == token and (token in _RESERVED or _ASSIGNMENT.match(token)
                          or token.startswith("-")):
        return f"'{token}'"  # also "-x": ``sh -c SCRIPT`` must not read SCRIPT as options
    return word


def shell_join(argv: Sequence[str], refs: bool = False) -> str:
    """``argv`` as one shell command line running exactly that argv, every word quoted
    (``refs``: see :func:`quote_word`).

    bash reads a command whose first word starts with ``%`` as a job (``fg %1``), quoted or
    not; such a program runs through ``( exec ... )`` instead (bash and dash alike).
    """
    if not argv:
        raise ValueError("empty argv")
    line = " ".join([command_word(argv[0]), *(quote_word(t, refs) for t in argv[1:])])
    return f"( exec {line} )" if argv[0].startswith("%") else line


def argv_problem(token: str) -> str | None:
    """Why ``token`` cannot be an argument of a process (None when it can)."""
    if "\x00" in token:
        return "contains a NUL character, which no program argument can hold"
    if any("\ud800" <= ch <= "\udfff" for ch in token):
        return "contains a lone surrogate (not encodable as UTF-8)"
    return None


def check_argv(src: ExportSource, step_index: int, step: Step) -> None:
    """Raise a ``file:line: field: message`` error when a ``run:`` argument cannot be run."""
    for j, token in enumerate(step.run or ()):
        why = argv_problem(token)
        if why:
            raise export_error(src, ("procedure", "steps", step_index, "run", j),
                               f"cannot be exported as a command argument: it {why}")


def step_command(step: Step, scenario: Scenario | None = None, *,
                 ref: Callable[[str], str] | None = None,
                 timeout_s: float | None = None) -> StepCommand:
    """The command for ``step``: its ``run:`` if given, else the Kubernetes template.

    ``ref(key)`` is the text a setting is written as (default: its value; Argo passes
    ``{{inputs.parameters.KEY}}``). Every word of every line is shell-quoted; a setting whose
    text is not a plain word (whole number, name, true/false) raises ``ValueError``.
    """
    settings = {k: setting_text(step.action, k, v) for k, v in step.default_settings().items()}
    for key, text in settings.items():
        if not _SETTING_TEXT.fullmatch(text):
            raise ValueError(f"step '{step.name}': setting {key} = {text!r} is not a plain "
                             f"word (a whole number, a name, true or false)")
    val = ref or (lambda key: settings[key])
    if step.run:
        return StepCommand(step, settings, (shell_join(step.run),), embedded=tuple(step.run))
    t = step.target or ""
    deploy = f"deployment/{t}"
    status = ["kubectl", "rollout", "status", deploy]
    if timeout_s:
        status.append(f"--timeout={whole_seconds(timeout_s)}s")
    if step.action == "scale":
        return StepCommand(step, settings, (
            shell_join(["kubectl", "scale", deploy, f"--replicas={val('replicas')}"], refs=True),))
    if step.action == "rollback_version":
        lines = (*_strategy_lines(deploy, val, "surge" in settings),
                 shell_join(["kubectl", "rollout", "undo", deploy]), shell_join(status))
        return StepCommand(step, settings, lines, notes=_rollout_notes(deploy, settings))
    if step.action == "revert_config":
        previous = _previous_config(scenario, t)
        manifest = f"{t}-config-{previous or 'PREVIOUS'}.yaml"
        lines = (*_strategy_lines(deploy, val, "surge" in settings),
                 shell_join(["kubectl", "apply", "-f", manifest]),
                 shell_join(["kubectl", "rollout", "restart", deploy]), shell_join(status))
        notes = (*_rollout_notes(deploy, settings),
                 f"needs {manifest}: the previous ConfigMap manifest of '{t}' (config "
                 f"{previous}), in the working directory" if previous else
                 f"needs {manifest}: the previous ConfigMap manifest of '{t}'")
        placeholder = None if previous else (
            f"rename {manifest} to the previous ConfigMap manifest of '{t}' (the scenario, "
            f"which names it, was not given)")
        return StepCommand(step, settings, lines, placeholder, notes, embedded=(manifest,))
    if step.action == "wait":
        return StepCommand(step, settings, (shell_join(["sleep", val("duration")], refs=True),))
    return _placeholder(step, settings, val)


def _strategy_lines(deploy: str, val: Callable[[str], str], surge: bool) -> tuple[str, ...]:
    """Set the rollout batch (maxUnavailable; maxSurge: the ``surge`` setting, else none) and
    check the pods' drain time.

    The drain is the pods' ``terminationGracePeriodSeconds``. It is checked, not patched: a
    patch of the pod template is itself a new revision, so ``rollout undo`` would then return
    to the faulty version, and the pods a rollback stops keep the grace period of their own
    spec anyway.
    """
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "BATCH", "maxSurge": "SURGE"}}
    patch = json.dumps({"spec": {"strategy": strategy}}, separators=(",", ":")).replace(
        '"BATCH"', val("batch")).replace('"SURGE"', val("surge") if surge else "0")
    drain = val("drain")
    get = shell_join(["kubectl", "get", deploy, "-o",
                      "jsonpath={.spec.template.spec.terminationGracePeriodSeconds}"])
    warn = (quote_word(f"shadowrl: {deploy} has terminationGracePeriodSeconds=")
            + '"${grace:-30}"'
            + quote_word(f", less than the drain of {drain}s; in-flight requests may be "
                         f"dropped", refs=True))
    return (
        shell_join(["kubectl", "patch", deploy, "--type=strategic", "-p", patch], refs=True),
        f"grace=$({get})",
        f'if [ "${{grace:-30}}" -lt {quote_word(drain, refs=True)} ]; then echo {warn} >&2; fi',
    )


def _rollout_notes(deploy: str, settings: dict[str, str]) -> tuple[str, ...]:
    return (f"replaces {settings.get('batch', '1')} pod(s) at a time (maxUnavailable, "
            f"maxSurge {settings.get('surge', '0')}; kept for later rollouts of {deploy}); "
            f"the drain of "
            f"{settings.get('drain', '30')}s is the pods' terminationGracePeriodSeconds "
            f"(checked, not changed)",)


def _previous_config(scenario: Scenario | None, target: str) -> str | None:
    if scenario is None:
        return None
    comp = scenario.components().get(target)
    if isinstance(comp, Service) and comp.config is not None:
        return str(comp.config.previous)
    return None


def _placeholder(step: Step, settings: dict[str, str],
                 val: Callable[[str], str]) -> StepCommand:
    what = f"{step.action} command for {step.target}" if step.target else \
        f"{step.action} command for step {step.name}"
    if step.action == "command":
        what = f"command for step {step.name} (or give the step run: [argv...])"
    details = ", ".join(f"{k}={val(k)}" for k in settings)
    message = f"TODO(shadowrl): fill in the {what}" + (f" ({details})" if details else "")
    on = f" on {step.target}" if step.target else ""
    reason = (f"step '{step.name}' ({step.action}{on}) has no generic Kubernetes command: "
              f"replace its failing line, or give the step run: [argv...]")
    return StepCommand(step, settings, (f"echo {quote_word(message, refs=True)} >&2; exit 1",),
                       reason)


def step_commands(src: ExportSource, ref: Callable[[Step], Callable[[str], str]] | None = None
                  ) -> list[StepCommand]:
    """The commands of the procedure's steps, in the order they run.

    Raises ``SpecError`` (``file:line: field: message``) for a ``run:`` argument no process
    can receive and a setting that is not a plain word.
    """
    timeout = src.procedure.verify.timeout
    index = {id(s): i for i, s in enumerate(src.procedure.steps)}
    out = []
    for s in ordered_steps(src.procedure):
        i = index.get(id(s), 0)
        check_argv(src, i, s)
        try:
            out.append(step_command(s, src.scenario, ref=ref(s) if ref else None,
                                    timeout_s=timeout))
        except ValueError as exc:
            raise export_error(src, ("procedure", "steps", i, "settings"), str(exc)) from None
        for text in out[-1].embedded:
            why = argv_problem(text)
            if why:
                raise export_error(src, ("procedure", "steps", i),
                                   f"cannot be exported: {text!r} {why}")
    return out


def placeholder_lines(cmds: Sequence[StepCommand]) -> list[str]:
    """``PLACEHOLDER: why`` for each step a user must fill in before running the export."""
    return [f"PLACEHOLDER: {c.placeholder}" for c in cmds if c.placeholder]


def placeholders(src: ExportSource) -> list[str]:
    """The steps a user must fill in before running an exported procedure."""
    return placeholder_lines(step_commands(src))
