"""Export's runbook renderers: a runbook (``kind: Runbook``, docs/runbooks.md) as shadowrl
YAML, an Argo Workflow, a Chaos Toolkit document or a shell script.

A runbook decides once, at the breach: the first branch whose conditions all hold runs its
procedure, else the default's. Every output keeps that rule. What it observes becomes
*probes*, one per distinct observable its conditions use:

- a component metric (``web error_rate``, ``edge latency_ratio``) and an SLO rule firing are
  Prometheus instant queries. The PromQL is a *template* (:func:`default_query`) with
  ``http_requests_total`` / ``http_request_duration_seconds_bucket`` selected by
  ``service="<component>"`` (``edge``: ``service="edge"``) and ``ALERTS{alertname=...}``:
  point it at your server and adapt it to your metrics (Argo: workflow parameters; shell:
  environment variables; Chaos Toolkit: the selector's ``query``);
- a step having run is not in Prometheus: at the breach none has, so it reads 0 unless told
  otherwise (Argo: a ``step-ran-STEP`` parameter; shell: ``SHADOWRL_RAN``).

Every condition is then ``value > threshold`` or ``value <= threshold``: a rule fires when its
count of firing alerts is above 0, a step ran when its value is above 0.

The branches' steps are the procedure exports' own (:mod:`shadowrl.export.renderers`): each
branch's procedure is rendered as a procedure is, and its Argo templates, shell lines and
Chaos Toolkit experiment are taken from that, so quoting, placeholders and refusals are
the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar

import yaml

from shadowrl.core.runbook import Condition, runbook_to_data
from shadowrl.core.spec import (
    LineMap,
    PathKey,
    Problem,
    Procedure,
    SpecError,
    format_path,
)
from shadowrl.export.commands import (
    placeholder_lines,
    quote_word,
    step_commands,
)
from shadowrl.export.renderers import (
    DEFAULT_IMAGE,
    FORMATS,
    evaluation_line,
    k8s_literal,
    one_line,
    provenance_lines,
    safe_line,
    to_argo,
    to_chaostoolkit,
    to_shell,
)
from shadowrl.export.sources import ExportSource, SourceError

T = TypeVar("T")
DEFAULT_PROMETHEUS_URL = "http://prometheus:9090"
PROBE_IMAGE = "python:3.12-alpine"
ENTRY = "shadowrl-runbook"
PROBE_TEMPLATE = "shadowrl-probe"


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """One observable the runbook's conditions read."""

    key: tuple[str, ...]  # ("metric", component, metric) | ("rule", name) | ("step", name)
    name: str  # unique, lowercase letters, digits and '-': "web-error-rate", "rule-errors"
    text: str  # as people read it: "web error_rate", "rule errors (firing alerts)"
    query: str | None  # the PromQL template; None for a step (not in Prometheus)

    @property
    def var(self) -> str:
        """The shell variable holding its value."""
        return "p_" + self.name.replace("-", "_")

    @property
    def env(self) -> str:
        """The environment variable overriding its PromQL in the shell script."""
        return "SHADOWRL_QUERY_" + self.name.replace("-", "_").upper()


@dataclass(frozen=True)
class Test:
    """A condition as ``probe op threshold`` (op ``>`` or ``<=``)."""

    probe: Probe
    op: str
    threshold: float
    text: str  # the condition as people read it
    condition: dict[str, Any]  # the runbook's own

    @property
    def number(self) -> str:
        return number_text(self.threshold)


def number_text(value: float) -> str:
    """A threshold as plain decimal text (no exponent: Argo's expressions, awk and people
    read it alike)."""
    text = format(Decimal(repr(float(value))), "f")
    return text[:-2] if text.endswith(".0") else text


def observable(cond: Condition) -> tuple[str, ...]:
    if cond.rule is not None:
        return ("rule", cond.rule)
    if cond.step is not None:
        return ("step", cond.step)
    return ("metric", str(cond.component), str(cond.metric))


