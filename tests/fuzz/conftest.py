"""Shared helpers for the fuzz suites: bounded CLI runs, YAML mutators and the bad-input
contract (docs/scenario-format.md, Errors and exit code).

Every fuzz file checks the same contract: bad input exits 2 with ``FILE:LINE: field: message``
lines (or a message naming the file), never a traceback, within bounded time and memory. The
subprocess plumbing and the mutators live here once:

- :func:`run_cli_bounded` runs ``python -m shadowrl ...`` with an address-space cap
  (``RLIMIT_AS``), a CPU-time cap (``RLIMIT_CPU``) and a wall-clock timeout, and returns a
  :class:`CliRun` (exit code, output, CPU and wall seconds).
- :func:`assert_bad_input_contract` checks a finished run against the contract.
- :func:`leaf_paths`, :func:`set_at`, :func:`delete_at`, :func:`rename_at` edit parsed YAML;
  :data:`EXTREMES` are the values the mutators plant; :func:`mutate_text` makes the
  mutations parsed data cannot express (duplicate keys, non-UTF-8 bytes, very long lines,
  broken indentation, deep nesting, truncation).
- :func:`check_problems` checks in-process :class:`~shadowrl.core.spec.Problem` lists.

Time is bounded in CPU seconds (``RLIMIT_CPU`` for a subprocess, ``time.process_time`` in
process): on a shared, busy machine wall time says little, CPU time does not depend on
the load. The wall-clock timeout is a hang guard, ``WALL_SLACK`` times the CPU budget.
"""

from __future__ import annotations

import copy
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[2]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
WALL_SLACK = float(os.environ.get("SHADOWRL_FUZZ_WALL_SLACK", "6"))
# every fuzz test: a fixed seed and no example database, so CI runs the same inputs each time
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
TRACEBACK = "Traceback (most recent call last)"


# --------------------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class CliRun:
    """One bounded CLI run: how it ended, what it printed and what it cost."""

    args: tuple[str, ...]
    returncode: int | None  # None: killed by the wall-clock timeout
    stdout: str
    stderr: str
    seconds: float  # wall clock
    cpu_seconds: float  # user + system time of the child

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.output


def _limits(mem_mb: int, cpu_s: float) -> None:
    """In the child, before exec: cap its address space and its CPU time, so a runaway
    allocation fails and a runaway loop is killed (SIGXCPU) whatever the machine's load."""
    limit = mem_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = max(1, math.ceil(cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli_bounded(
    args: list[str] | tuple[str, ...],
    timeout: float = 5.0,
    mem_mb: int = 500,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
) -> CliRun:
    """Run ``python -m shadowrl *args`` with at most ``timeout`` CPU seconds (RLIMIT_CPU)
    and ``mem_mb`` MB of address space (RLIMIT_AS); the wall clock may run ``WALL_SLACK``
    times longer before the child is killed (``returncode`` None).

    The child gets one BLAS/OpenMP thread (thread pools reserve address space) and a wide
    terminal, so each message stays on one line.
    """
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "COLUMNS": "250", "NO_COLOR": "1",
                "TERM": "dumb"}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        full_env[var] = "1"
    if env:
        full_env.update(env)
    cmd = (sys.executable, "-m", "shadowrl", *map(str, args))
    cpu_before = _children_cpu()
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=str(cwd or ROOT), env=full_env, capture_output=True,
            timeout=timeout * WALL_SLACK, preexec_fn=lambda: _limits(mem_mb, timeout),
            check=False)
    except subprocess.TimeoutExpired as exc:
        return CliRun(cmd, None, _text(exc.stdout), _text(exc.stderr),
                      time.monotonic() - start, _children_cpu() - cpu_before)
    return CliRun(cmd, proc.returncode, _text(proc.stdout), _text(proc.stderr),
                  time.monotonic() - start, _children_cpu() - cpu_before)


def assert_bad_input_contract(run: CliRun, *files: Path | str, cpu_s: float = 5.0) -> None:
    """Success (exit 0), or bad input: exit 2 with a message naming one of ``files`` (with
    a line for a spec problem). Never a traceback, a crash by signal, the CPU limit or the
    timeout."""
    shown = f"{' '.join(run.args[2:])}\n--- stdout\n{run.stdout[-2000:]}\n--- stderr\n" \
            f"{run.stderr[-2000:]}"
    assert not run.timed_out, f"killed after {run.seconds:.1f}s wall clock: {shown}"
    assert not run.traceback, f"traceback: {shown}"
    assert run.returncode in (0, 2), f"exit {run.returncode}: {shown}"
    assert run.cpu_seconds < cpu_s, f"{run.cpu_seconds:.1f} CPU seconds: {shown}"
    if run.returncode == 2:
        names = "|".join(re.escape(str(f)) for f in files)
        assert re.search(rf"^(error: )?({names})(:\d+)?: \S", run.stderr, re.MULTILINE), (
            f"exit 2 without a message naming {' or '.join(map(str, files))}: {shown}")


