"""README.md is checked by running it.

Every command line the README shows (shell blocks and inline ``shadowrl``/``python``/``pip``/
``make``/``mlflow``/``ray`` spans) either runs as written in a scratch workspace or is mapped,
with a reason, to the tests that cover it (tests/readme/decisions.py); a command with no
decision fails. Every flag a command uses must be in its ``--help``. The README's scenario
examples are validated and rehearsed and what the README says about them must hold; its
Python blocks run; its output files, JSON keys, MLflow params/metrics/artifacts/tags,
methods, formats and the demo's closing message are compared with real runs; every path it
mentions exists in the repository or is written by a command; and timings appear only as
measurements that name their command and machine.

Runs happen once per session (tests/readme/workspace.py caches them), in the order their
inputs need, so the tests can be split across pytest-xdist workers in any order.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.readme import markdown as md
from tests.readme.decisions import DECISIONS, decide
from tests.readme.workspace import ROOT, SHRUNK, SUBSTITUTIONS, Run, Workspace

README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = md.commands(README)
SCENARIO_BLOCKS = [b for b in md.blocks(README) if b.lang == "yaml"
                   and re.search(r"^kind: Scenario\s*$", b.body, re.MULTILINE)]
EXPERIMENT_BLOCKS = [b for b in md.blocks(README) if b.lang == "yaml"
                     and re.search(r"^kind: Experiment\s*$", b.body, re.MULTILINE)]
PYTHON_BLOCKS = [b for b in md.blocks(README) if b.lang == "python"]
HELP_ENV = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}


def _cli() -> Any:
    """The click group behind ``shadowrl`` (None when the CLI does not import: see
    test_the_cli_imports)."""
    try:
        import typer.main

        from shadowrl.cli.main import app
    except Exception:  # noqa: BLE001 - reported by test_the_cli_imports
        return None
    return typer.main.get_command(app)


CLI = _cli()
SUBCOMMANDS: list[str] = sorted(CLI.commands) if CLI is not None else []
FRAGMENTS = md.fragments(README, set(SUBCOMMANDS))


def ids(items: list[md.Command]) -> list[str]:
    return [c.id for c in items]


@pytest.fixture(scope="session")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """One workspace per test session, shared by pytest-xdist workers (their common base
    folder), so each README command runs once."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    yield Workspace(base / "readme-workspace", COMMANDS)


def invoke(*args: str) -> Any:
    """``shadowrl ARGS`` in this process (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from shadowrl.cli.main import app

    return CliRunner().invoke(app, list(args), env=HELP_ENV)


@cache
def cli_help(*sub: str) -> str:
    result = invoke(*sub, "--help")
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def ok(run: Run) -> Run:
    assert run.returncode == 0, run.explain()
    return run


def readme_run(ws: Workspace, pattern: str) -> Run:
    """The run of the first README command matching ``pattern`` (in full)."""
    found = [c for c in COMMANDS if re.fullmatch(pattern, c.text)]
    assert found, f"the README shows no command matching {pattern!r}"
    return ok(ws.run(found[0]))


def test_the_cli_imports() -> None:
    assert CLI is not None, "shadowrl.cli.main does not import: nothing below can run it"
    assert SUBCOMMANDS


# --------------------------------------------------------------------------- commands


def assert_test_exists(ref: str) -> None:
    """``tests/x.py::test_name``: the file exists and defines that test function."""
    path, name = ref.split("::")
    file = ROOT / path
    assert file.is_file(), f"{ref}: no such test file"
    tree = ast.parse(file.read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in names, f"{ref}: no such test function"


@pytest.mark.parametrize("command", COMMANDS, ids=ids(COMMANDS))
def test_readme_command(command: md.Command, ws: Workspace) -> None:
    decision = decide(command)
    assert decision is not None, (
        f"README line {command.line}: `{command.text}` is neither run nor mapped to a test: "
        "add a decision to tests/readme/decisions.py")
    for ref in decision.covered_by:
        assert_test_exists(ref)
    if decision.kind == "run":
        run = ok(ws.run(command))
        if "--json" in command.words:
            run.json()
        if run.out is not None:
            assert run.out.exists(), f"`{run.command}` did not write {run.out}"
    elif decision.kind == "make":
        words = command.words[1:]
        run = ok(ws.shell(shlex.join(["make", "-n", *words])))
        for word in words:
            value = word.split("=", 1)[1] if "=" in word else None
            assert value is None or value in run.stdout, (
                f"`{command.text}`: {word} does not reach the recipe:\n{run.stdout}")
    elif decision.kind == "install":
        check_install(command)
    elif decision.kind == "counterexample":
        assert command.where == "inline", "a counterexample in a shell block reads as advice"
    elif decision.kind == "exported":
        script = invoke("export", str(ROOT / "envs" / "checkout.yaml"), "--format", "shell")
        assert script.exit_code == 0, script.stderr[-2000:]
        assert command.text in script.stdout, f"`{command.text}` is not what export writes"
    else:
        assert decision.kind == "covered" and decision.covered_by, decision


def test_decisions_say_why() -> None:
    for d in DECISIONS:
        assert d.why and d.kind in ("run", "make", "covered", "install", "counterexample",
                                    "exported"), d
        assert d.kind != "covered" or d.covered_by, f"{d.pattern}: covered by what?"


def _help_of(segment: list[str]) -> tuple[str, list[str]]:
    """(the help text of the program a simple command runs, the arguments given to it)."""
    words = list(segment)
    if words[:3] == ["python", "-m", "shadowrl"]:
        words = ["shadowrl", *words[3:]]
    if words[0] == "shadowrl":
        if len(words) > 1 and words[1] in SUBCOMMANDS:
            return cli_help(words[1]), words[2:]
        return str(invoke("--help").stdout), words[1:]
    prog: list[str]
    if words[0] in ("pytest", "ruff"):  # what `make test` runs them as
        words = ["python", "-m", *words]
    if words[0] in ("python", "python3") and words[1] == "-m":
        prog, args = [sys.executable, "-m", words[2]], words[3:]
    elif words[0] in ("python", "python3"):
        prog, args = [sys.executable, str(ROOT / words[1])], words[2:]
    elif words[:2] == ["pip", "install"]:
        prog, args = [sys.executable, "-m", "pip", "install"], words[2:]
    elif words[:2] == ["mlflow", "ui"]:
        prog, args = [sys.executable, "-m", "mlflow", "ui"], words[2:]
    elif words[:2] == ["ray", "start"]:
        prog, args = [sys.executable, "-m", "ray.scripts.scripts", "start"], words[2:]
    elif words[0] == "curl":  # its plain --help lists only the most used options
        return external_help(("curl", "--help", "all")), words[1:]
    else:
        raise AssertionError(f"no way to get the help of `{shlex.join(segment)}`")
    return external_help(tuple(prog)), args


@cache
def external_help(prog: tuple[str, ...]) -> str:
    argv = list(prog) if "--help" in prog else [*prog, "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{prog} --help: {done.stderr[-2000:]}"
    return done.stdout


def _choices(sub: str, flag: str) -> list[str]:
    """The values an option's help lists as ``a | b | c`` (none when it lists none)."""
    for param in CLI.commands[sub].params:
        if flag in param.opts and " | " in (getattr(param, "help", None) or ""):
            pieces = param.help.split("|")
            return [pieces[0].split()[-1], *(p.split()[0].rstrip(":,.") for p in pieces[1:])]
    return []