def default_query(key: tuple[str, ...]) -> str | None:
    """The PromQL template of an observable (a template: adapt it to your metrics)."""
    if key[0] == "rule":
        return f'count(ALERTS{{alertname="{key[1]}",alertstate="firing"}}) or vector(0)'
    if key[0] == "step":
        return None
    sel = f'{{service="{key[1]}"}}'
    if key[2] == "error_rate":
        return (f'sum(rate(http_requests_total{{service="{key[1]}",code=~"5.."}}[1m])) / '
                f"sum(rate(http_requests_total{sel}[1m]))")
    if key[2] == "cpu":
        return (f'sum(rate(container_cpu_usage_seconds_total{{container="{key[1]}"}}[1m])) / '
                f'sum(kube_pod_container_resource_limits{{container="{key[1]}",'
                f'resource="cpu"}})')
    if key[2] == "load_ratio":
        return (f"sum(rate(http_requests_total{sel}[1m])) / "
                f"sum(rate(http_requests_total{sel}[1m] offset 1h))")
    bucket = f"rate(http_request_duration_seconds_bucket{sel}[5m]"
    return (f"histogram_quantile(0.99, sum by (le) ({bucket}))) / "
            f"histogram_quantile(0.99, sum by (le) ({bucket} offset 1h)))")


def _probe_for(key: tuple[str, ...], taken: set[str]) -> Probe:
    if key[0] == "rule":
        base, text = f"rule-{key[1]}", f"rule {key[1]} (firing alerts)"
    elif key[0] == "step":
        base, text = f"step-ran-{key[1]}", f"step {key[1]} ran (1) or not (0)"
    else:
        base, text = f"{key[1]}-{key[2].replace('_', '-')}", f"{key[1]} {key[2]}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return Probe(key, name, text, default_query(key))


def branch_tests(src: ExportSource) -> tuple[list[Probe], list[tuple[str, list[Test]]]]:
    """The probes (in order of first use) and each branch's conditions as tests."""
    book = _book(src)
    probes: dict[tuple[str, ...], Probe] = {}
    taken: set[str] = set()
    out = []
    for branch in book.branches:
        tests = []
        for cond in branch.when:
            key = observable(cond)
            if key not in probes:
                probes[key] = _probe_for(key, taken)
            tests.append(_test(probes[key], cond))
        out.append((branch.name, tests))
    return list(probes.values()), out


