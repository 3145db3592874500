"""Property tests of export: whatever text a scenario holds, every format runs exactly the
steps' argv and keeps every free text where it belongs, as text.

Scenarios and procedure files are generated as data, written as YAML and loaded with the real
loader (:func:`load_source`), then exported in all four formats:

- shell: ``bash -n`` passes, and the script, run with ``PATH`` holding only fake commands
  (each appends its argv to a log), runs exactly the expected argv of every step, in order;
- argo: the YAML parses, and each step's container, run the way Argo and Kubernetes run it
  (parameter substitution, then Kubernetes' ``$(VAR)`` expansion, then exec), runs exactly
  the step's argv; free texts are annotations, exactly;
- chaostoolkit: the JSON parses, and each method action, run the way chaostoolkit-lib's
  process provider runs it (``${...}`` substitution when there is a configuration, with and
  without ``--var``s; empty arguments dropped; ``~`` expanded), runs exactly the step's argv;
  free texts are exact;
- yaml: loads back through the real procedure loader to the same procedure.

Free texts carry shell, YAML, Argo and Chaos Toolkit syntax and payloads that would create a
marker file if any of it ran; the marker must never appear.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import string
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shadowrl.core.plan import ordered_steps
from shadowrl.core.spec import SpecError, load_procedure, procedure_to_data
from shadowrl.export.renderers import evaluation_line, one_line, render
from shadowrl.export.sources import ExportSource, load_source

BASH = shutil.which("bash") or "/bin/bash"
SH = shutil.which("sh") or "/bin/sh"
TOUCH = shutil.which("touch") or "/usr/bin/touch"
MARKER = "@MARKER@"  # replaced by the marker file's path
# names a shell runs as a builtin, not as the program of that name: a run: argv[0] of the
# generated scenarios is a fake program, so it must not be one of these (bash and dash)
BUILTINS = frozenset(
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue "
    "declare dirs disown echo enable eval exec exit export false fc fg getopts hash help "
    "history jobs kill let local logout mapfile popd printf pushd pwd read readarray "
    "readonly return set shift shopt source suspend test times trap true type typeset "
    "ulimit umask unalias unset wait chdir".split())

EXAMPLES = int(os.environ.get("SHADOWRL_EXPORT_EXAMPLES", "60"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])

NASTY = [
    f"\ntouch {MARKER}\n#", f"\n{TOUCH} {MARKER}\n#", f"$({TOUCH} {MARKER})",
    f"`{TOUCH} {MARKER}`", f"'; {TOUCH} {MARKER}; '", f'"; {TOUCH} {MARKER}; "',
    f"\r\n{TOUCH} {MARKER}", f"\x85{TOUCH} {MARKER}", f"\u2028{TOUCH} {MARKER}",
    f"x\\\n{TOUCH} {MARKER}", f"a; {TOUCH} {MARKER}", f"a && {TOUCH} {MARKER} #",
    "{{inputs.parameters.replicas}}", "{{workflow.name}}", "{{=1+1}}", "}}", "{{",
    "$$", "$", "${HOME}", "$(HOME)", "$(ARGO_TEMPLATE)", "${shadowrl_escaped_dollars}",
    "$shadowrl_escaped_dollars", "$1", "$@", "*", "?", "[a]", "~", "~root", "!", "#", " # c",
    "\\", "'", '"', "%1", "if", "A=b", "--replicas=1", "-c", "\t", "\x1b[31mred", "\u202eevil",
    "\ufeff", "\x7f", "café", "\U0001f600", "key: value", "- item", "&anchor", "*alias",
    "!!python/object:os.system", "|", ">", "---", "...", "%YAML 1.1", "null", "true", "0x1F",
    "",
]

_any_char = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
free_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(_any_char, max_size=12),
    st.tuples(st.sampled_from(NASTY), st.text(_any_char, max_size=6),
              st.sampled_from(NASTY)).map("".join),
)
names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True).filter(lambda n: n != "edge")
program = st.one_of(
    st.sampled_from(["kubectl", "if", "time", "A=b", "~x", "-dash", "%1", "a b", "x\ny", "it's",
                     "$(x)", "*", "#hash", "{", "[[", "!", "é"]),
    st.text(_any_char, min_size=1, max_size=8),
).filter(lambda p: "/" not in p and p not in (".", "..") and p not in BUILTINS
         and p != "sh" and len(p.encode("utf-8", "surrogatepass")) < 200)


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    return [draw(program), *draw(st.lists(free_text, max_size=4))]


@dataclass
class Case:
    """A generated export source: its files' data and the free texts set on the source."""

    scenario: dict[str, Any] | None  # a scenario file's data (None: a procedure file alone)
    procedure_file: dict[str, Any] | None  # a procedure file's data, or None
    origin: str
    command: str | None
    exported_by: str
    evaluation: dict[str, Any] | None


