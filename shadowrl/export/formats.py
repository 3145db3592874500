"""Export a rollback procedure: shadowrl YAML, an Argo Workflow, a Chaos Toolkit experiment, shell.

A *source* is a procedure file (the ``procedure.yaml`` that ``shadowrl optimize`` writes, or any
file with a ``procedure:`` block), a scenario file (its configured procedure), or an MLflow run id
/ ``models:/NAME@ALIAS`` (resolved by :func:`shadowrl.integrations.mlflow.load_export_source`).

Every action has a default Kubernetes command (DESIGN.md section 5, "Export"); a step's ``run:``
replaces it. Actions with no generic Kubernetes command (``migrate_down``, ``flush_cache``,
``warm_cache``, ``disable_flag``, ``command`` without ``run``) become placeholders that *fail when
run* and are flagged ``PLACEHOLDER`` so nobody mistakes them for a working step. Every output
starts with a header naming the procedure, its evaluation summary (when known), the command that
produced the procedure and the export, and the source.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

# _check_procedure, _normalise_settings and pydantic_problems are the spec module's own
# checks: a procedure exported without a scenario is normalised and reported exactly like one
# loaded with it (same defaults, same messages).
from shadowrl.core.spec import (
    Problem,
    Procedure,
    Scenario,
    Service,
    SpecError,
    Step,
    _check_procedure,
    _normalise_settings,
    format_duration,
    format_path,
    load_procedure,
    load_scenario,
    load_yaml,
    parse_duration,
    procedure_to_data,
    pydantic_problems,
    scenario_from_data,
    setting_kind,
)

FORMATS = ("yaml", "argo", "chaostoolkit", "shell")
DEFAULT_IMAGE = "bitnami/kubectl:latest"
PLACEHOLDER_ACTIONS = ("migrate_down", "flush_cache", "warm_cache", "disable_flag", "command")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PARAM_REF = re.compile(r"^\{\{inputs\.parameters\.[A-Za-z0-9_-]+\}\}$")


class SourceError(ValueError):
    """A source that cannot be exported (not a file problem with a line number)."""


@dataclass
class ExportSource:
    """A procedure to export and what is known about where it came from."""

    procedure: Procedure
    scenario: Scenario | None
    name: str
    origin: str  # the file path or model URI it was read from
    evaluation: dict[str, Any] | None = None  # a `summarize`-shaped dict and/or {"text": ...}
    command: str | None = None  # the command that produced the procedure, if known
    scenario_name: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.scenario_name is None and self.scenario is not None:
            self.scenario_name = self.scenario.name


# --------------------------------------------------------------------------- loading


def is_mlflow_source(source: str) -> bool:
    """A 32-hex MLflow run id or a ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) URI."""
    return bool(_RUN_ID.match(source)) or source.startswith("models:/")


def load_source(source: str, scenario_path: Path | None = None) -> ExportSource:
    """Resolve SOURCE to a procedure; raises :class:`SpecError` or :class:`SourceError`.

    ``scenario_path`` checks a procedure file (or an MLflow procedure) against that scenario
    with the same rules as ``--procedure`` files; without it a procedure file is validated on
    its own (types, settings, step names, ``after``) and its targets are not checked.
    """
    scenario = load_scenario(scenario_path) if scenario_path is not None else None
    path = Path(source)
    if not path.exists():
        if is_mlflow_source(source):
            return _from_mlflow(source, scenario)
        raise SourceError(f"{source}: no such file (give a procedure.yaml, a scenario YAML, "
                          f"an MLflow run id or models:/NAME@ALIAS)")
    if path.is_dir():
        if not (path / "procedure.yaml").is_file():
            raise SourceError(f"{source}: is a directory without a procedure.yaml")
        path = path / "procedure.yaml"
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{file}: cannot read: {exc.strerror or exc}") from None
    data, lines = load_yaml(raw, file)
    if not isinstance(data, dict):
        raise SpecError([Problem(file, 1, "", "expected a scenario (kind: Scenario) or a "
                                             "procedure file (a mapping with 'procedure:')")])
    if data.get("kind") == "Scenario" or "deployment" in data:
        if scenario is not None:
            raise SourceError(f"{file}: is a scenario; --scenario applies to procedure files")
        sc = scenario_from_data(data, file, lines)
        sc.__dict__["_source"] = path
        return ExportSource(procedure=sc.procedure, scenario=sc, name=sc.procedure.name,
                            origin=file)
    if "procedure" not in data:
        raise SpecError([Problem(file, 1, "", "expected a scenario (kind: Scenario) or a "
                                             "procedure file (a mapping with 'procedure:')")])
    meta = data.get("metadata")
    named = meta.get("scenario") if isinstance(meta, dict) else None
    named = named if isinstance(named, str) else None
    warnings: list[str] = []
    if scenario is not None:
        proc = load_procedure(path, scenario)
        if named and named != scenario.name:
            warnings.append(f"{file} was written for scenario '{named}' but is checked against "
                            f"'{scenario.name}'")
    else:
        proc = procedure_from_data(data, file, lines)
        warnings.append(f"{file}: not checked against a scenario (targets, flags and previous "
                        f"configs unknown); give --scenario FILE to check it")
    command, evaluation = read_header(raw.decode("utf-8", errors="replace"))
    return ExportSource(procedure=proc, scenario=scenario, name=proc.name, origin=file,
                        evaluation=evaluation, command=command,
                        scenario_name=scenario.name if scenario else named, warnings=warnings)


def procedure_from_data(data: dict[str, Any], file: str, lines: Any) -> Procedure:
    """Validate a procedure file's ``procedure:`` block without a scenario."""
    extra = sorted(set(data) - {"procedure", "apiVersion", "kind", "metadata"})
    if extra:
        raise SpecError([Problem(file, lines.line((extra[0],)), extra[0], "unknown field")])
    if data.get("kind", "Procedure") != "Procedure":
        raise SpecError([Problem(file, lines.line(("kind",)), "kind",
                                 f"expected 'Procedure', got {data['kind']!r}")])
    try:
        proc = Procedure.model_validate(data["procedure"])
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, file, lines, ("procedure",))) from None
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: set[str] = set()
    for i, step in enumerate(proc.steps):
        path: tuple[str | int, ...] = ("procedure", "steps", i)
        if step.name in seen:
            problems.append(((*path, "name"), f"duplicate step '{step.name}'"))
        seen.add(step.name)
        problems += _normalise_settings(step, path)
    names = {s.name for s in proc.steps}
    for i, step in enumerate(proc.steps):
        for j, dep in enumerate(step.after):
            if dep not in names:
                problems.append((("procedure", "steps", i, "after", j), f"unknown step '{dep}'"))
            elif dep == step.name:
                problems.append((("procedure", "steps", i, "after", j),
                                 "a step cannot come after itself"))
    if not problems and _has_cycle(proc):
        problems.append((("procedure", "steps"), "'after' cycle between steps"))
    if problems:
        raise SpecError([Problem(file, lines.line(p), format_path(p), m) for p, m in problems])
    return proc