def _test(probe: Probe, cond: Condition) -> Test:
    if cond.rule is not None:
        op = ">" if cond.firing else "<="
        threshold = 0.0
    elif cond.step is not None:
        op = ">" if cond.ran else "<="
        threshold = 0.0
    else:
        op = ">" if cond.above is not None else "<="
        threshold = float(cond.above if cond.above is not None else cond.at_most or 0.0)
    return Test(probe, op, threshold, cond.text(), cond.to_data())


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Part:
    """A branch (or the default) as an export source of its own procedure."""

    name: str
    when: str  # its conditions in words, "" for the default
    src: ExportSource
    where: PathKey  # its place in the runbook file: ("branches", i) or ("default",)

    def render(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(self.src, ...)``, its file:line errors naming the field in the runbook
        (``branches[1].procedure.steps[0].run[3]``, not the branch's own path)."""
        try:
            return fn(self.src, *args, **kwargs)
        except SpecError as exc:
            prefix = format_path(self.where)
            raise SpecError([replace(p, path=f"{prefix}.{p.path}" if p.path else prefix)
                             if p.file == self.src.origin else p
                             for p in exc.problems]) from None


def parts(src: ExportSource) -> list[Part]:
    """Every branch's procedure, then the default's, each as a procedure source whose line
    numbers are those of the runbook file (errors name the branch's own lines)."""
    book = _book(src)
    out = [Part(b.name, " and ".join(c.text() for c in b.when),
                _part_source(src, b.procedure, ("branches", i)), ("branches", i))
           for i, b in enumerate(book.branches)]
    out.append(Part("default", "", _part_source(src, book.default.procedure, ("default",)),
                    ("default",)))
    return out


def _part_source(src: ExportSource, proc: Procedure, prefix: PathKey) -> ExportSource:
    lines = None
    if src.lines is not None:
        lines = LineMap()
        n = len(prefix)
        lines.lines = {key[n:]: line for key, line in src.lines.lines.items()
                       if key[:n] == prefix}
    return ExportSource(procedure=proc, scenario=src.scenario, name=proc.name,
                        origin=src.origin, scenario_name=src.scenario_name, lines=lines)


def _book(src: ExportSource) -> Any:
    if src.runbook is None:
        raise SourceError(f"{src.origin}: not a runbook")
    return src.runbook


def runbook_placeholders(src: ExportSource) -> list[str]:
    """``PLACEHOLDER (branches A, default): why`` for each step a user must fill in."""
    found: dict[str, list[str]] = {}
    for part in parts(src):
        for line in placeholder_lines(part.render(step_commands)):
            found.setdefault(line, []).append(part.name)
    return [line.replace("PLACEHOLDER:", f"PLACEHOLDER ({', '.join(names)}):", 1)
            for line, names in found.items()]


def runbook_exported_line(src: ExportSource) -> str:
    """What a runbook export holds, in one line."""
    book = _book(src)
    return one_line(f"the runbook '{book.name}' in {src.origin}: {len(book.branches)} "
                    f"branch(es) and a default, decided at the breach")


def header_lines(src: ExportSource, command: str | None = None) -> list[str]:
    """The header of every runbook export (without comment markers): the runbook, where it
    came from, its evaluation and verification, and its branches in words."""
    book = _book(src)
    scenario = f" for scenario '{src.scenario_name}'" if src.scenario_name else ""
    lines = [f"shadowrl runbook '{book.name}'{scenario}", f"source: {src.origin}"]
    if book.metadata.description:
        lines.append(f"description: {book.metadata.description}")
    lines += provenance_lines(src, command, "shadowrl evaluate SCENARIO --policy "
                                            "RUNBOOK.yaml")
    lines.append("decided once, at the breach: the first branch whose conditions all hold "
                 "runs its procedure, else the default's")
    every = parts(src)
    for i, part in enumerate(every, 1):
        steps = len(part.src.procedure.steps)
        if part.when:
            lines.append(f"branch {i}/{len(every) - 1} {part.name}: when {part.when}: "
                         f"procedure '{part.src.procedure.name}' ({steps} steps)")
        else:
            lines.append(f"default: procedure '{part.src.procedure.name}' ({steps} steps)")
    return [one_line(line) for line in lines]


def _comment(lines: list[str]) -> str:
    return "".join((f"# {safe_line(line)}".rstrip() if line else "#") + "\n" for line in lines)


# --------------------------------------------------------------------------- yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    """Multi-line plain ASCII text (scripts) as a ``|`` block (the emitter falls back to
    quotes where a block cannot hold it exactly); anything else as PyYAML chooses."""
    block = "\n" in data and all(" " <= ch <= "~" or ch == "\n" for ch in data)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                   style="|" if block else None)


_Dumper.add_representer(str, _str_presenter)


def runbook_yaml(src: ExportSource, command: str | None = None) -> str:
    """The runbook file itself, normalised (for ``evaluate --policy``)."""
    header = [*header_lines(src, command),
              "use it with: shadowrl evaluate SCENARIO --policy THIS_FILE"]
    data = runbook_to_data(_book(src))
    return _comment(header) + yaml.dump(data, Dumper=_Dumper, sort_keys=False,
                                        default_flow_style=False, width=100,
                                        allow_unicode=True)


# --------------------------------------------------------------------------- argo

# Prints the value of a Prometheus instant query (argv: server URL, PromQL): the first
# sample of a vector (0 when the vector is empty), or the scalar; fails on NaN/Inf.
PROBE_SCRIPT = """\
import json, math, sys, urllib.parse, urllib.request
url, query = sys.argv[1].rstrip("/"), sys.argv[2]
with urllib.request.urlopen(url + "/api/v1/query?" + urllib.parse.urlencode(
        dict(query=query)), timeout=30) as response:
    body = json.load(response)
if body.get("status") != "success":
    sys.exit("prometheus: " + str(body.get("error")))
data = body["data"]
if data["resultType"] == "scalar":
    value = float(data["result"][1])
else:
    value = float(data["result"][0]["value"][1]) if data["result"] else 0.0
if not math.isfinite(value):
    sys.exit("probe: " + query + " is " + str(value) + ", not a number")
print(format(value, ".9f"))
"""


def _unique(base: str, taken: set[str]) -> str:
    name, n = base[:60].strip("-") or "step", 1
    while name in taken:
        n += 1
        name = f"{base[:56].strip('-')}-{n}"
    taken.add(name)
    return name


def _operand(probe: Probe) -> str:
    if probe.query is None:
        return f"{{{{workflow.parameters.{probe.name}}}}}"
    return f"{{{{tasks.probe-{probe.name}.outputs.result}}}}"


def _conjunction(tests: list[Test]) -> str:
    return " && ".join(f"{_operand(t.probe)} {t.op} {t.number}" for t in tests)


def _argo_when(tests: list[tuple[str, list[Test]]], k: int | None) -> str:
    """Branch ``k`` runs when its conditions hold and no earlier branch's do (``k`` None:
    the default, when none does)."""
    earlier = tests if k is None else tests[:k]
    terms = [f"!({_conjunction(t)})" for _, t in earlier]
    if k is not None:
        terms.insert(0, f"({_conjunction(tests[k][1])})")
    return " && ".join(terms)


def _branch_steps(part: Part, image: str) -> tuple[list[tuple[str, dict[str, Any] | None]],
                                                   dict[str, dict[str, Any]], int]:
    """The branch's steps in order as rendered by the procedure Argo export: (step name,
    arguments) pairs, its step templates by step name, and its deadline."""
    workflow = yaml.safe_load(part.render(to_argo, image=image))
    spec = workflow["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    entry = templates.pop(spec["entrypoint"])
    steps = [(group[0]["template"], group[0].get("arguments")) for group in entry["steps"]]
    return steps, templates, int(spec["activeDeadlineSeconds"])


def to_argo_runbook(src: ExportSource, command: str | None = None,
                    image: str = DEFAULT_IMAGE) -> str:
    """An Argo Workflow: a DAG with one probe task per Prometheus observable, then every
    branch's steps, each with a ``when:`` true only for that branch (its conditions, and
    none of the earlier branches'), in order (each step depends on the one before)."""
    book = _book(src)
    probes, tests = branch_tests(src)
    taken = {ENTRY, PROBE_TEMPLATE}
    tasks: list[dict[str, Any]] = []
    templates: list[dict[str, Any]] = []
    params: list[dict[str, Any]] = [{"name": "prometheus-url", "value": DEFAULT_PROMETHEUS_URL}]
    for p in probes:
        taken.add(f"probe-{p.name}")
        if p.query is None:
            params.append({"name": p.name, "value": "0"})
            continue
        params.append({"name": f"query-{p.name}", "value": p.query})
        tasks.append({"name": f"probe-{p.name}", "template": PROBE_TEMPLATE,
                      "arguments": {"parameters": [
                          {"name": "query",
                           "value": f"{{{{workflow.parameters.query-{p.name}}}}}"}]}})
    queried = any(p.query is not None for p in probes)
    deadline = 0
    for k, part in enumerate(parts(src)):
        branch = k if k < len(tests) else None
        steps, step_templates, seconds = _branch_steps(part, image)
        deadline = max(deadline, seconds)
        when = _argo_when(tests, branch)
        used = tests if branch is None else tests[:branch + 1]
        previous = sorted({f"probe-{t.probe.name}" for _, ts in used for t in ts
                           if t.probe.query is not None})
        for step, arguments in steps:
            name = _unique(f"{part.name}-{step}", taken)
            task: dict[str, Any] = {"name": name, "template": name}
            if previous:
                task["dependencies"] = previous
            if when:
                task["when"] = when
            if arguments:
                task["arguments"] = arguments
            tasks.append(task)
            template = {**step_templates[step], "name": name}
            meta = template.setdefault("metadata", {}).setdefault("annotations", {})
            meta.update({"shadowrl/branch": part.name, "shadowrl/step": step})
            templates.append(template)
            previous = [name]
    annotations = {"shadowrl/runbook": book.name, "shadowrl/source": src.origin}
    if src.scenario_name:
        annotations["shadowrl/scenario"] = src.scenario_name
    ev = evaluation_line(src.evaluation)
    if ev:
        annotations["shadowrl/evaluation"] = ev
    if src.command:
        annotations["shadowrl/produced-by"] = src.command
    if command:
        annotations["shadowrl/exported-by"] = command
    for key, value in annotations.items():
        if "{{" in value:
            raise SpecError([Problem(src.origin, 1, "", f"cannot be exported to Argo: the "
                                     f"annotation {key} would be {one_line(value)[:80]!r}, and "
                                     f"Argo Workflows would expand its '{{{{' as a template "
                                     f"tag (there is no escape for it)")])
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": book.name[:52] + "-",
                     "labels": {"app.kubernetes.io/managed-by": "shadowrl"},
                     "annotations": annotations},
        "spec": {"entrypoint": ENTRY,
                 "activeDeadlineSeconds": deadline + 300,
                 "arguments": {"parameters": params},
                 "templates": [{"name": ENTRY, "dag": {"tasks": tasks}},
                               *([_probe_template()] if queried else []), *templates]},
    }
    header = [*header_lines(src, command),
              "Argo Workflows: `argo submit THIS_FILE -p prometheus-url=URL`. The probes run "
              "Prometheus instant queries; the query-* parameters are templates: adapt them "
              "to your metrics.",
              "step-ran-* parameters: 0 at the breach (set 1 for a step that already ran). "
              "The step pods run kubectl: give the workflow a service account allowed to "
              "get, patch, scale and roll out these deployments. In container commands `$$` "
              "is Kubernetes' `$`.",
              *runbook_placeholders(src)]
    return _comment(header) + yaml.dump(workflow, Dumper=_Dumper, sort_keys=False,
                                        default_flow_style=False, width=100,
                                        allow_unicode=True)