@st.composite
def steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Steps on the generated components: web (version, config, flags), db (migration),
    cache. Placeholder actions always carry a run: (their template fails by design)."""
    count = draw(st.integers(1, 4))
    step_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    out = []
    for i, name in enumerate(step_names):
        kind = draw(st.sampled_from(["revert_config", "scale", "wait", "rollback_version",
                                     "revert_config", "command", "disable_flag",
                                     "migrate_down", "flush_cache", "warm_cache"]))
        step: dict[str, Any] = {"name": name, "action": kind}
        if kind in ("scale", "rollback_version", "revert_config", "disable_flag"):
            step["target"] = "web"
        elif kind == "migrate_down":
            step["target"] = "db"
        elif kind in ("flush_cache", "warm_cache"):
            step["target"] = "cache"
        if kind == "scale":
            step["settings"] = {"replicas": draw(st.integers(1, 40))}
        elif kind == "wait":
            step["settings"] = {"duration": draw(st.sampled_from(["0s", "1500ms", "5s", "2m"]))}
        elif kind in ("rollback_version", "revert_config"):
            step["settings"] = {"batch": draw(st.integers(1, 4)),  # web has 4 replicas
                                "drain": draw(st.sampled_from(["0s", "10s", "30s", "2500ms"]))}
            if draw(st.booleans()):
                step["settings"]["surge"] = draw(st.integers(0, 3))
        elif kind == "disable_flag":
            step["settings"] = {"flag": "new-ui"}
        placeholder = kind in ("command", "disable_flag", "migrate_down", "flush_cache",
                               "warm_cache")
        if placeholder or draw(st.integers(0, 4)) == 0:
            step["run"] = draw(argv())
        if i and draw(st.booleans()):
            step["after"] = [step_names[draw(st.integers(0, i - 1))]]
        out.append(step)
    return out


@st.composite
def cases(draw: st.DrawFn) -> Case:
    from_scenario = draw(st.booleans())
    proc = {"name": draw(names), "steps": draw(steps()),
            "verify": dict(zip(("hold", "timeout"), draw(st.sampled_from(  # hold <= timeout
                [("0s", "90s"), ("30s", "90s"), ("2m", "30m"), ("0s", "2500ms")]))))}
    scenario = {
        "apiVersion": "shadowrl/v1", "kind": "Scenario",
        "metadata": {"name": draw(names), "description": draw(free_text)},
        "deployment": {
            "traffic": {"rps": 100},
            "services": [{"name": "web", "replicas": 4, "capacity_rps": 50,
                          "calls": ["db", "cache"],
                          "version": {"live": draw(free_text), "previous": draw(free_text)},
                          "config": {"live": draw(free_text), "previous": draw(free_text)},
                          "flags": ["new-ui"], "max_surge": 3}],
            "datastores": [{"name": "db", "capacity_qps": 500,
                            "migration": {"duration": "1m"}}],
            "caches": [{"name": "cache", "hit_ratio": 0.8, "fronts": ["db"]}]},
        "slo": {"rules": [{"name": "errors", "metric": "error_rate", "above": 0.01}]},
        "incidents": [{"name": "bad", "cause": {"kind": "version", "target": "web"},
                       "effects": [{"metric": "error_rate", "target": "web", "add": 0.1}]}],
        "procedure": proc,
    }
    procedure_file = None
    if not from_scenario:
        procedure_file = {"apiVersion": "shadowrl/v1", "kind": "Procedure",
                          "metadata": {"name": proc["name"], "scenario": draw(free_text)},
                          "procedure": proc}
        scenario = scenario if draw(st.booleans()) else None
    evaluation = draw(st.one_of(
        st.none(),
        st.builds(lambda t: {"text": t}, free_text),
        st.builds(lambda p, n: {"policy": p, "runs": n,
                                "downtime_s": {"mean": 12.0, "p95": 30.0}},
                  free_text, st.integers(1, 100))))
    return Case(scenario=scenario, procedure_file=procedure_file, origin=draw(free_text),
                command=draw(st.none() | free_text), exported_by=draw(free_text),
                evaluation=evaluation)


# --------------------------------------------------------------------------- fakes


FAKE = """#!{bash}
{{ printf '%s\\0' "${{0##*/}}" "$#"; if [ "$#" -gt 0 ]; then printf '%s\\0' "$@"; fi; }} \\
  >> "$SHADOWRL_FAKE_LOG"
