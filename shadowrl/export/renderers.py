"""Export's renderers: a procedure as shadowrl YAML, an Argo Workflow, a Chaos Toolkit
experiment or a shell script.

Every output starts with a header naming the procedure, its evaluation summary (when known),
its verification on a real shadow (or, in plain words, that it has none), the command that
produced the procedure and the export, and the source.

Nothing read from a scenario or procedure is pasted into an output as code: comment lines are
folded to one line with control characters escaped (:func:`one_line`), every shell word is
quoted, YAML and JSON are written by their dumpers, and Argo and Chaos Toolkit get argv as
lists, with ``$`` escaped where Kubernetes or Chaos Toolkit would expand it. What an output
cannot hold (an argument with a NUL, a ``{{`` Argo would expand) is an error, not a guess.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import yaml

from shadowrl.core.spec import (
    Problem,
    SpecError,
    format_duration,
    format_path,
    procedure_file_data,
)
from shadowrl.export.commands import (
    PARAM_REF,
    StepCommand,
    placeholder_lines,
    quote_word,
    setting_label,
    shell_join,
    step_commands,
    whole_seconds,
)
from shadowrl.export.sources import ExportSource, SourceError, outcomes_text
from shadowrl.rehearsal.verification import not_verified_line

FORMATS = ("yaml", "argo", "chaostoolkit", "shell")
DEFAULT_IMAGE = "bitnami/kubectl:latest"


# --------------------------------------------------------------------------- header


def evaluation_line(evaluation: dict[str, Any] | None) -> str | None:
    """One line for the header: the recorded text, or one built from a summary dict."""
    if not evaluation:
        return None
    text = one_line(str(evaluation.get("text") or ""))
    if text:
        return text
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
    if isinstance(evaluation.get("outcomes"), dict) and evaluation["outcomes"]:
        tail.append(outcomes_text(evaluation["outcomes"]))
    burn = _burn_mean(evaluation)
    if burn is not None:
        tail.append(f"error budget burn mean {burn:.3%}")
    if not head and not tail:
        return None
    return one_line(", ".join(head) + (": " if head and tail else "") + "; ".join(tail))


def _burn_mean(evaluation: dict[str, Any]) -> float | None:
    b = evaluation.get("budget_burn")
    mean = b.get("mean") if isinstance(b, dict) else None
    return float(mean) if isinstance(mean, (int, float)) else None


def _headline(evaluation: dict[str, Any] | None) -> str | None:
    """The numbers that compare a procedure with a policy: mean downtime and budget burn."""
    d = (evaluation or {}).get("downtime_s")
    if not isinstance(d, dict) or not isinstance(d.get("mean"), (int, float)):
        return None
    text = f"downtime mean {d['mean']:.0f}s"
    burn = _burn_mean(evaluation or {})
    return text if burn is None else f"{text}, error budget burn mean {burn:.3%}"


def exported_line(src: ExportSource) -> str | None:
    """What the export holds when its source names a policy (``src.stand_in``), in one
    line: the procedure exported in the policy's place, which policy, and the two side by
    side. None when the source is a procedure: then the export is that procedure."""
    stand = src.stand_in
    if stand is None:
        return None
    what = ("the best static procedure found while training" if stand.found_while_training
            else "the procedure logged with")
    who = f"champion {stand.policy}" if stand.champion else stand.policy
    policy = "the champion policy" if stand.champion else "the policy"
    ours, theirs = _headline(src.evaluation), _headline(stand.evaluation)
    runs = (src.evaluation or {}).get("runs")
    same = (stand.found_while_training and runs is not None
            and runs == (stand.evaluation or {}).get("runs"))
    ours_text = ours or "not evaluated"
    theirs_text = theirs or "no evaluation recorded"
    if same:
        theirs_text += f", on the same {runs} held-out incidents"
    else:
        if ours and runs:
            ours_text += f" on {runs} incidents"
        n = (stand.evaluation or {}).get("runs")
        if theirs and n:
            theirs_text += f" on {n} held-out incidents"
    return one_line(f"{what} {who}, not the policy itself (this procedure: {ours_text}; "
                    f"{policy}, which is adaptive and has no runbook with branches to export "
                    f"instead: {theirs_text})")


_PRINTABLE = re.compile("[\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _unsafe(ch: str) -> bool:
    """Not for a comment line: control, format (bidi overrides, zero-width), line or paragraph
    separator, surrogate, private or unassigned characters, and what YAML may not hold."""
    if "\x20" <= ch <= "\x7e":
        return False
    return (not _PRINTABLE.match(ch) or ch == "\ufeff"
            or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


_BREAKS = re.compile(r"[^\S ]+")  # whitespace other than the plain space: newlines, tabs...


def safe_line(text: str) -> str:
    """``text`` as one line that cannot end a comment: every run of whitespace other than
    plain spaces (newlines, tabs, Unicode line separators) becomes one space, and every other
    control or invisible character is written ``\\xNN``/``\\uNNNN``."""
    text = _BREAKS.sub(" ", str(text))
    if all("\x20" <= ch <= "\x7e" for ch in text):
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def one_line(text: str) -> str:
    """Free text as one safe line: :func:`safe_line` with whitespace runs folded to one space
    and no leading or trailing space."""
    return safe_line(" ".join(str(text).split()))


def header_lines(src: ExportSource, command: str | None = None) -> list[str]:
    """The header every export starts with (without comment markers), each line folded and
    escaped by :func:`one_line`."""
    scenario = f" for scenario '{src.scenario_name}'" if src.scenario_name else ""
    lines = [f"shadowrl rollback procedure '{src.procedure.name}'{scenario}",
             f"source: {src.origin}"]
    exported = exported_line(src)
    if exported:
        lines.append(f"exported: {exported}")
    lines += provenance_lines(src, command, "shadowrl rehearse SCENARIO --procedure "
                                            "PROCEDURE.yaml")
    return [one_line(line) for line in lines]


def provenance_lines(src: ExportSource, command: str | None, measure: str) -> list[str]:
    """What produced the source, its evaluation (or the command that would ``measure`` it),
    its verification and the export's own command: header lines every export shares."""
    lines = [f"produced by: `{one_line(src.command)}`"] if src.command else []
    ev = evaluation_line(src.evaluation)
    lines.append(f"evaluation: {ev}" if ev else f"evaluation: none recorded (measure it: "
                 f"{measure})")
    lines += verification_lines(src)
    if command:
        lines.append(f"exported by: `{one_line(command)}`")
    return lines