def _flags(args: list[str]) -> list[tuple[str, str | None]]:
    """(flag, the word after it) for every ``-x``/``--xx`` argument."""
    out = []
    for i, word in enumerate(args):
        if re.match(r"^--?[A-Za-z]", word):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out.append((word.split("=", 1)[0], nxt))
    return out


def _check_make(words: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for word in words[1:]:
        if "=" in word:
            var = word.split("=", 1)[0]
            assert re.search(rf"^{var}\s*[?:]?=", makefile, re.MULTILINE), (
                f"`make ... {word}`: the Makefile has no variable {var}")
        else:
            assert re.search(rf"^{re.escape(word)}:", makefile, re.MULTILINE), (
                f"`make {word}`: the Makefile has no target {word}")


FLAGGED = [*COMMANDS, *FRAGMENTS]


@pytest.mark.parametrize("command", FLAGGED, ids=ids(FLAGGED))
def test_readme_flags_exist(command: md.Command) -> None:
    """Every flag is in the ``--help`` of the command it is given to (a bare ``--flag``: in
    some shadowrl command's), and a value the help lists as ``a | b`` is one of them."""
    if command.words[0].startswith("--"):
        flag, value = command.words[0], (command.words[1:] or [None])[0]
        having = [s for s in SUBCOMMANDS if _in_help(flag, cli_help(s))]
        assert having, f"README line {command.line}: no shadowrl command takes {flag}"
        choices = [c for s in having for c in _choices(s, flag)]
        if choices and value is not None and value == value.lower():
            assert value in choices, f"{flag} {value}: the help lists {choices}"
        return
    for segment in command.segments():
        if segment[0] == "make":
            _check_make(segment)
            continue
        if not _flags(segment[1:]) or segment[:3] == ["python", "-m", "shadowrl.demo"]:
            continue
        text, args = _help_of(segment)
        for flag, value in _flags(args):
            assert _in_help(flag, text), (
                f"README line {command.line}: `{shlex.join(segment)}`: {flag} is not in "
                "its --help")
            sub = segment[1] if segment[0] == "shadowrl" else ""
            choices = _choices(sub, flag) if sub in SUBCOMMANDS else []
            if choices and value is not None and value == value.lower():
                assert value in choices, f"{flag} {value}: the help lists {choices}"


def _in_help(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_bare_command_names_exist() -> None:
    missing = [(name, line) for name, line in md.references(README) if name not in SUBCOMMANDS]
    assert not missing, f"README names shadowrl commands that do not exist: {missing}"


# --------------------------------------------------------------------------- --json, bad files

# Cheap in-process invocations of each command ({scenario} is replaced); a command without
# one is checked through a README `--json` command or the tests named in JSON_COVERED.
PROBES: dict[str, list[str]] = {
    "validate": ["validate", "{scenario}"],
    "simulate": ["simulate", "{scenario}", "--seed", "1"],
    "rehearse": ["rehearse", "{scenario}", "--runs", "3"],
    "evaluate": ["evaluate", "{scenario}", "--policy", "configured", "--episodes", "2"],
    "export": ["export", "{scenario}", "--format", "yaml"],
    "optimize": ["optimize", "{scenario}", "--method", "search", "--episodes", "2",
                 "--trials", "3", "--oracle-nodes", "50", "--out", "{tmp}"],
}
JSON_COVERED = {"train": "tests/app/test_sweep.py::test_train_json_stdout_is_one_object",
                "docker": "tests/shadow/docker/test_docker_cli.py::"
                          "test_status_build_and_sweep_print_one_json_object",
                "calibrate": "tests/shadow/docker/test_calibrate.py::"
                             "test_calibrate_resumes_after_an_interrupt_and_writes_a_loadable_"
                             "calibration",
                "sync": "tests/live/sync/test_cli.py::test_create_then_in_sync_then_drift",
                "mirror": "tests/live/test_mirror.py::"
                          "test_the_mirrored_share_over_10000_requests_is_within_1_point_of_p",
                "serve": "tests/service/test_cli.py::test_json_prints_one_object_when_it_stops"}
BAD_FILE_COVERED = {
    "train": "tests/app/test_experiment.py::test_bad_experiment_names_file_line_and_field",
    # takes no file: its bad input is a bad subcommand or flag
    "docker": "tests/shadow/docker/test_docker_cli.py::test_a_bad_subcommand_or_flag_exits_2",
    "calibrate": "tests/app/test_calibrate.py::test_a_bad_scenario_names_its_line",
    "sync": "tests/live/sync/test_cli.py::test_a_bad_scenario_or_source_file_names_its_line",
    # takes no file: its bad input is a bad flag
    "mirror": "tests/live/test_mirror.py::test_bad_flags_exit_2_naming_the_flag",
    "serve": "tests/service/test_cli.py::test_a_bad_config_names_file_line_and_field"}


def test_the_json_claim_is_made() -> None:
    paragraph = md.paragraph_with(README, "Every command takes `--json`")
    assert "exactly one JSON object on stdout" in paragraph


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_command_takes_json(sub: str, ws: Workspace, tmp_path: Path) -> None:
    """"Every command takes `--json` and then prints exactly one JSON object on stdout"."""
    group = getattr(CLI.commands[sub], "commands", None) if CLI is not None else None
    for child in sorted(group or [""]):  # a group's commands each take it
        where = f"{sub} {child}".strip()
        assert _in_help("--json", cli_help(*where.split())), (
            f"`shadowrl {where} --help` has no --json")
    with_json = [c for c in COMMANDS if c.words[:2] == ["shadowrl", sub] and "--json" in c.words]
    if with_json:
        ok(ws.run(with_json[0])).json()
    elif sub in PROBES:
        args = [a.format(scenario=ROOT / "envs" / "checkout.yaml", tmp=tmp_path)
                for a in PROBES[sub]]
        result = invoke(*args, "--json")
        assert result.exit_code == 0, (args, result.stderr[-2000:])
        assert isinstance(json.loads(result.stdout), dict), result.stdout[:500]
    else:
        assert sub in JSON_COVERED, f"add a JSON probe of `shadowrl {sub}` to PROBES"
        assert_test_exists(JSON_COVERED[sub])


@pytest.fixture(scope="module")
def bad_scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """The README's scenario example with an unknown key added last: (file, line, field)."""
    assert SCENARIO_BLOCKS, "the README shows no scenario example"
    lines = [*SCENARIO_BLOCKS[0].body.rstrip("\n").splitlines(), "rollout_notes: 1"]
    path = tmp_path_factory.mktemp("bad") / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines), "rollout_notes"


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_a_bad_file_exits_2_with_file_line_field_message(
        sub: str, bad_scenario: tuple[Path, int, str], tmp_path: Path) -> None:
    assert "A bad file exits 2 with `file:line: field.path: message`" in md.norm(README)
    if sub not in PROBES:
        assert sub in BAD_FILE_COVERED, f"add a probe of `shadowrl {sub}` to PROBES"
        assert_test_exists(BAD_FILE_COVERED[sub])
        return
    path, line, field = bad_scenario
    result = invoke(*(a.format(scenario=path, tmp=tmp_path / "out") for a in PROBES[sub]))
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:])
    assert re.search(rf"^{re.escape(str(path))}:{line}: {re.escape(field)}: \S",
                     result.stderr + result.stdout, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- examples


def _alert_kinds() -> tuple[str, ...]:
    from shadowrl.rehearsal.alerts import KINDS

    return tuple(KINDS)


@pytest.mark.parametrize("block", SCENARIO_BLOCKS, ids=[f"L{b.line}" for b in SCENARIO_BLOCKS])
def test_scenario_example(block: md.Block, ws: Workspace) -> None:
    """The example validates, and rehearsing it (``--runs 3``) gives the outcomes, the alert
    kinds and the blamed steps the paragraph after it names; it must name an outcome."""
    folder = ws.root / "readme-examples"
    folder.mkdir(exist_ok=True)
    path = folder / f"scenario-L{block.line}.yaml"
    path.write_text(block.body)
    ok(ws.shell(f"shadowrl validate {path}"))
    summary = ok(ws.shell(f"shadowrl rehearse {path} --runs 3 --json")).json()
    outcomes = {k for k, v in summary["outcomes"].items() if v}
    alerts: list[dict[str, Any]] = summary["alerts"]
    kinds = {a["kind"] for a in alerts}
    steps = {a["step"] for a in alerts if a.get("step")}
    said = set(md.backticked(md.paragraph_after(README, block)))
    named_outcomes = said & set(summary["outcomes"])
    assert named_outcomes, "say what rehearsing the example gives (its outcomes)"
    assert named_outcomes == outcomes, f"README says {named_outcomes}; 3 runs gave {outcomes}"
    assert said & set(_alert_kinds()) == kinds, f"README names {said & set(_alert_kinds())}; " \
        f"the runs raised {kinds}"
    assert steps <= said, f"alerts blame {steps - said}, which the README does not name"


@pytest.mark.parametrize("block", EXPERIMENT_BLOCKS,
                         ids=[f"L{b.line}" for b in EXPERIMENT_BLOCKS])
def test_experiment_example_loads(block: md.Block, ws: Workspace) -> None:
    """Paths are relative to the file: written into experiments/, it loads and its scenario
    and agent exist."""
    from shadowrl.app.experiment import load_experiment

    path = ws.root / "experiments" / f"readme-L{block.line}.yaml"
    path.write_text(block.body)
    exp = load_experiment(path)
    assert exp.path_of(exp.scenario).is_file() and exp.path_of(exp.agent).is_file()


EPILOGUE = """
import json as _json
_names = {_k: type(_v).__name__ for _k, _v in list(globals().items())
          if not _k.startswith("_") and type(_v).__name__ != "module"}
_info = globals().get("info")
print(_json.dumps({"types": _names, "info": _info}, default=str))
"""


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"L{b.line}" for b in PYTHON_BLOCKS])
def test_python_block(block: md.Block, ws: Workspace) -> None:
    """Runs as written (cwd: the workspace); a ``# a TypeName`` comment names the type of a
    value the block made; ``# same incident as `shadowrl simulate --seed N``` holds."""
    path = ws.root / f"readme-L{block.line}.py"
    path.write_text(block.body + EPILOGUE)
    run = ok(ws.shell(f"python {path}"))
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    for name in re.findall(r"#\s*an? ([A-Z]\w+)", block.body):
        assert name in facts["types"].values(), f"the block makes no {name}: {facts['types']}"
    same = re.search(r"same incident as `shadowrl simulate (--seed \d+)`", block.body)
    scenario = re.search(r"scenario=\"([^\"]+)\"", block.body)
    if same and scenario:
        sim = ok(ws.shell(f"shadowrl simulate {scenario.group(1)} {same.group(1)} --json")).json()
        assert facts["info"]["incident"] == sim["incident"]
        assert facts["info"]["breach_at_s"] == pytest.approx(sim["breach_at_s"])


