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
from shadowrl.export.sources import ExportSource

_PARAM_REF = re.compile(r"^\{\{inputs\.parameters\.[A-Za-z0-9_-]+\}\}$")


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

    @property
    def script(self) -> str:
        """The lines as one ``sh -c`` script (``set -eu`` when there are several)."""
        if len(self.lines) == 1:
            return self.lines[0]
        return "\n".join(("set -eu", *self.lines))


def _q(token: str) -> str:
    """Shell-quote a value, leaving Argo parameter references readable."""
    return token if _PARAM_REF.match(token) else shlex.quote(token)


def step_command(step: Step, scenario: Scenario | None = None, *,
                 ref: Callable[[str], str] | None = None,
                 timeout_s: float | None = None) -> StepCommand:
    """The command for ``step``: its ``run:`` if given, else the Kubernetes template.

    ``ref(key)`` is the text a setting is written as (default: its value; Argo passes
    ``{{inputs.parameters.KEY}}``).
    """
    settings = {k: setting_text(step.action, k, v) for k, v in step.default_settings().items()}
    val = ref or (lambda key: settings[key])
    if step.run:
        return StepCommand(step, settings, (shlex.join(step.run),))
    t = step.target or ""
    timeout = f" --timeout={whole_seconds(timeout_s)}s" if timeout_s else ""
    deploy = f"deployment/{t}"
    if step.action == "scale":
        return StepCommand(step, settings,
                           (f"kubectl scale {deploy} --replicas={_q(val('replicas'))}",))
    if step.action == "rollback_version":
        lines = (*_strategy_lines(deploy, val), f"kubectl rollout undo {deploy}",
                 f"kubectl rollout status {deploy}{timeout}")
        return StepCommand(step, settings, lines, notes=_rollout_notes(deploy, settings))
    if step.action == "revert_config":
        previous = _previous_config(scenario, t)
        manifest = f"{t}-config-{previous or 'PREVIOUS'}.yaml"
        lines = (*_strategy_lines(deploy, val), f"kubectl apply -f {shlex.quote(manifest)}",
                 f"kubectl rollout restart {deploy}", f"kubectl rollout status {deploy}{timeout}")
        notes = (*_rollout_notes(deploy, settings),
                 f"needs {manifest}: the previous ConfigMap manifest of '{t}' (config "
                 f"{previous}), in the working directory" if previous else
                 f"needs {manifest}: the previous ConfigMap manifest of '{t}'")
        placeholder = None if previous else (
            f"rename {manifest} to the previous ConfigMap manifest of '{t}' (the scenario, "
            f"which names it, was not given)")
        return StepCommand(step, settings, lines, placeholder, notes)
    if step.action == "wait":
        return StepCommand(step, settings, (f"sleep {_q(val('duration'))}",))
    return _placeholder(step, settings, val)


def _strategy_lines(deploy: str, val: Callable[[str], str]) -> tuple[str, ...]:
    """Set the rollout batch (maxUnavailable, no surge) and check the pods' drain time.

    The drain is the pods' ``terminationGracePeriodSeconds``. It is checked, not patched: a
    patch of the pod template is itself a new revision, so ``rollout undo`` would then return
    to the faulty version, and the pods a rollback stops keep the grace period of their own
    spec anyway.
    """
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "BATCH", "maxSurge": 0}}
    patch = json.dumps({"spec": {"strategy": strategy}}, separators=(",", ":")).replace(
        '"BATCH"', val("batch"))
    drain = val("drain")
    return (
        f"kubectl patch {deploy} --type=strategic -p {shlex.quote(patch)}",
        f"grace=$(kubectl get {deploy} -o "
        "jsonpath='{.spec.template.spec.terminationGracePeriodSeconds}')",
        f'if [ "${{grace:-30}}" -lt {_q(drain)} ]; then echo "shadowrl: {deploy} has '
        f'terminationGracePeriodSeconds=${{grace:-30}}, less than the drain of {drain}s; '
        f'in-flight requests may be dropped" >&2; fi',
    )


def _rollout_notes(deploy: str, settings: dict[str, str]) -> tuple[str, ...]:
    return (f"replaces {settings.get('batch', '1')} pod(s) at a time (maxUnavailable, "
            f"maxSurge 0; kept for later rollouts of {deploy}); the drain of "
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
    return StepCommand(step, settings, (f"echo {shlex.quote(message)} >&2; exit 1",), reason)


def step_commands(src: ExportSource, ref: Callable[[Step], Callable[[str], str]] | None = None
                  ) -> list[StepCommand]:
    """The commands of the procedure's steps, in the order they run."""
    timeout = src.procedure.verify.timeout
    return [step_command(s, src.scenario, ref=ref(s) if ref else None, timeout_s=timeout)
            for s in ordered_steps(src.procedure)]


def placeholder_lines(cmds: Sequence[StepCommand]) -> list[str]:
    """``PLACEHOLDER: why`` for each step a user must fill in before running the export."""
    return [f"PLACEHOLDER: {c.placeholder}" for c in cmds if c.placeholder]


def placeholders(src: ExportSource) -> list[str]:
    """The steps a user must fill in before running an exported procedure."""
    return placeholder_lines(step_commands(src))
