"""Export's renderers: a procedure as shadowrl YAML, an Argo Workflow, a Chaos Toolkit
experiment or a shell script.

Every output starts with a header naming the procedure, its evaluation summary (when known),
the command that produced the procedure and the export, and the source.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml

from shadowrl.core.spec import format_duration, procedure_file_data
from shadowrl.export.commands import (
    StepCommand,
    placeholder_lines,
    setting_label,
    step_commands,
    whole_seconds,
)
from shadowrl.export.sources import ExportSource, SourceError

FORMATS = ("yaml", "argo", "chaostoolkit", "shell")
DEFAULT_IMAGE = "bitnami/kubectl:latest"


# --------------------------------------------------------------------------- header


def evaluation_line(evaluation: dict[str, Any] | None) -> str | None:
    """One line for the header: the recorded text, or one built from a summary dict."""
    if not evaluation:
        return None
    if evaluation.get("text"):
        return _one_line(str(evaluation["text"]))
    head = []
    if evaluation.get("policy"):
        head.append(f"policy {evaluation['policy']}")
    if "runs" in evaluation:
        head.append(f"{evaluation['runs']} incidents")
    tail = []
    d = evaluation.get("downtime_s")
    if isinstance(d, dict) and "mean" in d:
        p95 = f" p95 {d['p95']:.0f}s" if "p95" in d else ""
        tail.append(f"downtime mean {d['mean']:.0f}s{p95}")
    if evaluation.get("outcomes"):
        tail.append(f"outcomes {evaluation['outcomes']}")
    if not head and not tail:
        return None
    return _one_line(", ".join(head) + (": " if head and tail else "") + "; ".join(tail))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def header_lines(src: ExportSource, command: str | None = None) -> list[str]:
    """The header every export starts with (without comment markers)."""
    scenario = f" for scenario '{src.scenario_name}'" if src.scenario_name else ""
    lines = [f"shadowrl rollback procedure '{src.procedure.name}'{scenario}",
             f"source: {_one_line(src.origin)}"]
    if src.command:
        lines.append(f"produced by: `{_one_line(src.command)}`")
    ev = evaluation_line(src.evaluation)
    lines.append(f"evaluation: {ev}" if ev else
                 "evaluation: none recorded (measure it: shadowrl rehearse SCENARIO "
                 "--procedure PROCEDURE.yaml)")
    if command:
        lines.append(f"exported by: `{_one_line(command)}`")
    return lines


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


# --------------------------------------------------------------------------- renderers


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def _dump(data: Any) -> str:
    """Block-style YAML, multi-line strings as ``|`` blocks (readable shell scripts)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)


def to_yaml(src: ExportSource, command: str | None = None) -> str:
    """The shadowrl procedure file (``procedure.yaml`` shape, for ``--procedure``)."""
    header = [*header_lines(src, command),
              "use it with: shadowrl rehearse SCENARIO --procedure THIS_FILE"]
    body = yaml.safe_dump(procedure_file_data(src.procedure, src.scenario_name),
                          sort_keys=False, default_flow_style=None)
    return _comment(header) + body


def _k8s_name(name: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:52] or "shadowrl"