# --------------------------------------------------------------------------- outputs


def _files_named(paragraph: str) -> set[str]:
    return {s for s in md.backticked(paragraph)
            if re.fullmatch(r"[\w-]+\.(html|parquet|json|md|yaml|zip|csv)", s)}


OUTPUT_LISTS = [  # (the phrase that opens the list, paragraphs it spans, the command)
    ("`--out DIR` holds", 2, "rehearse"),
    ("Outputs in `--out`:", 1, "optimize"),
]


@pytest.mark.parametrize(("phrase", "span", "sub"), OUTPUT_LISTS,
                         ids=[s for _, _, s in OUTPUT_LISTS])
def test_output_files_are_written(phrase: str, span: int, sub: str, ws: Workspace) -> None:
    texts = [p for p, _ in md.paragraphs(README)]
    start = next(i for i, p in enumerate(texts) if md.norm(phrase) in p)
    names = set().union(*(_files_named(p) for p in texts[start:start + span]))
    assert names, f"no file names after {phrase!r}"
    run = readme_run(ws, rf"shadowrl {sub} .*--out \S+.*")
    assert names <= set(run.produced), f"not written by `{run.command}`: " \
        f"{names - set(run.produced)}"


def test_summary_json_is_the_json_output(ws: Workspace) -> None:
    """"`summary.json` (the `--json` output without its `outputs`: the paths of these
    files)"."""
    said = re.search(r"`summary\.json` \(the `--json` output(?: without its `(\w+)`)?",
                     md.norm(README))
    assert said, "the README no longer says what summary.json holds"
    run = readme_run(ws, r"shadowrl rehearse .*--out \S+.* --json")
    printed = run.json()
    left_out = said.group(1)
    if left_out:
        paths = printed.pop(left_out)
        assert isinstance(paths, dict) and all(Path(p).is_file() for p in paths.values())
    assert run.summary == printed