"""


class Fakes:
    """A directory of fake programs that log their argv (NUL-separated, with a count)."""

    def __init__(self, root: Path, programs: set[str]):
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        text = FAKE.format(bash=BASH)
        for name in {"kubectl", "sleep", *programs}:
            path = self.bin / name
            path.write_text(text)
            path.chmod(0o755)
        self.env = {"PATH": str(self.bin), "SHADOWRL_FAKE_LOG": str(self.log),
                    "HOME": str(root), "LC_ALL": "C.UTF-8"}

    def calls(self) -> list[list[str]]:
        """The logged argv, each with the program's name first; then the log is emptied."""
        if not self.log.exists():
            return []
        items = self.log.read_bytes().split(b"\0")[:-1]
        self.log.unlink()
        out, i = [], 0
        while i < len(items):
            n = int(items[i + 1])
            out.append([x.decode("utf-8", "surrogateescape") for x in
                        [items[i], *items[i + 2:i + 2 + n]]])
            i += 2 + n
        return out

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        """Exec ``argv`` the way a runner does: its program found on the fakes' PATH (a shell
        where the runner's image has one), with only the fakes on the PATH it runs with."""
        exe = shutil.which(argv[0], path=str(self.bin))
        if exe is None and argv[0] == "sh":
            exe = SH
        assert exe is not None, f"{argv[0]!r} is not a fake program"
        return subprocess.run([exe, *argv[1:]], env=self.env, capture_output=True,
                              timeout=30, check=False)


# --------------------------------------------------------------------------- expectations


def seconds(text: str) -> int:
    value = float(text[:-2]) / 1000 if text.endswith("ms") else (
        float(text[:-1]) * 60 if text.endswith("m") else float(text[:-1]))
    return max(0, math.ceil(value - 1e-9))


def expected_calls(step: dict[str, Any], timeout: int, previous: str | None) -> list[list[str]]:
    """What the step must run, worked out from the step alone (not from export's code)."""
    if step.get("run"):
        return [list(step["run"])]
    s = step.get("settings", {})
    deploy = f"deployment/{step.get('target')}"
    status = ["kubectl", "rollout", "status", deploy, f"--timeout={timeout}s"]
    if step["action"] == "scale":
        return [["kubectl", "scale", deploy, f"--replicas={s['replicas']}"]]
    if step["action"] == "wait":
        return [["sleep", str(seconds(s["duration"]))]]
    patch = ('{"spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":'
             + f'{s["batch"]},"maxSurge":{s.get("surge", 0)}' + '}}}}')
    head = [["kubectl", "patch", deploy, "--type=strategic", "-p", patch],
            ["kubectl", "get", deploy, "-o",
             "jsonpath={.spec.template.spec.terminationGracePeriodSeconds}"]]
    if step["action"] == "rollback_version":
        return [*head, ["kubectl", "rollout", "undo", deploy], status]
    assert step["action"] == "revert_config"
    manifest = f"{step['target']}-config-{previous or 'PREVIOUS'}.yaml"
    return [*head, ["kubectl", "apply", "-f", manifest],
            ["kubectl", "rollout", "restart", deploy], status]


