"""The layering rules of docs/architecture.md ("The layers"), checked on the source.

Static rules read every module's imports from its syntax tree; the base-install rule runs
the simulator, the validator and a rehearsal in a subprocess where the extras' packages
cannot be imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shadowrl"
LAYERS = ("core", "shadow", "traffic", "rehearsal", "analysis", "calibration", "live", "rl",
          "integrations", "app", "service", "cli", "export")
EXTRAS = ("gymnasium", "torch", "stable_baselines3", "sb3_contrib", "ray", "mlflow", "optuna")
UI = ("rich", "typer")


@dataclass(frozen=True)
class Import:
    module: str  # the imported module, absolute
    names: tuple[str, ...]  # for ``from module import a, b``; () for ``import module``
    top_level: bool  # executed, and needed, when the importing module is imported
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[Import]:
    """Every import of a module; ``top_level`` unless inside a function, under
    ``TYPE_CHECKING`` or optional (a ``try`` whose ``ImportError`` handler does not raise)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
        ".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            elif isinstance(child, ast.Try) and _optional(child):
                visit(child, False)
            elif isinstance(child, ast.Import):
                found.extend(Import(a.name, (), top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.append(Import(base, tuple(a.name for a in child.names), top, child.lineno))
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _optional(node: ast.Try) -> bool:
    return any(handler.type is not None and "ImportError" in ast.unparse(handler.type)
               and not any(isinstance(n, ast.Raise) for n in ast.walk(handler))
               for handler in node.handlers)


MODULES = sorted(PACKAGE.rglob("*.py"))
IMPORTS = {path: imports(path) for path in MODULES}


def layer(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def in_layers(module: str, layers: tuple[str, ...]) -> bool:
    return any(module == f"shadowrl.{name}" or module.startswith(f"shadowrl.{name}.")
               for name in layers)


def top_package(module: str) -> str:
    return module.split(".")[0]


def where(path: Path, imp: Import) -> str:
    return f"{path.relative_to(ROOT)}:{imp.line}: {imp.module}"


def test_the_modules_are_found() -> None:
    assert {layer(p) for p in MODULES} >= set(LAYERS)
    assert all(IMPORTS[p] or p.stat().st_size == 0 for p in MODULES if p.name != "__init__.py")


def test_core_depends_on_nothing_else() -> None:
    bad = [where(p, i) for p in MODULES if layer(p) == "core" for i in IMPORTS[p]
           if in_layers(i.module, tuple(x for x in LAYERS if x != "core"))
           or (i.top_level and top_package(i.module) in (*EXTRAS, *UI, "docker"))]
    assert not bad


def test_shadow_imports_only_core_and_traffic() -> None:
    """``traffic`` (load histories and recordings, numpy only) sits between ``core`` and
    ``shadow``: the simulator reads a scenario's CSV pattern or replayed recording with it,
    and it reads the scenario's fields from ``core``."""
    others = tuple(x for x in LAYERS if x not in ("core", "shadow", "traffic"))
    bad = [where(p, i) for p in MODULES if layer(p) == "shadow" for i in IMPORTS[p]
           if in_layers(i.module, others) or top_package(i.module) in (*EXTRAS, *UI)]
    not_below = tuple(x for x in LAYERS if x not in ("core", "traffic"))
    bad += [where(p, i) for p in MODULES if layer(p) == "traffic" for i in IMPORTS[p]
            if in_layers(i.module, not_below) or top_package(i.module) in (*EXTRAS, *UI)]
    assert not bad


def test_service_sits_below_the_cli() -> None:
    """``service`` (``shadowrl serve``) runs the application layer's use cases; only the CLI
    and the application layer's ``serve`` use case import it."""
    bad = [where(p, i) for p in MODULES if layer(p) == "service" for i in IMPORTS[p]
           if in_layers(i.module, ("cli",))]
    bad += [where(p, i) for p in MODULES if layer(p) not in ("service", "cli", "app")
            for i in IMPORTS[p] if in_layers(i.module, ("service",))]
    assert not bad


def test_export_imports_no_integration() -> None:
    bad = [where(p, i) for p in MODULES if layer(p) == "export" for i in IMPORTS[p]
           if in_layers(i.module, ("integrations", "app", "cli"))]
    assert not bad


def test_base_layers_import_no_extra_at_module_level() -> None:
    """What the base install runs imports RL, Ray and MLflow only lazily (in functions),
    directly or through another shadowrl module."""
    by_name = {module_name(p): p for p in MODULES}
    chains: dict[str, list[str] | None] = {}

    def extra_chain(module: str) -> list[str] | None:
        """How importing ``module`` imports an extra's package, or None."""
        if module not in chains:
            chains[module] = None  # an import cycle adds nothing
            path = by_name[module]
            parents = [".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)]
            for imp in (i for i in IMPORTS[path] if i.top_level):
                if top_package(imp.module) in EXTRAS:
                    chains[module] = [where(path, imp)]
                    break
                targets = [t for t in (imp.module, *(f"{imp.module}.{n}" for n in imp.names))
                           if t in by_name]
                for target in [*parents, *targets]:
                    found = extra_chain(target) if target != module else None
                    if found:
                        chains[module] = [where(path, imp), *found]
                        break
                if chains[module]:
                    break
        return chains[module]

    base = ("core", "shadow", "traffic", "rehearsal", "analysis", "calibration", "live",
            "export", "app", "cli")
    bad = {module_name(p): chain for p in MODULES if layer(p) in base
           if (chain := extra_chain(module_name(p)))}
    bad.pop("shadowrl.integrations.sources", None)
    assert not bad
    assert extra_chain("shadowrl.integrations.sources") is None
    assert extra_chain("shadowrl.rl.env") and extra_chain("shadowrl.integrations.mlflow")


def test_no_module_uses_another_modules_private_names() -> None:
    bad = []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        modules: set[str] = set()  # local names bound to imported shadowrl modules
        for imp in IMPORTS[path]:
            if top_package(imp.module) != "shadowrl":
                continue
            bad += [f"{where(path, imp)}.{n}" for n in imp.names if _private(n)]
            bad += [where(path, imp)] if any(_private(s) for s in imp.module.split(".")) else []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules.update((a.asname or a.name).split(".")[0] for a in node.names
                               if (getattr(node, "module", None) or a.name).startswith(
                                   "shadowrl"))
        bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and _private(node.attr)]
    assert not bad


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --------------------------------------------------------------------------- base install

BLOCKER = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
"""


def run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=set(EXTRAS)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_base_install_simulates_validates_and_rehearses() -> None:
    done = run_without_extras("""
        import pkgutil

        import shadowrl
        import shadowrl.shadow.sim
        from shadowrl.core.spec import SpecError, load_scenario
        from shadowrl.rehearsal.runner import rehearse

        scenario = load_scenario("envs/checkout.yaml")
        rehearsal = rehearse(scenario, 1)
        assert rehearsal.outcome in ("recovered", "rollback_failed", "rollback_ineffective")
        assert rehearsal.steps and rehearsal.downtime_s >= 0
        for name in ("payments", "search"):
            load_scenario(f"envs/{name}.yaml")
        try:
            load_scenario("tests/scenarios/does-not-exist.yaml")
        except SpecError as exc:
            assert "no such file" in str(exc)
        else:
            raise AssertionError("a missing scenario file must be a SpecError")

        base = ("core", "shadow", "traffic", "rehearsal", "analysis", "export", "app", "cli")
        for layer in base:
            package = __import__(f"shadowrl.{layer}", fromlist=["_"])
            for info in pkgutil.walk_packages(package.__path__, f"shadowrl.{layer}."):
                __import__(info.name)
        import shadowrl.integrations.sources

        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print(rehearsal.outcome)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("recovered", "rollback_failed", "rollback_ineffective")


@pytest.mark.parametrize(("module", "extra"), [
    ("shadowrl.rl.env", "rl"),
    ("shadowrl.rl.optimizer", "rl"),
    ("shadowrl.integrations.ray", "ray"),
    ("shadowrl.integrations.mlflow", "mlflow"),
])
def test_a_missing_extra_is_named(module: str, extra: str) -> None:
    done = run_without_extras(f"""
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        else:
            raise AssertionError("imported without the extra")
    """)
    assert done.returncode == 0, done.stderr
    assert f"the {extra} extra is needed: pip install 'shadowrl[{extra}]'" in done.stdout


def test_the_command_line_without_extras_rehearses_and_names_what_is_missing() -> None:
    done = run_without_extras("""
        from typer.testing import CliRunner

        from shadowrl.cli import app

        runner = CliRunner()
        ok = runner.invoke(app, ["rehearse", "envs/checkout.yaml", "--runs", "2", "--json"])
        assert ok.exit_code == 0, ok.output
        missing = runner.invoke(app, ["optimize", "envs/checkout.yaml", "--method", "search"])
        print(missing.exit_code)
        print(missing.stderr)
    """)
    assert done.returncode == 0, done.stderr
    code, _, message = done.stdout.partition("\n")
    assert code == "2", done.stdout
    assert "the rl extra is needed: pip install 'shadowrl[rl]'" in message
    assert "Traceback" not in message