def test_profile_columns(ws: Workspace) -> None:
    import pyarrow.parquet as pq

    bullet = md.paragraph_with(README, "`profiles.parquet`: one row per second")
    bullet = bullet[bullet.index("`profiles.parquet`: one row"):].split(" - `")[0]
    named = [s for s in md.backticked(bullet) if re.fullmatch(r"[a-z_]+", s)]
    run = readme_run(ws, r"shadowrl rehearse .*--out \S+.*")
    assert run.out is not None
    table = pq.read_table(run.out / "profiles.parquet")
    components = set(table.column("component").to_pylist())
    for name in named:
        assert name in table.column_names or name in components, name
    assert "replicas" in table.column_names  # "(`replicas`, the running replicas, ...)"


def test_budget_fields_in_json_outputs(ws: Workspace) -> None:
    """The error-budget paragraph's fields: per run in ``simulate --json``, as
    mean/p50/p95/max in ``rehearse``/``evaluate``/``optimize --json`` (but the excluded)."""
    paragraph = md.paragraph_with(README, "Runs also report")
    fields = [s for s in md.backticked(paragraph) if re.fullmatch(r"[a-z]+(_[a-z]+)+", s)]
    assert "budget_burn" in fields and "bad_requests" in fields
    but = re.search(r"all but ((?:`\w+`(?:, | and )?)+)", paragraph)
    excluded = set(re.findall(r"`(\w+)`", but.group(1))) if but else set()
    sim = ok(ws.shell("shadowrl simulate envs/checkout.yaml --seed 1 --json")).json()
    for name in fields:
        assert name in sim, f"simulate --json has no {name}"
    assert all("bad_requests" in step for step in sim["steps"])
    outputs = {"rehearse": readme_run(ws, r"shadowrl rehearse .*--json").json(),
               "evaluate": readme_run(ws, r"shadowrl evaluate .*--json").json()}
    optimized = readme_run(ws, r"shadowrl optimize .*--json").json()
    outputs.update({f"optimize:{k}": v for k, v in optimized["methods"].items()})
    for where, data in outputs.items():
        for name in set(fields) - excluded:
            assert name in data, f"{where} --json has no {name}"
            assert set(data[name]) >= {"mean", "p50", "p95", "max"}, (where, name)
        for name in excluded:
            assert name not in data, f"{where} has {name}: drop it from 'all but'"


def test_outcomes_and_alert_kinds(ws: Workspace) -> None:
    bullet = md.paragraph_with(README, "- `recovered`;")
    outcomes = {s for s in md.backticked(bullet) if re.fullmatch(r"[a-z]+(_[a-z]+)*", s)}
    summary = readme_run(ws, r"shadowrl rehearse .*--json").json()
    assert set(summary["outcomes"]) == outcomes
    alerts = md.paragraph_with(README, "Alerts: `rollback_failed`")
    named = {s for s in md.backticked(alerts) if re.fullmatch(r"[a-z]+_[a-z_]+", s)}
    assert named == set(_alert_kinds()), named