def _probe_template() -> dict[str, Any]:
    return {"name": PROBE_TEMPLATE,
            "inputs": {"parameters": [{"name": "query"}]},
            "metadata": {"annotations": {"shadowrl/probe": "a Prometheus instant query; "
                                                           "prints its value"}},
            "container": {"image": PROBE_IMAGE,
                          "command": ["python3", "-c", k8s_literal(PROBE_SCRIPT)],
                          "args": ["{{workflow.parameters.prometheus-url}}",
                                   "{{inputs.parameters.query}}"]}}


# --------------------------------------------------------------------------- shell

_SHELL_HELPERS = r'''shadowrl_probe() {  # NAME QUERY: the observable's value now, on stdout
  if [ -n "${SHADOWRL_PROBE:-}" ]; then
    "$SHADOWRL_PROBE" "$1" "$2"
  else
    curl -fsS --get "${PROMETHEUS_URL%/}/api/v1/query" --data-urlencode "query=$2" \
      | jq -r 'if .data.resultType == "scalar" then .data.result[1]
               else (.data.result[0].value[1] // "0") end'
  fi
}
shadowrl_number() {  # NAME VALUE: stop unless VALUE is a finite number
  if ! [[ $2 =~ ^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$ ]]; then
    echo "shadowrl: probe $1 gave '$2', not a number: no branch chosen" >&2
    exit 2
  fi
}
shadowrl_above() {  # VALUE THRESHOLD: whether VALUE > THRESHOLD
  awk -v v="$1" -v t="$2" 'BEGIN { exit !(v + 0 > t + 0) }'
}
shadowrl_ran() {  # STEP: 1 when SHADOWRL_RAN (step names, space-separated) names it, else 0
  case " ${SHADOWRL_RAN:-} " in *" $1 "*) echo 1 ;; *) echo 0 ;; esac
}'''