def to_argo(src: ExportSource, command: str | None = None, image: str = DEFAULT_IMAGE) -> str:
    """An Argo Workflow: a ``steps`` entrypoint running one container template per step."""
    cmds = step_commands(src, ref=lambda _s: lambda key: f"{{{{inputs.parameters.{key}}}}}")
    names = {c.step.name for c in cmds}
    entry = "shadowrl-procedure"
    while entry in names:
        entry += "-main"
    steps, templates = [], []
    for c in cmds:
        params = [{"name": k, "value": v} for k, v in c.settings.items()]
        item: dict[str, Any] = {"name": c.step.name, "template": c.step.name}
        if params:
            item["arguments"] = {"parameters": params}
        steps.append([item])
        template: dict[str, Any] = {"name": c.step.name}
        if params:
            template["inputs"] = {"parameters": [{"name": p["name"], "default": p["value"]}
                                                 for p in params]}
        template["metadata"] = {"annotations": _step_annotations(c)}
        template["container"] = {"image": image, "command": ["sh", "-c"], "args": [c.script]}
        templates.append(template)
    annotations = {"shadowrl/procedure": src.procedure.name, "shadowrl/source": src.origin}
    if src.scenario_name:
        annotations["shadowrl/scenario"] = src.scenario_name
    ev = evaluation_line(src.evaluation)
    if ev:
        annotations["shadowrl/evaluation"] = ev
    if src.command:
        annotations["shadowrl/produced-by"] = _one_line(src.command)
    if command:
        annotations["shadowrl/exported-by"] = _one_line(command)
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": _k8s_name(src.procedure.name) + "-",
                     "labels": {"app.kubernetes.io/managed-by": "shadowrl"},
                     "annotations": annotations},
        "spec": {"entrypoint": entry,
                 "activeDeadlineSeconds": whole_seconds(src.procedure.verify.timeout),
                 "templates": [{"name": entry, "steps": steps}, *templates]},
    }
    header = [*header_lines(src, command),
              "Argo Workflows: `argo submit THIS_FILE`; the step pods run kubectl, so give the "
              "workflow a service",
              "account allowed to get, patch, scale and roll out these deployments "
              "(spec.serviceAccountName).",
              *placeholder_lines(cmds)]
    return _comment(header) + _dump(workflow)


def _step_annotations(c: StepCommand) -> dict[str, str]:
    out = {"shadowrl/action": c.step.action}
    if c.step.target:
        out["shadowrl/target"] = c.step.target
    if c.step.optional:
        out["shadowrl/optional"] = "true"
    if c.placeholder:
        out["shadowrl/placeholder"] = c.placeholder
    return out


def _rule_text(rule: Any) -> str:
    bound = f"above {rule.above:g}" if rule.above is not None else f"below {rule.below:g}"
    hold = f" for {format_duration(rule.for_)}" if rule.for_ else ""
    return f"{rule.metric} at {rule.scope} {bound}{hold}"


def to_chaostoolkit(src: ExportSource, command: str | None = None) -> str:
    """A Chaos Toolkit experiment: SLO rules as the steady state, the steps as the method.

    The system is in breach when a rollback starts, so run it with
    ``chaos run --hypothesis-strategy after-method-only``: the hypothesis then checks the SLO
    once the steps are done (after the procedure's ``verify.hold``, a pause on the last step).
    """
    cmds = step_commands(src)
    run_with = "chaos run --hypothesis-strategy after-method-only THIS_FILE"
    method = []
    for c in cmds:
        if c.step.run:
            provider = {"type": "process", "path": c.step.run[0],
                        "arguments": list(c.step.run[1:])}
        else:
            provider = {"type": "process", "path": "sh", "arguments": ["-c", c.script]}
        method.append({"type": "action", "name": c.step.name, "provider": provider})
    hold = whole_seconds(src.procedure.verify.hold)
    if method and hold:
        method[-1]["pauses"] = {"after": hold}
    rules = src.scenario.slo.rules if src.scenario is not None else []
    probes = []
    for rule in rules:
        message = (f"TODO(shadowrl): query {_rule_text(rule)} and exit 0 while the rule holds "
                   f"(SLO rule {rule.name})")
        probes.append({"type": "probe", "name": f"slo-{rule.name}", "tolerance": 0,
                       "provider": {"type": "process", "path": "sh",
                                    "arguments": ["-c",
                                                  f"echo {shlex.quote(message)} >&2; exit 1"]}})
    notes = [f"Run with: {run_with} (the SLO is breached when a rollback starts).",
             "Chaos Toolkit only warns when a process action exits non-zero: fill in every "
             "placeholder before running."]
    if probes:
        notes.append("Each steady-state probe is a placeholder for one SLO rule: make it "
                     "exit 0 while the rule holds.")
    else:
        notes.append("No SLO rules known (no scenario given): no steady-state hypothesis.")
    placeholder_list = placeholder_lines(cmds)
    experiment: dict[str, Any] = {
        "version": "1.0.0",
        "title": f"Rollback procedure {src.procedure.name}",
        "description": "\n".join([*header_lines(src, command), *notes, *placeholder_list]),
        "tags": ["shadowrl", "rollback"] + ([src.scenario_name] if src.scenario_name else []),
        "x-shadowrl": {
            "procedure": src.procedure.name,
            "scenario": src.scenario_name,
            "source": src.origin,
            "produced_by": src.command,
            "exported_by": command,
            "evaluation": src.evaluation,
            "run_with": run_with,
            "verify": {"hold_s": hold,
                       "timeout_s": whole_seconds(src.procedure.verify.timeout)},
            "slo_rules": [{"name": r.name, "metric": r.metric, "scope": r.scope,
                           "above": r.above, "below": r.below, "for_s": r.for_}
                          for r in rules],
            "steps": [{"name": c.step.name, "action": c.step.action, "target": c.step.target,
                       "settings": c.settings, "optional": c.step.optional,
                       "placeholder": c.placeholder} for c in cmds],
            "placeholders": placeholder_list,
        },
    }
    if probes:
        experiment["steady-state-hypothesis"] = {
            "title": f"The SLO of {src.scenario_name or 'the service'} holds", "probes": probes}
    experiment["method"] = method
    experiment["rollbacks"] = []
    return json.dumps(experiment, indent=2) + "\n"