def test_methods_table_and_method_groups(ws: Workspace) -> None:
    from shadowrl.rl.optimizer import methods_for

    table = re.findall(r"^\| `(\w+)` \|", README, re.MULTILINE)
    assert table, "no method table"
    optimized = readme_run(ws, r"shadowrl optimize .*--method all.*--json").json()
    assert set(table) == set(optimized["methods"])
    paragraph = md.paragraph_with(README, "`--method search` runs the non-RL methods")
    assert "`--method rl` configured + RL" in paragraph
    assert set(methods_for("search")) == set(table) - {"rl"}
    assert set(methods_for("rl")) == {"configured", "rl"}
    assert "cost" in readme_run(ws, r"shadowrl evaluate .*--json").json()  # `evaluate --objective`


def test_policy_kinds(ws: Workspace) -> None:
    """`--policy` accepts the named built-ins, a procedure YAML, a .zip and models:/..."""
    paragraph = md.paragraph_with(README, "`--policy` accepts")
    named = [s for s in md.backticked(paragraph) if re.fullmatch(r"[a-z_]+", s)]
    assert named
    optimized = readme_run(ws, r"shadowrl optimize .*--out \S+.*")
    assert optimized.out is not None
    for policy in [*named, str(optimized.out / "procedure.yaml")]:
        result = invoke("evaluate", str(ROOT / "envs" / "checkout.yaml"), "--policy", policy,
                        "--episodes", "1", "--json")
        assert result.exit_code == 0, (policy, result.stderr[-2000:])
    assert any(".zip" in c.text and "evaluate" in c.text for c in COMMANDS)
    assert any("models:/" in c.text and "evaluate" in c.text for c in COMMANDS)


def test_export_formats_and_placeholders() -> None:
    paragraph = md.paragraph_with(README, "Formats: `yaml`")
    formats = re.findall(r"`(\w+)` \(", paragraph[paragraph.index("Formats:"):])
    assert formats
    placeholders = paragraph[:paragraph.index("have no generic command")]
    placeholders = placeholders[placeholders.rindex(";"):] if ";" in placeholders else placeholders
    actions = [s for s in md.backticked(placeholders) if re.fullmatch(r"[a-z_]+", s)]
    assert actions
    for fmt in formats:
        result = invoke("export", str(ROOT / "envs" / "checkout.yaml"), "--format", fmt)
        assert result.exit_code == 0, (fmt, result.stderr[-2000:])
        head = "\n".join(result.stdout.splitlines()[:8])
        assert "checkout-rollback" in head and "shadowrl export" in head, head
        if fmt == "yaml":
            continue  # the shadowrl procedure itself: steps, no commands to fill in
        for action in actions:  # a flagged placeholder, warned about
            assert f"({action} on " in result.stderr, (fmt, action, result.stderr)


def test_actions_list() -> None:
    import typing

    from shadowrl.core.spec import Step

    paragraph = md.paragraph_with(README, "Actions: `scale`")
    listed = re.sub(r"\([^()]*\)", "", paragraph[:paragraph.index("Durations are")])
    named = {s for s in md.backticked(listed) if re.fullmatch(r"[a-z_]+", s)}
    accepted = set(typing.get_args(Step.model_fields["action"].annotation))
    assert named == accepted, f"README lists {sorted(named)}; the format accepts " \
        f"{sorted(accepted)}"


def test_scenarios_table() -> None:
    listed = set(re.findall(r"^\| `(envs/[\w-]+\.yaml)` \|", README, re.MULTILINE))
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "envs").glob("*.yaml")}
    assert listed == shipped


def test_history_file_is_what_make_history_writes(ws: Workspace) -> None:
    assert "`envs/history/checkout_rps.csv` is generated by `benchmarks/make_history.py`" \
        in md.norm(README)
    readme_run(ws, r"python benchmarks/make_history\.py")
    copy = ws.root / "make_history" / "checkout_rps.csv"
    assert copy.read_bytes() == (ROOT / "envs" / "history" / "checkout_rps.csv").read_bytes()


def test_env_throughput_prints_one_json_object(ws: Workspace) -> None:
    run = readme_run(ws, r"python benchmarks/env_throughput\.py")
    result = run.json()
    target = re.search(r"target ratio ([\d.]+)", README)
    assert target and result["target_ratio"] == float(target.group(1))


# --------------------------------------------------------------------------- make, CI, pip


def test_make_test_is_what_ci_runs(ws: Workspace) -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    recipe = ok(ws.shell("make -n test")).stdout
    assert "ruff check" in recipe and "pytest" in recipe
    says = re.search(r"`make test` runs `ruff` \(with a McCabe complexity limit of (\d+)\) and "
                     r"`pytest (-n \d+)`", md.norm(README))
    assert says, "the Development section's `make test` sentence changed"
    assert says.group(2) in recipe
    pyproject = (ROOT / "pyproject.toml").read_text()
    limit = re.search(r"^\[tool\.ruff\.lint\.mccabe\]\s*max-complexity = (\d+)", pyproject,
                      re.MULTILINE)
    assert limit and int(limit.group(1)) == int(says.group(1))
    assert '"C901"' in pyproject


def test_install_pins_match(ws: Workspace) -> None:
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH \?= (\S+)", makefile, re.MULTILINE)
    index = re.search(r"^TORCH_INDEX \?= (\S+)", makefile, re.MULTILINE)
    assert torch and index
    pins = set(re.findall(r"torch==([\d.]+)", README))
    assert pins == {torch.group(1)}, f"README pins {pins}, the Makefile {torch.group(1)}"
    assert f"--index-url {index.group(1)}" in md.norm(README)
    extras = _extras()
    named = {e for group in re.findall(r"shadowrl\[([\w,]+)\]|\"\.\[([\w,]+)\]\"", README)
             for part in group if part for e in part.split(",")}
    assert named and named <= extras, f"unknown extras: {named - extras}"
    recipe = ok(ws.shell("make -n install")).stdout
    assert f"torch=={torch.group(1)}" in recipe and index.group(1) in recipe