_SET_E = "\nset -euo pipefail\n\n"


def _shell_test(t: Test) -> str:
    check = f'shadowrl_above "${t.probe.var}" {quote_word(t.number)}'
    return check if t.op == ">" else f"! {check}"


def _shell_body(part: Part) -> str:
    """The branch's steps exactly as the procedure shell export runs them (its blocks after
    the header and ``set -euo pipefail``)."""
    text = part.render(to_shell)
    if _SET_E not in text:
        raise RuntimeError("the procedure shell export changed shape: no 'set -euo pipefail'")
    return text.split(_SET_E, 1)[1]


def to_shell_runbook(src: ExportSource, command: str | None = None) -> str:
    """A bash script: read every probe once, then ``if/elif/else`` over the branches, each
    running its procedure's steps as the procedure shell export does."""
    book = _book(src)
    probes, tests = branch_tests(src)
    header = [*header_lines(src, command),
              "Probes: with SHADOWRL_PROBE set, `$SHADOWRL_PROBE NAME PROMQL` prints each "
              "value; else curl and jq query PROMETHEUS_URL (default http://localhost:9090).",
              "The PromQL of each probe is a template: override it with its SHADOWRL_QUERY_* "
              "variable. SHADOWRL_RAN: the steps that already ran (none at the breach).",
              *runbook_placeholders(src)]
    out = ["#!/usr/bin/env bash", _comment(header).rstrip("\n"), "set -euo pipefail", "",
           'PROMETHEUS_URL="${PROMETHEUS_URL:-http://localhost:9090}"']
    for p in probes:
        if p.query is not None:
            out.append(f'[ -n "${{{p.env}:-}}" ] || {p.env}={quote_word(p.query)}')
    out += [_SHELL_HELPERS, "", "# what is seen at the breach, read once"]
    for p in probes:
        if p.query is None:
            out.append(f"{p.var}=$(shadowrl_ran {quote_word(p.key[1])})")
        else:
            out.append(f'{p.var}=$(shadowrl_probe {p.name} "${p.env}")')
            out.append(f'shadowrl_number {p.name} "${p.var}"')
        out.append(f'echo "shadowrl: probe {p.name} = ${p.var}" >&2')
    out.append("")
    every = parts(src)
    for k, part in enumerate(every):
        if part.name == "default" and k == len(tests):
            out.append("else" if tests else "{")
        else:
            keyword = "if" if k == 0 else "elif"
            out.append(f"{keyword} {' && '.join(_shell_test(t) for t in tests[k][1])}; then")
        chosen = (f"shadowrl: runbook {book.name}: branch {part.name} ({part.when})"
                  if part.when else f"shadowrl: runbook {book.name}: default (no branch "
                                    f"matched)")
        out.append(f"echo {quote_word(one_line(chosen))} >&2")
        out.append(_shell_body(part).rstrip("\n"))
    out.append("fi" if tests else "}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- chaostoolkit


def to_chaostoolkit_runbook(src: ExportSource, command: str | None = None) -> str:
    """A JSON document: one Chaos Toolkit experiment per branch (and the default), shaped
    as the procedure export's, plus the selector that picks one: the probes (Prometheus
    queries as Chaos Toolkit HTTP probes), each branch's tests in order and the experiment
    it selects."""
    book = _book(src)
    probes, tests = branch_tests(src)
    run_with = ("jq '.experiments[\"BRANCH\"]' THIS_FILE > experiment.json && chaos run "
                "--hypothesis-strategy after-method-only experiment.json")
    experiments: dict[str, Any] = {}
    for part in parts(src):
        experiment = json.loads(part.render(to_chaostoolkit, command))
        experiment["title"] = (f"Runbook {book.name}, "
                               + (f"branch {part.name}" if part.when else "default")
                               + f": rollback procedure {part.src.procedure.name}")
        experiment["tags"] = [*experiment.get("tags", []), "runbook", book.name]
        experiment["x-shadowrl"]["runbook"] = {"name": book.name, "branch": part.name,
                                               "when": part.when or None}
        experiments[part.name] = experiment
    selector = {
        "rule": "decided once, at the breach: the first branch whose tests all hold selects "
                "its experiment, else the default",
        "prometheus_url": DEFAULT_PROMETHEUS_URL,
        "probes": [_ctk_probe(p) for p in probes],
        "branches": [{"name": name, "experiment": name,
                      "when": [{"probe": t.probe.name, "op": t.op, "value": t.threshold,
                                "text": t.text, "condition": t.condition} for t in ts]}
                     for name, ts in tests],
        "default": {"experiment": "default"},
    }
    document = {
        "x-shadowrl": {
            "runbook": book.name,
            "scenario": src.scenario_name,
            "source": src.origin,
            "produced_by": src.command,
            "exported_by": command,
            "evaluation": src.evaluation,
            "header": header_lines(src, command),
            "run_with": run_with,
            "queries": "each probe's query is a PromQL template: adapt it to your metrics",
            "placeholders": runbook_placeholders(src),
        },
        "selector": selector,
        "experiments": experiments,
    }
    return json.dumps(document, indent=2) + "\n"


def _ctk_probe(p: Probe) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "observable": p.text, "type": "probe"}
    if p.query is None:
        out["value_at_breach"] = 0
        out["provider"] = None
        return out
    out["query"] = p.query
    out["provider"] = {"type": "http", "method": "GET",
                       "url": f"{DEFAULT_PROMETHEUS_URL}/api/v1/query",
                       "arguments": {"query": p.query}}
    return out


# --------------------------------------------------------------------------- dispatch


def render_runbook(src: ExportSource, fmt: str, command: str | None = None,
                   image: str = DEFAULT_IMAGE) -> str:
    """Render a runbook source in one of :data:`FORMATS`."""
    if fmt == "yaml":
        return runbook_yaml(src, command)
    if fmt == "argo":
        return to_argo_runbook(src, command, image=image)
    if fmt == "chaostoolkit":
        return to_chaostoolkit_runbook(src, command)
    if fmt == "shell":
        return to_shell_runbook(src, command)
    raise SourceError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")


__all__ = ["DEFAULT_PROMETHEUS_URL", "PROBE_IMAGE", "Part", "Probe", "Test", "branch_tests",
           "default_query", "header_lines", "parts", "render_runbook", "runbook_exported_line",
           "runbook_placeholders", "runbook_yaml", "to_argo_runbook",
           "to_chaostoolkit_runbook", "to_shell_runbook"]