# --------------------------------------------------------------------------- in process


def check_problems(problems: list[Any], file: Path | str, text: str | bytes) -> None:
    """Spec problems as the contract wants them: each names ``file`` and a line of it,
    and says something."""
    assert problems, "a SpecError without problems"
    n_lines = (text.count(b"\n") if isinstance(text, bytes) else text.count("\n")) + 1
    for p in problems:
        assert p.file == str(file), str(p)
        assert 1 <= p.line <= n_lines + 1, f"line {p.line} of a {n_lines}-line file: {p}"
        assert p.message.strip(), str(p)
        assert str(p).startswith(f"{file}:{p.line}: ")
        assert TRACEBACK not in p.message


class CpuTimer:
    """CPU seconds of this process spent inside the block (independent of the load)."""

    def __enter__(self) -> CpuTimer:
        self.start = time.process_time()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.process_time() - self.start


# --------------------------------------------------------------------------- mutators


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


EXTREMES: list[Any] = [
    1e308, -1e308, 1.7976931348623157e308, 5e-324, -1, 0, 0.0, -0.0, 1, 0.5,
    float("nan"), float("inf"), float("-inf"), 2**31, 2**63, 2**64 + 1, 10**30, -(10**30),
    "", "x" * 5000, "1e308", "-1", "0s", "1ms", "6h", "1d", "366d", "1000000000h",
    "99999999999999999999999d", "nan", ".inf", "Ünïcødé ✓ 中文", "a\tb", "\x00",
    [], {}, [1, 2, 3], ["a"] * 300, {"a": 1}, {"choices": []}, {"choices": [1], "default": 2},
    True, False, None, _nested(40),
]

# the same keys planted where an unknown key would be, and keys that look like fields
ODD_KEYS = ["for_", "schema_", "api_version", "apiVersion", "kind", "Name", "name ",
            "x" * 300, "1", "true", "null", "<<", "procedure", "deployment"]


def leaf_paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path in parsed YAML, containers and leaves, parents first."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaf_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from leaf_paths(value, (*prefix, i))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    node = data
    for part in path[:-1]:
        node = node[part]
    return node


def set_at(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``data`` with the node at ``path`` replaced (the root too); edits a copy."""
    if not path:
        return copy.deepcopy(value)
    out = copy.deepcopy(data)
    _parent(out, path)[path[-1]] = copy.deepcopy(value)
    return out


def delete_at(data: Any, path: tuple[Any, ...]) -> Any:
    """``data`` without the node at ``path`` (a key or a list item); edits a copy."""
    if not path:
        return None
    out = copy.deepcopy(data)
    del _parent(out, path)[path[-1]]
    return out


def rename_at(data: Any, path: tuple[Any, ...], new_key: str) -> Any:
    """``data`` with the mapping key at ``path`` renamed (order kept); edits a copy. A path
    that does not end in a mapping key is left as it is."""
    if not path or not isinstance(path[-1], str):
        return copy.deepcopy(data)
    out = copy.deepcopy(data)
    parent = _parent(out, path)
    items = [(new_key if k == path[-1] else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return out


TEXT_MUTATIONS = ("duplicate-line", "non-utf8", "long-line", "truncate", "indent",
                  "deep-nesting", "nul-byte", "tab", "second-document", "anchor-bomb")


def mutate_text(text: str, how: str, at: int) -> bytes:
    """``text`` broken in a way parsed data cannot express; ``at`` picks where (any int).

    ``duplicate-line`` repeats a line (a duplicate key when it holds one), ``indent`` shifts
    one line, ``truncate`` cuts the file, ``deep-nesting`` plants ``[[[...]]]`` deeper than
    any parser stack, ``anchor-bomb`` a billion-laughs alias tree."""
    lines = text.splitlines(keepends=True)
    i = at % max(1, len(lines))
    if how == "duplicate-line":
        lines.insert(i, lines[i])
    elif how == "non-utf8":
        lines[i] = lines[i].rstrip("\n") + "\udcff\udcfe # caf\udce9\n"
        return "".join(lines).encode("utf-8", "surrogateescape")
    elif how == "long-line":
        lines[i] = lines[i].rstrip("\n") + "  # " + "y" * 200_000 + "\n"
    elif how == "truncate":
        return text[: at % max(1, len(text))].encode()
    elif how == "indent":
        lines[i] = "   " + lines[i]
    elif how == "deep-nesting":
        lines.insert(i, "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    elif how == "nul-byte":
        lines[i] = lines[i][:3] + "\x00" + lines[i][3:]
    elif how == "tab":
        lines[i] = "\t" + lines[i]
    elif how == "second-document":
        lines.insert(i, "---\n")
    elif how == "anchor-bomb":
        bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"]
        bomb += [f"a{k}: &a{k} [*a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, "
                 f"*a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}]\n" for k in range(1, 9)]
        lines[i:i] = bomb
    return "".join(lines).encode("utf-8")