def _extras() -> set[str]:
    """The extras pyproject.toml declares (its [project.optional-dependencies] keys)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = ", section, re.MULTILINE))


def check_install(command: md.Command) -> None:
    extras = _extras()
    for segment in command.segments():
        for word in segment[2:]:
            found = re.search(r"\[([\w,]+)\]", word)
            if found:
                assert set(found.group(1).split(",")) <= extras, word


# --------------------------------------------------------------------------- the demo


def test_the_demo_prints_the_files_the_readme_names(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``shadowrl.demo.main`` with its stages faked (no process starts): the files its
    closing message names and its ``mlflow ui`` command are the README's; the stages are the
    ones the README's `make demo` comment lists, in order; and every ``out/demo/...`` path
    the README names is a stage's ``--out`` or a file a README command writes there."""
    import types

    import shadowrl.demo as demo

    produced = ws_produced(ws)  # runs README commands: before processes are refused below
    stages: list[list[str]] = []

    def fake_run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        stages.append(list(argv))
        out = json.dumps({"model": "checkout-rollback", "version": "1",
                          "champion": {"champion_version": ""}})
        return subprocess.CompletedProcess(argv, 0, stdout=out)

    def fake_call(argv: list[str], **_kw: Any) -> int:
        stages.append(list(argv))
        return 0

    def refuse(*_a: Any, **_kw: Any) -> Any:
        raise AssertionError("the demo started a process")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(demo, "subprocess", types.SimpleNamespace(
        run=fake_run, call=fake_call, PIPE=subprocess.PIPE, Popen=refuse))
    monkeypatch.chdir(tmp_path)
    # the real-shadow stage (Docker) has its own test: tests/test_demo.py
    assert demo.main(["--no-real"]) == 0
    printed = capsys.readouterr().out
    closing = printed[printed.index("Done."):]
    files = re.findall(r"(?<![\w:/.-])\w[\w./-]*/[\w.-]+\.(?:html|md|yaml|json|db)", closing)
    assert files
    for path in files:
        assert f"`{path}`" in README, f"the demo names {path}; the README does not"
    ui = re.search(r"`(mlflow ui [^`]+)`", closing)
    assert ui and any(c.text == ui.group(1) for c in COMMANDS), "the demo's mlflow ui command"
    names = [argv[argv.index("shadowrl") + 1] for argv in stages]
    block = next(b for b in md.blocks(README) if re.search(r"^make demo\b", b.body, re.M))
    comment = md.norm(re.split(r"^(?!make demo)\S", block.body, flags=re.M)[0])
    positions = [comment.find(f" {n}") for n in names]
    assert -1 not in positions and positions == sorted(positions), (names, comment)
    outs = [argv[argv.index("--out") + 1] for argv in stages if "--out" in argv]
    for path, _ in md.inline_spans(README):
        if path.startswith("out/demo/"):  # out/demo/NAME/...: the default scenario's outputs
            under = [o for o in outs if path.rstrip("/") == o or path.startswith(o + "/")]
            assert under, f"{path}: no demo stage writes there ({outs})"
            rest = path[len(under[0]) + 1:]
            assert not rest or any(p.endswith(rest) for p in produced), (
                f"{path}: no README command writes a {rest}")


def ws_produced(ws: Workspace) -> set[str]:
    """Run every README command the decisions run; the files they wrote."""
    for command in COMMANDS:
        decision = decide(command)
        if decision is not None and decision.kind == "run":
            ws.run(command)
    return ws.produced()


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def tracked(ws: Workspace) -> dict[str, Any]:
    """The README's ``shadowrl train`` run as MLflow recorded it (./mlflow.db)."""
    from mlflow.tracking import MlflowClient

    ok(ws.train_run())
    assert (ws.root / "mlflow.db").is_file(), "the default store is ./mlflow.db"
    client = MlflowClient(tracking_uri=ws.tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]

    def artifacts(path: str | None = None) -> list[str]:
        out: list[str] = []
        for item in client.list_artifacts(run.info.run_id, path):
            out += artifacts(item.path) if item.is_dir else [item.path]
        return out

    model = client.search_registered_models()[0]
    version = client.search_model_versions(f"name='{model.name}'")[0]
    return {"client": client, "run": run, "params": set(run.data.params),
            "metrics": set(run.data.metrics), "tags": set(run.data.tags),
            "artifacts": {Path(a).name for a in artifacts()}, "version_tags": set(version.tags)}


def _logged_names() -> dict[str, list[str]]:
    """The names in the README's "Each run logs params (...), metrics ... and artifacts:"
    paragraph, by kind (split at those words outside inline code)."""
    paragraph = md.paragraph_with(README, "Each run logs params")
    plain = md.without_code(paragraph)
    cuts = {kind: plain.index(word) for kind, word in
            (("params", "params"), ("metrics", "metrics"), ("artifacts", "artifacts:"))}
    order = sorted(cuts, key=cuts.get)
    out = {}
    for i, kind in enumerate(order):
        end = cuts[order[i + 1]] if i + 1 < len(order) else len(paragraph)
        text = paragraph[cuts[kind]:end]
        if kind == "artifacts":  # the list ends with its sentence
            text = re.split(r"\.\s+(?=[A-Z])", text)[0]
        out[kind] = [s for s in md.backticked(text) if s != "..."]
    return out


def _pattern(name: str) -> str:
    """A README name as a regex: ``{a,b}`` alternatives, ``<x>`` and ``*`` wildcards."""
    out = ""
    for part in re.split(r"(\{[^}]*\}|<[^>]*>|\*)", name):
        if part.startswith("{"):
            out += "(?:" + "|".join(re.escape(p.strip()) for p in part[1:-1].split(",")) + ")"
        elif part.startswith("<") or part == "*":
            out += ".+"
        else:
            out += re.escape(part)
    return out