def fill(value: Any, marker: str) -> Any:
    """``value`` with the marker placeholder replaced by the marker file's path."""
    if isinstance(value, str):
        return value.replace(MARKER, marker)
    if isinstance(value, dict):
        return {k: fill(v, marker) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, marker) for v in value]
    return value


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load_case(case: Case, root: Path) -> ExportSource:
    """The case's files written and loaded as `shadowrl export` loads them; then the free
    texts a source carries besides its files (origin, command, evaluation)."""
    if case.procedure_file is None:
        assert case.scenario is not None
        src = load_source(str(write_yaml(root / "scenario.yaml", case.scenario)))
    else:
        sc = write_yaml(root / "scenario.yaml", case.scenario) if case.scenario else None
        src = load_source(str(write_yaml(root / "procedure.yaml", case.procedure_file)), sc)
    src.origin, src.command, src.evaluation = case.origin, case.command, case.evaluation
    return src


# --------------------------------------------------------------------------- runners


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of container command and args (a port of its ``Expand``):
    ``$$`` is ``$``, ``$(NAME)`` the variable's value when it is defined, else kept."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


ARGO_ENV = {"ARGO_TEMPLATE": "{}", "ARGO_POD_NAME": "pod", "HOME": "/root", "HOSTNAME": "h"}
_REF = re.compile(r"\{\{inputs\.parameters\.([A-Za-z0-9_-]+)\}\}")


def run_argo(wf: dict[str, Any], fakes: Fakes) -> list[list[str]]:
    """Every step of the workflow run in order as Argo and Kubernetes would run it."""
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    calls = []
    for (item,) in templates[wf["spec"]["entrypoint"]]["steps"]:
        template = templates[item["template"]]
        values = {p["name"]: p["value"] for p in item.get("arguments", {}).get("parameters", [])}
        container = template["container"]
        argv = [*container.get("command", []), *container.get("args", [])]
        argv = [_REF.sub(lambda m: values[m.group(1)], a) for a in argv]  # noqa: B023
        assert not any("{{" in a for a in argv), argv
        argv = [k8s_expand(a, ARGO_ENV) for a in argv]
        done = fakes.run(argv)
        assert done.returncode == 0, (item["name"], done.stderr)
        calls += fakes.calls()
    return calls


# what ``chaos run --var NAME=VALUE`` adds to an experiment's configuration
CHAOS_VARS = {"HOME": "/var", "name": "var", "shadowrl_escaped_dollars": "var", "1": "var"}


def run_chaostoolkit(exp: dict[str, Any], fakes: Fakes,
                     variables: dict[str, str] | None = None) -> list[list[str]]:
    """Every method action run as chaostoolkit-lib's process provider runs it: arguments
    ``${...}``-substituted when there is a configuration (the experiment's, and ``--var``
    ``variables``), empty ones dropped, ``~`` expanded in the path."""
    configuration = {**(exp.get("configuration") or {}), **(variables or {})}
    calls = []
    for action in exp["method"]:
        provider = action["provider"]
        args = provider.get("arguments", [])
        if args and configuration:
            args = [string.Template(a).safe_substitute(configuration) for a in args]
        args = [str(a) for a in args if a not in (None, "")]
        done = fakes.run([os.path.expanduser(provider["path"]), *args])
        assert done.returncode == 0, (action["name"], done.stderr)
        calls += fakes.calls()
    return calls


# --------------------------------------------------------------------------- checks


def check_comment_block(lines: list[str]) -> None:
    """Comment lines hold no control, format or separator characters."""
    for line in lines:
        assert line == "#" or line.startswith("# "), line
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                             "\ufeff]", line), repr(line)


def header_texts(src: ExportSource, exported_by: str) -> list[str]:
    """The header lines holding free text, as the header must show them: one line each."""
    texts = [f"source: {src.origin}"]
    if exported_by:
        texts.append(f"exported by: `{one_line(exported_by)}`")
    if src.command:
        texts.append(f"produced by: `{one_line(src.command)}`")
    ev = evaluation_line(src.evaluation)
    if ev:
        texts.append(f"evaluation: {ev}")
    return [one_line(t) for t in texts]