def _has_cycle(proc: Procedure) -> bool:
    try:
        ordered_steps(proc)
    except ValueError:
        return True
    return False


def _from_mlflow(source: str, scenario: Scenario | None) -> ExportSource:
    try:
        from shadowrl.integrations.mlflow import load_export_source
    except ImportError as exc:
        raise SourceError(f"{source}: MLflow sources need shadowrl.integrations.mlflow, "
                          f"which is not available ({exc})") from None
    try:
        src = load_export_source(source)
    except (ImportError, ValueError, LookupError, OSError) as exc:
        raise SourceError(f"{source}: {exc}") from None
    except Exception as exc:  # MLflow's own errors (MlflowException, REST errors)
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        raise SourceError(f"{source}: {exc}") from None
    if not isinstance(src, ExportSource):
        raise SourceError(f"{source}: shadowrl.integrations.mlflow returned {type(src).__name__}, "
                          f"not an ExportSource")
    proc = src.procedure.model_copy(deep=True)
    if scenario is not None:
        problems = _check_procedure(scenario, proc, ("procedure",))
    else:
        problems = [p for i, step in enumerate(proc.steps)
                    for p in _normalise_settings(step, ("procedure", "steps", i))]
    if problems:
        raise SpecError([Problem(source, 1, format_path(p), m) for p, m in problems])
    src.procedure = proc
    if scenario is not None:
        src.scenario, src.scenario_name = scenario, scenario.name
    return src