def _expand(name: str) -> list[str]:
    """``{a,b}`` alternatives spelled out (wildcards stay patterns)."""
    found = re.search(r"\{([^}]*)\}", name)
    if not found:
        return [name]
    return [x for alt in found.group(1).split(",")
            for x in _expand(name[:found.start()] + alt.strip() + name[found.end():])]


@pytest.mark.parametrize("kind", ["params", "metrics", "artifacts"])
def test_mlflow_names_are_what_a_run_logs(kind: str, tracked: dict[str, Any]) -> None:
    """Every param/metric/artifact name the README gives is logged by a real
    ``shadowrl train`` (each ``{a,b}`` alternative; a ``<x>``/``*`` pattern matches some)."""
    names = _logged_names()[kind]
    assert names, f"the README names no MLflow {kind}"
    logged: set[str] = tracked[kind]
    for name in names:
        if kind == "artifacts" and "." not in name:
            continue  # a word like `policy`, not a file
        for spelled in _expand(name):
            regex = _pattern(spelled)
            assert any(re.fullmatch(regex, x) for x in logged), (
                f"README names {kind[:-1]} `{spelled}`; the run logged {sorted(logged)}")


def test_training_metrics_are_logged_at_timesteps(tracked: dict[str, Any]) -> None:
    """"metrics at step = timesteps during training (...) and its periodic evaluations
    (...)": every name in those two lists has a history at positive steps reaching the
    timesteps trained (the workspace's experiment copy sets them)."""
    paragraph = md.paragraph_with(README, "Each run logs params")
    during = paragraph[md.without_code(paragraph).index("metrics at step = timesteps"):]
    groups = re.findall(r"\(([^()]*)\)", during)[:2]
    names = [s for g in groups for s in md.backticked(g) if re.fullmatch(r"\w+", s)]
    assert names, "the README no longer lists the metrics logged during training"
    client, run = tracked["client"], tracked["run"]
    timesteps = int(SHRUNK["experiment"]["timesteps"])
    for name in names:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert steps and min(steps) > 0 and max(steps) >= timesteps, (name, steps)


def test_promotion_tags_and_champion_field(tracked: dict[str, Any]) -> None:
    from shadowrl.app.models import TrainResult

    paragraph = md.paragraph_with(README, "gets the alias `champion` only with evidence")
    assert "`shadowrl.promotion*`" in paragraph and "`eval_holdout_per_seed`" in paragraph
    for tags in (tracked["tags"], tracked["version_tags"]):
        assert any(t.startswith("shadowrl.promotion") for t in tags), tags
    assert "eval_holdout_per_seed" in tracked["version_tags"]
    assert "eval_holdout.json" in tracked["artifacts"]
    assert "champion" in TrainResult.model_fields  # "(`champion` in `--json`)"


def test_a_model_exports_the_procedure_logged_with_its_run(
        tracked: dict[str, Any], ws: Workspace, tmp_path: Path) -> None:
    """"its runbook when training distilled one with branches ..., else the `procedure.yaml`
    logged with its run": the README's training runs too few timesteps for its policy to beat
    the best static procedure, so its runbook is that procedure alone, and the export of the
    champion is the procedure its run logged (the best static one)."""
    import json

    from shadowrl.core.spec import load_procedure

    assert "else the `procedure.yaml` logged with its run" in md.norm(README)
    client, run = tracked["client"], tracked["run"]
    runbook = json.loads(Path(client.download_artifacts(run.info.run_id, "runbook.json",
                                                        str(tmp_path))).read_text())
    assert runbook["branches"] == 0 and runbook["fallback"], runbook
    logged = load_procedure(client.download_artifacts(run.info.run_id, "procedure.yaml",
                                                      str(tmp_path)))
    exported = readme_run(ws, r"shadowrl export models:/\S+ --format \w+ --out \S+")
    assert exported.out is not None
    text = exported.out.read_text()
    assert f"procedure '{logged.name}'" in text.split("\n", 1)[0], text[:300]
    assert all(step.name in text for step in logged.steps)


# --------------------------------------------------------------------------- paths, timings

PATH_EXCEPTIONS = {  # path -> (why it is not in the repository, the test that covers it)
    "../shared/data/nab/": ("an optional external data set, used when present",
                            "tests/traffic/test_history.py::"
                            "test_nab_every_ec2_window_holds_an_excursion_when_lone_samples_count"),
    "./shadowrl-alerts.json": ("written only when a webhook fails and there is no --out",
                               "tests/rehearsal/test_campaign.py::"
                               "test_send_alerts_without_out_dir_falls_back_to_cwd"),
    "verification.json": ("written only by optimize --verify docker (real rehearsals) and "
                          "train with verify:",
                          "tests/shadow/docker/test_verification.py::"
                          "test_optimize_verify_docker_writes_a_verified_procedure"),
}
_CALIBRATED = ("written by shadowrl calibrate (real rehearsals)",
               "tests/shadow/docker/test_calibrate.py::"
               "test_calibrate_resumes_after_an_interrupt_and_writes_a_loadable_calibration")
PATH_EXCEPTIONS.update({name: _CALIBRATED for name in ("params.yaml", "scenario.yaml",
                                                        "report.json")})
NOT_PATHS = {"shadowrl/v1": "the scenario format's apiVersion",
             "shadowrl.io/": "the prefix of the Kubernetes annotations sync reads",
             "/__mirror/metrics": "the traffic mirror's metrics endpoint (a URL path)"}
OUTPUT_DIRS = {".git", "out", "runs", "mlruns", "mlartifacts", "build", "dist", ".venv",
               ".benchmarks", ".hypothesis", ".pytest_cache", ".ruff_cache"}
EXTENSIONS = r"py|md|yaml|yml|csv|json|html|parquet|zip|db|toml|txt"