def check_shell(text: str, src: ExportSource, expected: list[list[str]], exported_by: str,
                fakes: Fakes, root: Path) -> None:
    path = root / "rollback.sh"
    path.write_text(text, encoding="utf-8")
    syntax = subprocess.run([BASH, "-n", str(path)], capture_output=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    header = text.split("\nset -euo pipefail\n")[0].splitlines()[1:]
    check_comment_block(header)
    for want in header_texts(src, exported_by):
        assert f"# {want}" in header, (want, header)
    done = subprocess.run([BASH, str(path)], env=fakes.env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = fakes.calls()
    assert calls == expected, (calls, expected)


def check_argo(text: str, src: ExportSource, expected: list[list[str]], exported_by: str,
               fakes: Fakes) -> None:
    head, _, _ = text.partition("\napiVersion:")
    check_comment_block(head.splitlines())
    wf = yaml.safe_load(text)
    notes = wf["metadata"]["annotations"]
    assert notes["shadowrl/source"] == src.origin
    assert notes.get("shadowrl/exported-by") == (exported_by or None)
    assert notes.get("shadowrl/produced-by") == (src.command or None)
    assert notes.get("shadowrl/evaluation") == evaluation_line(src.evaluation)
    if src.scenario_name:
        assert notes["shadowrl/scenario"] == src.scenario_name
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    for step in src.procedure.steps:
        container = templates[step.name]["container"]
        if step.run:  # the argv itself, a list (``$`` written ``$$``)
            assert [k8s_expand(a, ARGO_ENV) for a in container["command"]] == step.run
            assert "args" not in container
    calls = run_argo(wf, fakes)
    assert calls == expected, (calls, expected)


def check_chaostoolkit(text: str, src: ExportSource, expected: list[list[str]],
                       exported_by: str, fakes: Fakes) -> None:
    exp = json.loads(text)
    meta = exp["x-shadowrl"]
    assert meta["source"] == src.origin and meta["exported_by"] == exported_by
    assert meta["produced_by"] == src.command and meta["evaluation"] == src.evaluation
    assert meta["scenario"] == src.scenario_name
    description = exp["description"].split("\n")
    for want in header_texts(src, exported_by):
        assert want in description
    by_name = {a["name"]: a["provider"] for a in exp["method"]}
    for step in src.procedure.steps:
        provider = by_name[step.name]
        if step.run and provider["path"] != "sh":  # the argv as path + arguments
            args = provider["arguments"]
            if exp.get("configuration"):
                args = [string.Template(a).safe_substitute({}) for a in args]
            assert [provider["path"], *args] == step.run
    for variables in (None, CHAOS_VARS):  # `chaos run`, and with `--var`s
        calls = run_chaostoolkit(exp, fakes, variables)
        assert calls == expected, (variables, calls, expected)


def check_yaml(text: str, src: ExportSource, root: Path) -> None:
    head, _, _ = text.partition("\napiVersion:")
    check_comment_block(head.splitlines())
    path = root / "exported.yaml"
    path.write_text(text, encoding="utf-8")
    back = load_procedure(path, src.scenario)
    assert procedure_to_data(back) == procedure_to_data(src.procedure)
    assert yaml.safe_load(text)["metadata"].get("scenario") == (src.scenario_name or None)


def argo_refuses(src: ExportSource, exported_by: str) -> bool:
    """Whether the case holds a ``{{`` Argo would expand (then the Argo export refuses)."""
    texts = [src.origin, exported_by, src.command or "", src.scenario_name or "",
             evaluation_line(src.evaluation) or ""]
    for step in src.procedure.steps:
        texts += step.run or []
        if step.action == "revert_config" and not step.run and src.scenario is not None:
            texts.append(str(src.scenario.components()["web"].config.previous))
    return any("{{" in t for t in texts)


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker") / "pwned"


@PROPERTY_SETTINGS
@given(case=cases())
def test_exports_run_exactly_the_steps(case: Case, marker: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = Case(**{k: fill(v, str(marker)) for k, v in vars(case).items()})
        src = load_case(case, root)
        previous = (str(src.scenario.components()["web"].config.previous)
                    if src.scenario is not None else None)
        timeout = math.ceil(src.procedure.verify.timeout - 1e-9)
        data = case.procedure_file or case.scenario
        assert data is not None
        by_name = {s["name"]: s for s in data["procedure"]["steps"]}
        expected = [call for s in ordered_steps(src.procedure)
                    for call in expected_calls(by_name[s.name], timeout, previous)]
        programs = {s.run[0] for s in src.procedure.steps if s.run}
        fakes = Fakes(root, programs)
        event("procedure file" if case.procedure_file else "scenario file")
        event("argo refuses a {{" if argo_refuses(src, case.exported_by) else "argo exports")
        for step in src.procedure.steps:
            event(f"step: {'run' if step.run else step.action}")
            if step.action == "revert_config" and not step.run and previous is not None:
                event("step: revert_config with the scenario's previous config")
        outputs: dict[str, str | None] = dict.fromkeys(("yaml", "argo", "chaostoolkit",
                                                        "shell"))
        for fmt in outputs:
            if fmt == "argo" and argo_refuses(src, case.exported_by):
                with pytest.raises(SpecError, match="Argo Workflows would expand"):
                    render(src, fmt, command=case.exported_by)
                continue
            outputs[fmt] = render(src, fmt, command=case.exported_by)
        check_yaml(outputs["yaml"], src, root)
        check_shell(outputs["shell"], src, expected, case.exported_by, fakes, root)
        check_chaostoolkit(outputs["chaostoolkit"], src, expected, case.exported_by, fakes)
        if outputs["argo"] is not None:
            check_argo(outputs["argo"], src, expected, case.exported_by, fakes)
        assert not marker.exists(), "an injected command ran"


# --------------------------------------------------------------------------- regressions


MINIMAL = Path(__file__).resolve().parents[2] / "tests" / "scenarios" / "minimal.yaml"


def minimal_with(tmp_path: Path, previous: str, steps: str | None = None) -> Path:
    """The minimal scenario with a config (its previous version ``previous``) and a
    revert_config step, or ``steps`` in place of its procedure's steps."""
    text = MINIMAL.read_text().replace(
        "version: {live: v2, previous: v1}}",
        f"version: {{live: v2, previous: v1}}, config: {{live: c9, "
        f"previous: {json.dumps(previous)}}}}}")
    text = text.replace("    - {name: revert-app, action: rollback_version, target: app}\n",
                        steps or "    - {name: revert-cfg, action: revert_config, target: app}\n")
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def test_config_previous_cannot_inject_commands(tmp_path: Path) -> None:
    """The reported attack: a config's previous version ending the NOTE comment that names
    its manifest, so the exported script (which passed ``bash -n``) ran ``touch``. Now it is
    one quoted file name, with real ``touch`` on the PATH it would have used."""
    pwned = tmp_path / "pwned"
    previous = f"c8\ntouch {pwned}\n#"
    src = load_source(str(minimal_with(tmp_path, previous)))
    fakes = Fakes(tmp_path, set())
    manifest = f"app-config-{previous}.yaml"
    expected = expected_calls({"action": "revert_config", "target": "app",
                               "settings": {"batch": 1}}, 1800, previous)
    assert ["kubectl", "apply", "-f", manifest] in expected
    text = render(src, "shell")
    path = tmp_path / "rollback.sh"
    path.write_text(text)
    assert subprocess.run([BASH, "-n", str(path)]).returncode == 0
    env = {**fakes.env, "PATH": f"{fakes.bin}:{os.path.dirname(TOUCH)}:/bin"}
    done = subprocess.run([BASH, str(path)], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert fakes.calls() == expected
    assert not pwned.exists()
    assert f"\n# NOTE: needs {one_line(manifest)}: " in text  # one comment line
    wf = yaml.safe_load(render(src, "argo"))
    assert run_argo(wf, fakes) == expected
    assert run_chaostoolkit(json.loads(render(src, "chaostoolkit")), fakes) == expected
    assert not pwned.exists()


def test_name_with_trailing_newline_is_rejected(tmp_path: Path) -> None:
    """``web\\n`` used to pass the name check and split ``kubectl scale deployment/web`` from
    its ``--replicas``; the loader now rejects it with file:line: field."""
    path = tmp_path / "scenario.yaml"
    path.write_text(MINIMAL.read_text().replace("- {name: app,", '- {name: "app\\n",'))
    with pytest.raises(SpecError) as info:
        load_source(str(path))
    assert f"{path}:8: deployment.services[0].name: invalid name 'app\\n'" in str(info.value)


def test_placeholder_steps_fail_by_design(tmp_path: Path) -> None:
    """A step with no generic command stops the script where it stands: the steps before
    it ran, the ones after it did not."""
    path = minimal_with(tmp_path, "c8", steps=(
        "    - {name: first, action: scale, target: app, settings: {replicas: 3}}\n"
        "    - {name: todo, action: command}\n"
        "    - {name: last, action: wait, settings: {duration: 5s}}\n"))
    src = load_source(str(path))
    fakes = Fakes(tmp_path, set())
    script = tmp_path / "rollback.sh"
    script.write_text(render(src, "shell"))
    done = subprocess.run([BASH, str(script)], env=fakes.env, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"TODO(shadowrl)" in done.stderr
    assert fakes.calls() == [["kubectl", "scale", "deployment/app", "--replicas=3"]]


@pytest.mark.parametrize("token", ["a\x00b", "\ud800"])
def test_unrunnable_arguments_are_refused(tmp_path: Path, token: str) -> None:
    """No process can receive a NUL, and a lone surrogate is not UTF-8: the formats that run
    commands refuse them with file:line: field; the procedure file still holds them."""
    path = tmp_path / "procedure.yaml"
    path.write_text("procedure:\n  name: p\n  steps:\n"
                    "    - name: a\n      action: command\n"
                    f"      run: [echo, {json.dumps(token)}]\n")
    if token == "\ud800":  # the loader refuses it: it can only come from a resolver
        path.write_text(path.read_text().replace(json.dumps(token), "x"))
        src = load_source(str(path))
        src.procedure.steps[0].run = ["echo", token]
        src.lines = None  # as a resolver's source: no lines, so line 1
        where = f"{path}:1: procedure.steps[0].run[1]"
        with pytest.raises(SpecError, match="lone surrogate"):
            render(src, "yaml")
    else:
        src = load_source(str(path))
        where = f"{path}:6: procedure.steps[0].run[1]"
        back = tmp_path / "back.yaml"
        back.write_text(render(src, "yaml"))
        assert load_procedure(back).steps[0].run == ["echo", token]
    for fmt in ("shell", "argo", "chaostoolkit"):
        with pytest.raises(SpecError) as info:
            render(src, fmt)
        assert str(info.value).startswith(f"{where}: cannot be exported")


def test_argo_refuses_template_tags(tmp_path: Path) -> None:
    """Argo expands ``{{...}}`` in templates and has no escape: such text is refused, with
    the field and line when it comes from the file."""
    path = tmp_path / "procedure.yaml"
    path.write_text("procedure:\n  name: p\n  steps:\n"
                    "    - {name: a, action: command, run: [echo, ok]}\n"
                    "    - {name: b, action: command, run: [echo, '{{inputs.parameters.x}}']}\n")
    src = load_source(str(path))
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}:5: procedure\.steps\[1\]"
                                        r"\.run\[1\]: cannot be exported to Argo"):
        render(src, "argo")
    assert json.loads(render(src, "chaostoolkit"))["method"][1]["provider"]["arguments"] == \
        ["{{inputs.parameters.x}}"]
    src = load_source(str(minimal_with(tmp_path, "{{workflow.name}}")))
    with pytest.raises(SpecError, match="Argo Workflows would expand"):
        render(src, "argo")
    src = load_source(str(MINIMAL))
    src.command = "shadowrl optimize {{=sprig.env('X')}}"
    with pytest.raises(SpecError, match="produced-by would be"):
        render(src, "argo")


def test_command_words_always_name_the_program(tmp_path: Path) -> None:
    """First words the shells would read as syntax, an assignment, a job or an option run
    the program of that name, in bash and in sh; ``run:`` words are never left unquoted."""
    from shadowrl.export.commands import shell_join

    programs = ["if", "time", "A=b", "x+=1", "%1", "-e", "{", "!", "~x"]
    assert shell_join(["if", "x"]) == "'if' x"
    assert shell_join(["A=b", "c=d"]) == "'A=b' c=d"
    assert shell_join(["%1"]) == "( exec %1 )"
    assert shell_join(["echo", "{{inputs.parameters.x}}"]) == "echo '{{inputs.parameters.x}}'"
    assert one_line(" a\n\tb\x1b[0m\u202ec\u2028 ") == "a b\\x1b[0m\\u202ec"
    fakes = Fakes(tmp_path, set(programs))
    for shell in (BASH, SH):
        script = "\n".join(shell_join([p, "arg"]) for p in programs)
        done = subprocess.run([shell, "-c", script], env=fakes.env, capture_output=True,
                              timeout=30)
        assert done.returncode == 0, (shell, done.stderr)
        assert fakes.calls() == [[p, "arg"] for p in programs]