def verification_lines(src: ExportSource) -> list[str]:
    """The procedure's verification on a real shadow as its header recorded it (backend,
    runs, outcomes, downtime, budget burn, sim-vs-real gap), else in plain words that it
    was not verified."""
    recorded = (src.verification or {}).get("lines")
    lines = [str(line) for line in recorded] if recorded else [not_verified_line()]
    stand = src.stand_in
    if stand is not None and stand.verification:
        lines.append(f"policy verification (the policy, not this procedure): "
                     f"{stand.verification}")
    return lines


def _comment_line(line: str) -> str:
    text = safe_line(line).rstrip()
    return f"# {text}" if text else "#"


def _comment(lines: list[str]) -> str:
    """Comment lines: each of ``lines`` made safe by :func:`safe_line`, so none can end its
    comment early (in shell and YAML alike)."""
    return "".join(_comment_line(line) + "\n" for line in lines)


# --------------------------------------------------------------------------- renderers


class _Dumper(yaml.SafeDumper):
    pass


_YAML_BREAKS = ("\r", "\x85", "\u2028", "\u2029")


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    """Multi-line text as a ``|`` block when it is plain printable text (the emitter still
    falls back to quotes where a block cannot hold it exactly); text with characters YAML
    treats as line breaks or may not hold raw always double-quoted, with escapes."""
    if any(ch in data for ch in _YAML_BREAKS) or any(_unsafe(ch) for ch in data
                                                       if ch != "\n" and ch != "\t"):
        style: str | None = '"'
    else:
        style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def _dump(data: Any, flow: bool | None = False) -> str:
    """Block-style YAML, multi-line strings as ``|`` blocks (readable shell scripts)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=flow,
                     width=100, allow_unicode=True)


def to_yaml(src: ExportSource, command: str | None = None) -> str:
    """The shadowrl procedure file (``procedure.yaml`` shape, for ``--procedure``)."""
    header = [*header_lines(src, command),
              "use it with: shadowrl rehearse SCENARIO --procedure THIS_FILE"]
    data = procedure_file_data(src.procedure, src.scenario_name)
    _refuse_surrogates(src, "YAML", data)
    return _comment(header) + _dump(data, flow=None)


def _k8s_name(name: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:52] or "shadowrl"


def k8s_literal(text: str) -> str:
    """``text`` as a container command or argument: Kubernetes expands ``$(VAR)`` there (Argo
    sets ``ARGO_*`` variables) and reads ``$$`` as ``$``, so every ``$`` is doubled."""
    return text.replace("$", "$$")


def to_argo(src: ExportSource, command: str | None = None, image: str = DEFAULT_IMAGE) -> str:
    """An Argo Workflow: a ``steps`` entrypoint running one container template per step.

    A step's ``run:`` is the container's ``command`` (an argv list); a template step is
    ``sh -c SCRIPT`` with its settings as input parameters. ``$`` is written ``$$`` in both
    (Kubernetes' escape). Argo expands ``{{...}}`` anywhere in a template and has no escape
    for it, so text containing ``{{`` is refused.
    """
    cmds = step_commands(src, ref=lambda _s: lambda key: f"{{{{inputs.parameters.{key}}}}}")
    _refuse_argo_tags(src, cmds)
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
        if c.step.run:
            container = {"image": image, "command": [k8s_literal(t) for t in c.step.run]}
        else:
            container = {"image": image, "command": ["sh", "-c"],
                         "args": [k8s_literal(c.script)]}
        template["container"] = container
        templates.append(template)
    annotations = {"shadowrl/procedure": src.procedure.name, "shadowrl/source": src.origin}
    if src.scenario_name:
        annotations["shadowrl/scenario"] = src.scenario_name
    exported = exported_line(src)
    if exported:
        annotations["shadowrl/exported"] = exported
    ev = evaluation_line(src.evaluation)
    if ev:
        annotations["shadowrl/evaluation"] = ev
    if src.command:
        annotations["shadowrl/produced-by"] = src.command
    if command:
        annotations["shadowrl/exported-by"] = command
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
    _refuse_surrogates(src, "Argo", workflow)
    for where, text in _strings(workflow):  # the step scripts' own references aside
        if "{{" in (PARAM_REF.sub("", text) if ".container." in where else text):
            raise _argo_error(src, where, text)
    header = [*header_lines(src, command),
              "Argo Workflows: `argo submit THIS_FILE`; the step pods run kubectl, so give the "
              "workflow a service",
              "account allowed to get, patch, scale and roll out these deployments "
              "(spec.serviceAccountName). In container commands `$$` is Kubernetes' `$`.",
              *placeholder_lines(cmds)]
    return _comment(header) + _dump(workflow)


def _refuse_argo_tags(src: ExportSource, cmds: list[StepCommand]) -> None:
    """The scenario's text in a step's command must not hold ``{{`` (Argo would expand it,
    also where it happens to look like one of the step's own parameter references)."""
    index = {id(s): i for i, s in enumerate(src.procedure.steps)}
    for c in cmds:
        for j, text in enumerate(c.embedded):
            if "{{" in text:
                i = index.get(id(c.step), 0)
                path = ("procedure", "steps", i, "run", j) if c.step.run else \
                    ("procedure", "steps", i)
                line = src.lines.line(path) if src.lines is not None else 1
                raise SpecError([Problem(src.origin, line, format_path(path),
                                         f"cannot be exported to Argo: {text!r} contains "
                                         f"'{{{{', which Argo Workflows would expand as a "
                                         f"template tag (there is no escape for it)")])


def _strings(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in ``data`` (keys and values) with where it is."""
    if isinstance(data, str):
        yield where, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(key, where)
            yield from _strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, f"{where}[{i}]")


def _refuse_surrogates(src: ExportSource, fmt: str, data: Any) -> None:
    """A lone surrogate (only a resolver's source can hold one: the loader refuses them) is
    not UTF-8, so no YAML reader would read it back as it was."""
    for where, text in _strings(data):
        if any("\ud800" <= ch <= "\udfff" for ch in text):
            raise SpecError([Problem(src.origin, 1, "", f"cannot be exported to {fmt}: {where} "
                                                        f"holds a lone surrogate (not UTF-8)")])


def _argo_error(src: ExportSource, where: str, text: str) -> SpecError:
    return SpecError([Problem(src.origin, 1, "", f"cannot be exported to Argo: {where} would "
                                                 f"be {one_line(text)[:80]!r}, and Argo "
                                                 f"Workflows would expand its '{{{{' as a "
                                                 f"template tag (there is no escape for it)")])


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
    method = [{"type": "action", "name": c.step.name, "provider": _ctk_process(c)}
              for c in cmds]
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
                                                  f"echo {quote_word(message)} >&2; exit 1"]}})
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
        "description": "\n".join(one_line(line) for line in
                                 [*header_lines(src, command), *notes, *placeholder_list]),
        "tags": ["shadowrl", "rollback"] + ([src.scenario_name] if src.scenario_name else []),
        "x-shadowrl": {
            "procedure": src.procedure.name,
            "scenario": src.scenario_name,
            "source": src.origin,
            "produced_by": src.command,
            "exported_by": command,
            "evaluation": src.evaluation,
            "verification": ({k: v for k, v in src.verification.items() if k != "line"}
                             if src.verification else {"status": "none"}),
            "exported": exported_line(src),
            "policy": None if src.stand_in is None else {
                "name": src.stand_in.policy, "champion": src.stand_in.champion,
                "evaluation": src.stand_in.evaluation},
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
    _ctk_escape_dollars(experiment, [*probes, *method])
    return json.dumps(experiment, indent=2) + "\n"


def _ctk_process(c: StepCommand) -> dict[str, Any]:
    """A step as a Chaos Toolkit process provider: its ``run:`` argv as ``path`` and
    ``arguments``, else ``sh -c SCRIPT``.

    Chaos Toolkit drops empty arguments and expands ``~`` in the path, so such an argv runs
    through ``sh -c`` with every word quoted instead (the same argv, exactly).
    """
    run = c.step.run
    if run and run[0] and not run[0].startswith("~") and all(run[1:]):
        return {"type": "process", "path": run[0], "arguments": list(run[1:])}
    script = shell_join(run) if run else c.script
    return {"type": "process", "path": "sh", "arguments": ["-c", script]}


def _ctk_escape_dollars(experiment: dict[str, Any], activities: list[dict[str, Any]]) -> None:
    """Chaos Toolkit expands ``${name}`` (``string.Template``) in process arguments whenever
    the experiment has a configuration or secrets, reading ``$$`` as ``$``. When an argument
    holds a ``$``, every ``$`` is written ``$$`` and a configuration entry makes the
    expansion, and so the unescaping, happen on every run (not only with ``--var``)."""
    if not any("$" in a for act in activities for a in act["provider"]["arguments"]):
        return
    for act in activities:
        act["provider"]["arguments"] = [a.replace("$", "$$")
                                        for a in act["provider"]["arguments"]]
    experiment["configuration"] = {
        "shadowrl_escaped_dollars": "present so that Chaos Toolkit always expands process "
                                    "arguments, where shadowrl wrote each $ as $$"}


def to_shell(src: ExportSource, command: str | None = None) -> str:
    """A bash script: one commented block per step, stopping at the first failure.

    Every comment line goes through :func:`safe_line` and every word of every command is
    shell-quoted, so the script runs exactly the steps' argv and nothing else.
    """
    cmds = step_commands(src)
    out = ["#!/usr/bin/env bash", _comment([*header_lines(src, command),
                                            *placeholder_lines(cmds)]).rstrip("\n"),
           "set -euo pipefail", ""]
    n = len(cmds)
    for i, c in enumerate(cmds, 1):
        out.extend(_comment_line(line) for line in _step_comments(c, i, n))
        banner = f"shadowrl: step {i}/{n}: {c.step.name}"
        out.append(f"echo {quote_word(banner)} >&2")
        out.extend(c.lines)
        out.append("")
    done = (f"shadowrl: all {n} steps done; the SLO must now hold for "
            f"{format_duration(src.procedure.verify.hold)}")
    out.append(f"echo {quote_word(done)} >&2")
    return "\n".join(out) + "\n"


def _step_comments(c: StepCommand, i: int, n: int) -> list[str]:
    """The comment block above a step in the shell script (without comment markers)."""
    step = c.step
    out = ["-" * 77, f"step {i}/{n}: {step.name}", f"  action:   {step.action}"]
    if step.target:
        out.append(f"  target:   {step.target}")
    tunables = step.tunables()
    if tunables:
        shown = []
        for key, tun in tunables.items():
            text = f"{key}={setting_label(step.action, key, tun.default)}"
            if tun.tunable:
                choices = "|".join(setting_label(step.action, key, v) for v in tun.choices)
                text += f" (of {choices})"
            shown.append(text)
        out.append(f"  settings: {', '.join(shown)}")
    if step.after:
        out.append(f"  after:    {', '.join(step.after)}")
    if step.optional:
        out.append("  optional: the optimizer may skip this step")
    if step.run:
        out.append("  command:  the step's run: (replaces the Kubernetes template)")
    out.extend(f"NOTE: {note}" for note in c.notes)
    if c.placeholder:
        out.append(f"PLACEHOLDER: {c.placeholder}")
    return out


def render(src: ExportSource, fmt: str, command: str | None = None,
           image: str = DEFAULT_IMAGE) -> str:
    """Render ``src`` in one of :data:`FORMATS` (a runbook source: every branch, and how
    one is chosen: :mod:`shadowrl.export.runbook_renderers`)."""
    if src.runbook is not None:
        from shadowrl.export.runbook_renderers import render_runbook

        return render_runbook(src, fmt, command, image=image)
    if fmt == "yaml":
        return to_yaml(src, command)
    if fmt == "argo":
        return to_argo(src, command, image=image)
    if fmt == "chaostoolkit":
        return to_chaostoolkit(src, command)
    if fmt == "shell":
        return to_shell(src, command)
    raise SourceError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