def _path_mentions() -> list[tuple[str, int]]:
    """Relative paths the README mentions: inline code that looks like a path, link targets,
    and ``dir/file.ext`` or ``NAME.ext`` words of its prose."""
    found: dict[str, int] = {}
    for span, line in md.inline_spans(README):
        if (" " not in span and not re.search(r"^[a-z]+:/|://|^--|[{}<>()\[\]=@]", span)
                and (re.search(r"[\w.]/", span) or re.fullmatch(rf"[\w.-]+\.({EXTENSIONS})",
                                                              span))):
            found.setdefault(span, line)
    body = md.prose(README)
    plain = md.INLINE.sub(lambda m: " " * len(m.group(0)), body)
    for m in re.finditer(r"\]\(([^)#\s]+)\)", body):
        if "://" not in m.group(1):
            found.setdefault(m.group(1), md.line_of(body, m.start()))
    for m in re.finditer(rf"(?<![\w/.:-])((?:[\w.-]+/)*[\w-]+\.({EXTENSIONS}))(?![\w/-])",
                         plain):
        found.setdefault(m.group(1), md.line_of(body, m.start()))
    return sorted(found.items(), key=lambda kv: kv[1])


PATHS = _path_mentions()


@cache
def _tracked_files() -> tuple[str, ...]:
    """The repository's files (what a run leaves in the tree, as .gitignore lists, left
    out: a path must not pass because a local demo wrote it)."""
    files = []
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT)
        if (p.is_file() and rel.parts[0] not in OUTPUT_DIRS and "__pycache__" not in rel.parts
                and not rel.parts[0].endswith(".egg-info")
                and rel.name not in ("mlflow.db", "shadowrl-alerts.json")):
            files.append(str(rel))
    return tuple(files)


def _in_repo(path: str) -> bool:
    clean = path.removeprefix("./").rstrip("/")
    if any(ch in clean for ch in "*?"):
        return any(True for _ in ROOT.glob(clean))
    if (ROOT / clean).exists() and clean.split("/")[0] not in OUTPUT_DIRS:
        return True
    return any(f.endswith("/" + clean) or f.startswith(clean + "/") or "/" + clean + "/" in
               "/" + f for f in _tracked_files())


@pytest.mark.parametrize(("path", "line"), PATHS, ids=[p for p, _ in PATHS])
def test_readme_paths_exist(path: str, line: int, ws: Workspace) -> None:
    """Each path is in the repository (under the directory the README talks about), is one
    of PATH_EXCEPTIONS, or is written by the README's commands (run in the workspace)."""
    if path in NOT_PATHS:
        return
    if path in PATH_EXCEPTIONS:
        assert_test_exists(PATH_EXCEPTIONS[path][1])
        return
    if _in_repo(path):
        return
    if path.startswith("out/demo/"):
        return  # the demo's outputs: test_the_demo_prints_the_files_the_readme_names
    produced = ws_produced(ws)
    clean = path.removeprefix("./").rstrip("/")
    assert any(p == clean or p.endswith("/" + clean) or p.startswith(clean + "/")
               for p in produced), (
        f"README line {line}: `{path}` is not in the repository and no README command writes "
        "it")


DOCUMENTS = ("DESIGN", "CONTRIBUTING", "CHANGELOG", "CHANGES", "LICENSE", "SECURITY",
             "ARCHITECTURE", "ROADMAP", "NOTICE", "AUTHORS")


def test_named_documents_exist() -> None:
    """A repository document named in prose ("see DESIGN") exists, with or without an
    extension."""
    named = set(re.findall(rf"\b({'|'.join(DOCUMENTS)})(?:\.(?:md|rst|txt))?\b", README))
    missing = [n for n in sorted(named) if not any(ROOT.glob(f"{n}*"))]
    assert not missing, f"the README cites documents the repository does not have: {missing}"


DURATION = (r"\d+(?:\.\d+)?\s*(?:-\s*\d+(?:\.\d+)?\s*)?(?:ms|s|sec|seconds?|min|minutes?|h|"
            r"hours?)\b|(?:a few|few|several|some)\s+(?:seconds|minutes|hours)|"
            r"(?:a|one|about a)\s+(?:millisecond|second|minute|hour)")
TIMING = re.compile(rf"\b(?:takes?|took|taking|lasts?|costs?|runs? (?:for|in)|finish(?:es)? "
                    rf"in)\b[^.;]*?(?:{DURATION})", re.IGNORECASE)


def _sentences() -> list[tuple[str, int]]:
    out = []
    for paragraph, line in md.paragraphs(README):
        out += [(s, line) for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`(*])", paragraph)]
    for block in md.blocks(README):
        if block.lang in md.SHELL_LANGS:
            out += [(c, block.line) for c in re.findall(r"#\s*(.*)$", block.body, re.MULTILINE)]
    return out


def test_timings_are_measurements() -> None:
    """A run time the README states must be a measurement: its sentence names the
    benchmark command (``benchmarks/...``) or says where it was measured; timing targets
    belong in benchmarks/, not in tests."""
    loose = [(line, s) for s, line in _sentences()
             if TIMING.search(re.sub(r"\(default [^)]*\)", "", md.without_code(s)))
             and "benchmarks/" not in s and "measured" not in s]
    assert not loose, "timings that are not measurements:\n" + "\n".join(
        f"  line {line}: {s}" for line, s in loose)
    for table in re.finditer(r"((?:^.*\n){1,12})^\|[^\n]*\btime \(s\)", README, re.MULTILINE):
        before = md.norm(table.group(1))
        assert "python benchmarks/" in before and "cores" in before, (
            "a table of times must follow the command and machine that measured it")


def test_heading_command_counts() -> None:
    """"Set-up: two commands", "in five commands": the block below has that many."""
    numbers = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
    for heading, body in md.sections(README):
        said = re.search(r"\b(\w+) commands?\b", heading)
        if said and said.group(1).lower() in numbers:
            block = md.blocks(body)[0]
            assert len(md.shell_lines(block)) == numbers[said.group(1).lower()], heading


def test_substitutions_are_documented() -> None:
    assert all(s.why for s in SUBSTITUTIONS)