def to_shell(src: ExportSource, command: str | None = None) -> str:
    """A bash script: one commented block per step, stopping at the first failure."""
    cmds = step_commands(src)
    out = ["#!/usr/bin/env bash", _comment([*header_lines(src, command),
                                            *placeholder_lines(cmds)]).rstrip("\n"),
           "set -euo pipefail", ""]
    n = len(cmds)
    for i, c in enumerate(cmds, 1):
        step = c.step
        out.append("# " + "-" * 77)
        out.append(f"# step {i}/{n}: {step.name}")
        out.append(f"#   action:   {step.action}")
        if step.target:
            out.append(f"#   target:   {step.target}")
        tunables = step.tunables()
        if tunables:
            shown = []
            for key, tun in tunables.items():
                text = f"{key}={setting_label(step.action, key, tun.default)}"
                if tun.tunable:
                    choices = "|".join(setting_label(step.action, key, v) for v in tun.choices)
                    text += f" (of {choices})"
                shown.append(text)
            out.append(f"#   settings: {', '.join(shown)}")
        if step.after:
            out.append(f"#   after:    {', '.join(step.after)}")
        if step.optional:
            out.append("#   optional: the optimizer may skip this step")
        if step.run:
            out.append("#   command:  the step's run: (replaces the Kubernetes template)")
        for note in c.notes:
            out.append(f"# NOTE: {note}")
        if c.placeholder:
            out.append(f"# PLACEHOLDER: {c.placeholder}")
        banner = f"shadowrl: step {i}/{n}: {step.name}"
        out.append(f"echo {shlex.quote(banner)} >&2")
        out.extend(c.lines)
        out.append("")
    done = (f"shadowrl: all {n} steps done; the SLO must now hold for "
            f"{format_duration(src.procedure.verify.hold)}")
    out.append(f"echo {shlex.quote(done)} >&2")
    return "\n".join(out) + "\n"


def render(src: ExportSource, fmt: str, command: str | None = None,
           image: str = DEFAULT_IMAGE) -> str:
    """Render ``src`` in one of :data:`FORMATS`."""
    if fmt == "yaml":
        return to_yaml(src, command)
    if fmt == "argo":
        return to_argo(src, command, image=image)
    if fmt == "chaostoolkit":
        return to_chaostoolkit(src, command)
    if fmt == "shell":
        return to_shell(src, command)
    raise SourceError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