# --------------------------------------------------------------------------- header

_FOUND_BY = re.compile(r"(?:found|produced) by:? `(?P<cmd>.+)`")
_EVAL = re.compile(r"^(?:evaluation: )?(?P<text>(?:held-out )?evaluation \(.*)$")
_EVAL_LINE = re.compile(r"^evaluation: (?P<text>.+)$")


def read_header(text: str) -> tuple[str | None, dict[str, Any] | None]:
    """The producing command and evaluation summary from a file's leading ``#`` lines.

    Understands the header ``optimize`` writes (``found by `CMD```, ``held-out evaluation (N
    incidents): downtime mean Xs p95 Ys; outcomes {...}``) and the one this module writes.
    """
    command: str | None = None
    evaluation: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        match = _FOUND_BY.search(body)
        if match and command is None:
            command = match.group("cmd")
            continue
        match = _EVAL.match(body) or _EVAL_LINE.match(body)
        if match and evaluation is None and not body.startswith("evaluation: none"):
            evaluation = parse_evaluation(match.group("text"))
    return command, evaluation


def parse_evaluation(text: str) -> dict[str, Any]:
    """``{"text": ...}`` plus whatever of runs / downtime / outcomes the line states."""
    out: dict[str, Any] = {"text": text}
    runs = re.search(r"(\d+) incidents?\b", text)
    if runs:
        out["runs"] = int(runs.group(1))
    down = re.search(r"downtime mean (\d+(?:\.\d+)?)s p95 (\d+(?:\.\d+)?)s", text)
    if down:
        out["downtime_s"] = {"mean": float(down.group(1)), "p95": float(down.group(2))}
    outcomes = re.search(r"outcomes (\{[^}]*\})", text)
    if outcomes:
        try:
            value = ast.literal_eval(outcomes.group(1))
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, dict):
            out["outcomes"] = value
    return out


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


# --------------------------------------------------------------------------- commands


def ordered_steps(procedure: Procedure) -> list[Step]:
    """Listed order, stably adjusted so every step follows its ``after`` steps."""
    from shadowrl.core.plan import ordered_steps as _ordered

    return _ordered(procedure)


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


def _display(action: str, key: str, value: Any) -> str:
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
    timeout = src.procedure.verify.timeout
    return [step_command(s, src.scenario, ref=ref(s) if ref else None, timeout_s=timeout)
            for s in ordered_steps(src.procedure)]


def placeholders(src: ExportSource) -> list[str]:
    """The steps a user must fill in before running an exported procedure."""
    return [f"PLACEHOLDER: {c.placeholder}" for c in step_commands(src) if c.placeholder]


# --------------------------------------------------------------------------- renderers


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def _dump(data: Any, flow: bool | None = False) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=flow,
                     width=100, allow_unicode=True)


def to_yaml(src: ExportSource, command: str | None = None) -> str:
    """The shadowrl procedure file (``procedure.yaml`` shape, for ``--procedure``)."""
    header = [*header_lines(src, command),
              "use it with: shadowrl rehearse SCENARIO --procedure THIS_FILE"]
    metadata: dict[str, Any] = {"name": src.procedure.name}
    if src.scenario_name:
        metadata["scenario"] = src.scenario_name
    body = yaml.safe_dump({"apiVersion": "shadowrl/v1", "kind": "Procedure",
                           "metadata": metadata,
                           "procedure": procedure_to_data(src.procedure)},
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
              *_placeholder_comments(cmds)]
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


def _placeholder_comments(cmds: list[StepCommand]) -> list[str]:
    return [f"PLACEHOLDER: {c.placeholder}" for c in cmds if c.placeholder]


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
    placeholder_list = _placeholder_comments(cmds)
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
                                            *_placeholder_comments(cmds)]).rstrip("\n"),
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
                text = f"{key}={_display(step.action, key, tun.default)}"
                if tun.tunable:
                    choices = "|".join(_display(step.action, key, v) for v in tun.choices)
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
