"""A scratch copy of the repository's data files where README commands run as written.

The working directory is a temporary folder holding copies of the files the README's
commands read (``envs/``, ``agents/``, ``experiments/``, ``benchmarks/``, the Makefile, ...),
so whatever a command writes (``--out``, ``./mlflow.db``, ``rollback.yaml``) lands there and
never in the repository. ``shadowrl`` and ``python`` on its PATH are this interpreter, with
the repository's package first on ``PYTHONPATH``.

The only changes to what the README says are the SUBSTITUTIONS below (each for speed or to
keep the repository untouched) and the SHRUNK budgets of the copied experiment and agent
files; nothing else is substituted.

pytest-xdist workers share one workspace: each command runs once, under a file lock on what
it writes (its ``--out``, else the command), and its result is cached on disk for the others.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.readme.markdown import Command

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("envs", "agents", "experiments", "benchmarks", "docs", ".ci", "Makefile",
          "pyproject.toml")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Substitution:
    applies: Callable[[str], bool]
    change: Callable[[str, Path], str]
    why: str


def _append_missing(flags: dict[str, str]) -> Callable[[str, Path], str]:
    def change(text: str, _ws: Path) -> str:
        words = shlex.split(text)
        extra = [f"{k} {v}" for k, v in flags.items() if k not in words]
        return " ".join([text, *extra])
    return change


def _starts(prefix: str) -> Callable[[str], bool]:
    """Whether a command starts with ``prefix`` (``python -m shadowrl`` = ``shadowrl``)."""
    return lambda text: (text.removeprefix("python -m ").startswith(prefix)
                         or text.startswith(prefix))


SUBSTITUTIONS: tuple[Substitution, ...] = (
    Substitution(lambda t: "/tmp/" in t, lambda t, ws: t.replace("/tmp/", f"{ws}/tmp/"),
                 "/tmp/DIR -> WORKSPACE/tmp/DIR: the machine's /tmp is shared"),
    Substitution(_starts("shadowrl optimize "),
                 _append_missing({"--timesteps": "256", "--episodes": "3", "--trials": "5",
                                  "--oracle-nodes": "200"}),
                 "optimize: small budgets (the defaults train 150k steps, search 150 trials "
                 "and evaluate 100 incidents per method: many minutes)"),
    Substitution(_starts("shadowrl evaluate "), _append_missing({"--episodes": "5"}),
                 "evaluate: 5 incidents instead of the default 100"),
    Substitution(_starts("python benchmarks/env_throughput.py"),
                 _append_missing({"--seconds": "1"}),
                 "env_throughput: 1 s per env instead of 5 (the ratio is not checked: timing "
                 "targets belong to the benchmark, not to a test)"),
    Substitution(_starts("python benchmarks/make_history.py"),
                 lambda t, ws: f"{t} --out {ws}/make_history/checkout_rps.csv",
                 "make_history: write a copy (the default overwrites the repository's file); "
                 "the test compares it with the shipped one byte for byte"),
)

# The copied experiment and agent files get these budgets (shadowrl train as written would
# train 150k steps and evaluate 100 held-out incidents per method).
SHRUNK: dict[str, dict[str, Any]] = {
    "experiment": {"timesteps": 256, "evaluation": {"episodes": 3, "seed": 10000},
                   "search_trials": 3},
    "agent": {"eval": {"freq": 100000, "episodes": 5, "seed": 100000}}}


def substitute(text: str, ws: Path) -> str:
    for s in SUBSTITUTIONS:
        if s.applies(text):
            text = s.change(text, ws)
    return text


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (pytest-xdist workers) for the ``with`` body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Run:
    command: str  # what ran (after SUBSTITUTIONS)
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    out: Path | None = None  # the --out path, when given
    produced: list[str] = field(default_factory=list)  # files under out, relative
    summary: dict[str, Any] | None = None  # out/summary.json right after the run

    def save(self, path: Path) -> None:
        data = dataclasses.asdict(self)
        data["out"] = None if self.out is None else str(self.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Run | None:
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        data["out"] = None if data["out"] is None else Path(data["out"])
        return cls(**data)

    def explain(self) -> str:
        return (f"`{self.command}` exited {self.returncode} after {self.seconds:.1f} s\n"
                f"stderr (tail):\n{self.stderr[-3000:]}")

    def json(self) -> dict[str, Any]:
        """stdout as exactly one JSON object (``json.loads`` refuses anything after it)."""
        value = json.loads(self.stdout)
        assert isinstance(value, dict), f"`{self.command}` printed {type(value).__name__}"
        return value


def out_path(words: list[str]) -> str | None:
    return words[words.index("--out") + 1] if "--out" in words[:-1] else None


class Workspace:
    """Runs README commands once each, in README order of need: a command that reads a
    folder another README command writes (``--out``) runs after it; one that reads a
    registered model (``models:/NAME@champion``) runs after the README's ``shadowrl train``,
    with the alias set on the version that run registered (see champion())."""

    def __init__(self, root: Path, readme_commands: Iterable[Command]) -> None:
        """The workspace in ``root``, created by the first process that gets there."""
        self.root = root
        self.commands = list(readme_commands)
        self.runs: dict[str, Run] = {}
        self.bin = root / ".bin"
        root.mkdir(parents=True, exist_ok=True)
        with locked(root / ".locks" / "setup"):
            if not (root / ".ready").exists():
                self._create()
                (root / ".ready").touch()

    def _create(self) -> None:
        root = self.root
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, root / name)
            elif src.exists():
                shutil.copy2(src, root / name)
        self._shrink()
        self.bin.mkdir()
        for name, target in (("shadowrl", f'"{sys.executable}" -m shadowrl'),
                             ("python", f'"{sys.executable}"'),
                             ("python3", f'"{sys.executable}"')):
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
            shim.chmod(0o755)

    def _shrink(self) -> None:
        for path in (self.root / "experiments").glob("*.yaml"):
            doc = yaml.safe_load(path.read_text())
            doc.update(SHRUNK["experiment"])
            doc.pop("sweep", None)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        for path in (self.root / "agents").glob("*.yaml"):
            doc = yaml.safe_load(path.read_text())
            doc.update(SHRUNK["agent"])
            path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SHADOWRL_ALERT_WEBHOOK")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH"))
                                            if p)
        env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
        return env

    def shell(self, text: str) -> Run:
        """Run one shell line in the workspace (no caching, no substitution)."""
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", text], cwd=self.root, env=self.env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        run = Run(text, done.returncode, done.stdout, done.stderr,
                  time.perf_counter() - start)
        out = out_path(shlex.split(text))
        if out is not None:
            run.out = (self.root / out).resolve()
            if run.out.is_dir():
                run.produced = sorted(str(p.relative_to(run.out)) for p in run.out.rglob("*")
                                      if p.is_file())
                summary = run.out / "summary.json"
                if summary.is_file():
                    run.summary = json.loads(summary.read_text())
        return run

    def run(self, command: Command) -> Run:
        """Run a README command once (cached), after the README commands it needs."""
        text = substitute(command.text, self.root)
        if text in self.runs:
            return self.runs[text]
        for needed in self.needs(command):
            self.run(needed)
        writes = out_path(shlex.split(text)) or text
        with locked(self.root / ".locks" / _key(writes)):
            cache = self.root / ".runs" / f"{_key(text)}.json"
            run = Run.load(cache)
            if run is None:
                if "models:/" in text:
                    self.champion()
                run = self.shell(text)
                run.save(cache)
        self.runs[text] = run
        return run

    def needs(self, command: Command) -> list[Command]:
        """The README commands whose outputs ``command`` reads: the first writer of each
        folder it names, and the README train for a registered model."""
        words = shlex.split(substitute(command.text, self.root))
        own = out_path(words)
        writers: dict[str, Command] = {}
        for other in self.commands:
            other_out = out_path(shlex.split(substitute(other.text, self.root)))
            if other_out is not None and other_out != own:
                writers.setdefault(other_out.rstrip("/"), other)
        out = [c for folder, c in writers.items()
               if any(w == folder or w.startswith(folder + "/") for w in words)]
        if any(w.startswith("models:/") for w in words):
            out += [c for c in self.commands if self.is_train(c)]
        return out

    def is_train(self, command: Command) -> bool:
        """The README's local ``shadowrl train EXPERIMENT`` (no cluster, no server)."""
        return re.fullmatch(r"shadowrl train \S+\.yaml", command.text) is not None

    def train_run(self) -> Run:
        trains = [c for c in self.commands if self.is_train(c)]
        assert trains, "the README shows no local `shadowrl train EXPERIMENT` to run"
        return self.run(trains[0])

    def tracking_uri(self) -> str:
        """The store the README's ``shadowrl train`` used: its default, ./mlflow.db."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def champion(self) -> None:
        """Give the README train's registered version the ``champion`` alias, as a
        promotion would with enough evidence (3 held-out incidents are never enough)."""
        run = self.train_run()
        assert run.returncode == 0, run.explain()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri())
        for model in client.search_registered_models():
            versions = client.search_model_versions(f"name='{model.name}'")
            latest = max(versions, key=lambda v: int(v.version))
            client.set_registered_model_alias(model.name, "champion", latest.version)

    def produced(self) -> set[str]:
        """Every file the commands wrote, relative to the workspace (copies excluded)."""
        copied = {self.root / n for n in COPIED} | {self.bin, self.root / ".runs",
                                                    self.root / ".locks"}
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")
                if p.is_file() and not any(p.is_relative_to(c) for c in copied)}
