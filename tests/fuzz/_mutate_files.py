"""Mutators for the fuzz suites of histories, agent configs and experiments.

Each mutator starts from a shipped example (``agents/*.yaml``, ``experiments/*.yaml``, a
history made by ``benchmarks/make_history.py``) and breaks it the way real files break:
extreme numbers, wrong types, deleted, duplicated or renamed keys, foreign encodings and
binary bytes, long lines, deep nesting, and for histories impossible dates, millisecond
steps and a change of unit part-way. Strategies are hypothesis strategies, so examples are
reproducible (the suites run with ``derandomize=True``) and shrink to a small failing file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- values

EXTREME_NUMBERS: tuple[Any, ...] = (
    1e308, -1e308, 1e-308, -1, 0, 1, 2, 0.5, -0.5, math.nan, math.inf, -math.inf,
    10**30, -(10**30), 2**31, 2**63, 2**64 + 1, 10**400,
)
WRONG_TYPES: tuple[Any, ...] = (
    True, False, None, "", "lots", "1e-4", "lin_", "lin_1e999", "lin_-1", "../../etc/passwd",
    "/tmp/abs", "x" * 3000, [], [1, 2, 3], [[[]]], {}, {"a": 1}, {"choices": []},
)
TEXT_JUNK: tuple[bytes, ...] = (
    b"caf\xe9 cr\xe8me",  # Latin-1
    b"\x00\x01\x02\xff\xfe",  # binary with NUL
    b"\xef\xbb\xbf",  # a BOM in the middle
    b"\t",
    b"\r",
    b"\x1b[31m",
)


def render_yaml(data: Any) -> str:
    """YAML text of ``data``; integers beyond YAML's taste are written as plain digits."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)


# --------------------------------------------------------------------------- YAML mutations


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.append((*prefix, i))
            out += _paths(value, (*prefix, i))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True)
class Mutant:
    """A mutated file: its bytes, the suffix it is saved with and what was done to it."""

    content: bytes
    suffix: str
    what: str

    def write(self, folder: Path, stem: str = "mutant") -> Path:
        path = folder / f"{stem}{self.suffix}"
        path.write_bytes(self.content)
        return path


PLAUSIBLE: tuple[Any, ...] = (0, 1, 2, 3, 8, 64, 256, 0.99, 0.5, 1e-5, 0.2, 10)


@st.composite
def mutated_yaml(draw: st.DrawFn, base: dict[str, Any],
                 extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Mutant:
    """``base`` with one or two structural mutations, then maybe a text-level one.

    Paths and operations are picked by a hypothesis-seeded ``Random``: uniformly, where
    hypothesis' own choices favour the first key of the file.
    """
    rnd = draw(st.randoms(use_true_random=True))
    data = json.loads(json.dumps(base))  # a deep copy of plain data
    if extra is not None:
        data = extra(data)
    what: list[str] = []
    for _ in range(rnd.choice((1, 1, 2))):
        paths = _paths(data)
        if not paths:
            break
        path = rnd.choice(paths)
        parent = _parent(data, path)
        key = path[-1]
        op = rnd.choice(["replace"] * 4 + ["plausible", "delete", "rename", "add", "deep",
                                           "swap"])
        if op == "replace":
            parent[key] = rnd.choice(EXTREME_NUMBERS + WRONG_TYPES)
        elif op == "plausible":
            parent[key] = rnd.choice(PLAUSIBLE)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[rnd.choice([f"{key}x", str(key).upper(), f"_{key}", ""])] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[rnd.choice(["unknown", "n_envs", "policy", "seed", "name"])] = rnd.choice(
                EXTREME_NUMBERS + WRONG_TYPES)
        elif op == "deep":
            parent[key] = _deep(rnd.choice([5, 50, 400]))
        elif op == "swap" and isinstance(parent, dict):
            parent[key] = rnd.choice([[parent[key]], {"value": parent[key]}, str(parent[key])])
        what.append(f"{op} {'.'.join(map(str, path))}")
    text = render_yaml(data).encode("utf-8")
    text, how = mutate_text(rnd, text, yaml_like=True)
    return Mutant(text, ".yaml", "; ".join(what + ([how] if how else [])))


def mutate_text(rnd: random.Random, text: bytes, yaml_like: bool = False
                ) -> tuple[bytes, str]:
    """Usually nothing; otherwise junk bytes, a long line, a cut, a duplicated line, CRLF,
    an empty file, and for YAML an alias bomb or a duplicated top-level key."""
    op = rnd.choice(["none"] * 6 + ["junk", "long", "cut", "dup", "crlf", "empty"]
                    + (["alias", "dupkey"] if yaml_like else []))
    lines = text.split(b"\n")
    at = rnd.randrange(len(lines))
    if op == "junk":
        lines[at] = lines[at] + rnd.choice(TEXT_JUNK)
    elif op == "long":
        lines[at] = lines[at] + b" " + b"9" * rnd.choice([5_000, 200_000])
    elif op == "cut":
        return text[: rnd.randrange(len(text) + 1)], "cut"
    elif op == "dup":
        lines.insert(at, lines[at])
    elif op == "crlf":
        return text.replace(b"\n", b"\r\n"), "crlf"
    elif op == "empty":
        return b"", "empty"
    elif op == "alias":  # a "billion laughs" of aliases
        bomb = [b"a: &a [x, x, x, x, x, x, x, x, x, x]"]
        bomb += [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]".encode()
                 for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
        return b"\n".join(bomb) + b"\n" + text, "alias bomb"
    elif op == "dupkey":
        first = next((ln for ln in lines if ln and not ln.startswith((b" ", b"#", b"-"))),
                     b"")
        lines.append(first)
    return b"\n".join(lines), "" if op == "none" else op


# --------------------------------------------------------------------------- histories


def load_generator() -> ModuleType:
    """``benchmarks/make_history.py`` as a module (it is a script, not a package)."""
    name = "shadowrl_make_history"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "make_history.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def base_history(days: int = 2, seed: int = 3) -> tuple[list[float], list[float]]:
    """A realistic history (the generator's checkout load) to mutate: 5-minute steps."""
    t, v = load_generator().generate(seed=seed, days=days)
    return [float(x) for x in t], [float(x) for x in v]


CSV_VALUES = ("1e308", "-1e308", "1e999", "nan", "inf", "-inf", "9" * 400, "", "abc",
              "0x10", "1_000", "  7  ", "-0", "1e-320", "NULL", '"5"')
CSV_TIMES = ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00",
             "9999-12-31T23:59:59-01:00", "-1", "0", "1e11", "1e18", "1e400", "nan",
             "2024-02-30T00:00:00Z", "2024-01-01T25:00:00Z", "yesterday", "",
             "2024-01-01T00:00:00.123456789Z", "1700000000.5")


def _scale_times(times: list[float], start: int, factor: float) -> list[str]:
    """Timestamps as text, from row ``start`` on in another unit (``factor`` x seconds)."""
    return [f"{t:.0f}" if i < start else f"{t * factor:.6g}" if factor < 1 else
            f"{t * factor:.0f}" for i, t in enumerate(times)]


def _mutate_rows(rnd: random.Random, times: list[float], t_text: list[str],
                 v_text: list[str]) -> tuple[list[str], list[str], list[int], str]:
    """One row-level mutation; returns the rows and the indices of the rows it changed."""
    n = len(times)
    touched: list[int] = []
    op = rnd.choice(["value", "value", "time", "time", "ms_steps", "ms_tail", "unit", "unit",
                     "dup_rows", "reverse", "few", "none"])
    if op == "value":
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(n)
            v_text[i] = rnd.choice(CSV_VALUES)
            touched.append(i)
    elif op == "time":
        i = rnd.randrange(n)
        t_text[i] = rnd.choice(CSV_TIMES)
        touched.append(i)
    elif op == "ms_steps":  # every sample 1 ms apart
        t_text = [f"{times[0] + i * 0.001:.3f}" for i in range(n)]
    elif op == "ms_tail":  # from some row on, 1 ms apart
        k = rnd.randrange(1, n)
        t_text[k:] = [f"{times[k] + (i - k) * 0.001:.3f}" for i in range(k, n)]
    elif op == "unit":  # from some row on, another unit: ms, us, ns, or s/1000
        k = rnd.randrange(1, n)
        t_text = _scale_times(times, k, rnd.choice([1e3, 1e6, 1e9, 1e-3]))
        touched.append(k)
    elif op == "dup_rows":
        k = rnd.randrange(n)
        t_text.insert(k, t_text[k])
        v_text.insert(k, v_text[k])
    elif op == "reverse":
        t_text.reverse()
    elif op == "few":
        keep = rnd.randint(0, 12)
        t_text, v_text = t_text[:keep], v_text[:keep]
    return t_text, v_text, touched, op


@st.composite
def mutated_csv(draw: st.DrawFn) -> tuple[Mutant, list[int]]:
    """A CSV history and the file lines (1-based) its row mutations touched (none when a
    text-level mutation may have moved them)."""
    rnd = draw(st.randoms(use_true_random=True))
    times, values = base_history()
    t_text, v_text, touched, op = _mutate_rows(rnd, times, [f"{t:.0f}" for t in times],
                                               [repr(v) for v in values])
    header = rnd.choice(["timestamp,value"] * 3 + ["Timestamp,Value", "time,value",
                                                    "timestamp,rps", "timestamp,value,extra",
                                                    "value,timestamp", ""])
    if header == "value,timestamp":
        rows = [f"{v},{t}" for t, v in zip(t_text, v_text, strict=True)]
    elif header == "timestamp,value,extra":
        rows = [f"{t},{v},x" for t, v in zip(t_text, v_text, strict=True)]
    else:
        rows = [f"{t},{v}" for t, v in zip(t_text, v_text, strict=True)]
    lines = ([header] if header else []) + rows
    offset = 2 if header else 1
    text, how = mutate_text(rnd, ("\n".join(lines) + "\n").encode("utf-8"))
    return (Mutant(text, ".csv", f"{op}; header {header!r}; {how}"),
            [i + offset for i in touched] if not how else [])


JSON_VALUES: tuple[Any, ...] = ("1e308", 1e308, "-1e308", "NaN", "+Inf", True, None, [], {},
                                "x", 10**30, "9" * 400)
JSON_TIMES: tuple[Any, ...] = (-62135596800, 253402300799, "0001-01-01", 1e18, "1e400", -1,
                               None, True, [1], "1700000000.5", 10**30)


def _break_shape(rnd: random.Random, doc: dict[str, Any]) -> Any:
    """``doc`` with one level of its structure (root, data, result, values, a pair) junk."""
    where = rnd.choice(["result", "values", "pair", "data", "root"])
    junk = rnd.choice([None, 1, "x", [], {}, [[1]], [[1, 2, 3]]])
    series = doc["data"]["result"][0]
    if where == "result":
        doc["data"]["result"] = junk
    elif where == "values":
        series["values"] = junk
    elif where == "pair":
        series["values"][rnd.randrange(len(series["values"]))] = junk
    elif where == "data":
        doc["data"] = junk
    else:
        return junk
    return doc


def _mutate_pairs(rnd: random.Random, op: str, pairs: list[list[Any]],
                  times: list[float]) -> str:
    """A value or timestamp mutation of the samples; returns the JSON path it touched."""
    n = len(pairs)
    if op in ("value", "time"):
        j = rnd.randrange(n)
        pairs[j][1 if op == "value" else 0] = rnd.choice(JSON_VALUES if op == "value"
                                                         else JSON_TIMES)
        return f"data.result[0].values[{j}]"
    if op == "ms_steps":
        for j, pair in enumerate(pairs):
            pair[0] = times[0] + j * 0.001
    elif op == "unit":
        factor = rnd.choice([1e3, 1e6, 1e-3])
        for pair in pairs[rnd.randrange(1, n):]:
            pair[0] = pair[0] * factor
    return ""


@st.composite
def mutated_prometheus(draw: st.DrawFn) -> tuple[Mutant, str]:
    """A Prometheus ``query_range`` response, mutated; returns the JSON path a value
    mutation touched (or '')."""
    rnd = draw(st.randoms(use_true_random=True))
    times, values = base_history()
    pairs: list[list[Any]] = [[t, repr(v)] for t, v in zip(times, values, strict=True)]
    series = [{"metric": {"__name__": "http_rps", "pod": "a"}, "values": pairs}]
    doc: Any = {"status": "success", "data": {"resultType": "matrix", "result": series}}
    op = rnd.choice(["value", "value", "time", "ms_steps", "unit", "series", "deep", "bigint",
                     "shape", "status", "none"])
    touched = _mutate_pairs(rnd, op, pairs, times)
    if op == "series":  # many small pods
        n = len(pairs)
        doc["data"]["result"] = [{"metric": {"pod": str(i)}, "values": pairs[i % n: i % n + 2]}
                                 for i in range(rnd.choice([3, 201, 1000]))]
    elif op == "shape":
        doc = _break_shape(rnd, doc)
    elif op == "status":
        doc["status"] = rnd.choice(["error", None, 1, ["x"]])
    elif op == "deep":
        series[0]["values"] = "@deep@"
    text = json.dumps(doc, allow_nan=True)
    if op == "deep":  # valid JSON nested far deeper than any parser's recursion
        depth = rnd.choice([50, 5_000, 200_000])
        text = text.replace('"@deep@"', "[" * depth + "]" * depth, 1)
    elif op == "bigint":
        text = text.replace(f"[{times[0]!r},", "[" + "9" * rnd.choice([400, 5000]) + ",", 1)
    raw, how = mutate_text(rnd, text.encode("utf-8"))
    return Mutant(raw, ".json", f"{op}; {how}"), "" if how else touched


# --------------------------------------------------------------------------- bounded runs


@dataclass(frozen=True)
class RssRun:
    """A CLI run measured by its peak resident memory (``ru_maxrss`` of that child)."""

    returncode: int | None  # None: killed by the timeout
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stdout + self.stderr


# Runs the command as its own child and writes that child's peak RSS (KiB) to argv[1]. The
# measured process is forked from this small launcher, never from the test process: Linux
# keeps the pre-exec memory of a fork (or vfork) in ru_maxrss, so a child forked straight
# from a large pytest worker would report the worker's size.
_LAUNCHER = """
import os, resource, sys
out, limit, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    os.execv(sys.executable, [sys.executable, *sys.argv[4:]])
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_cli_rss(args: list[str], timeout: float, address_space_mb: int = 4000) -> RssRun:
    """``python -m shadowrl *args`` measured by its own peak resident memory (``wait4``).

    ``timeout`` is CPU seconds (``RLIMIT_CPU``: a busy machine must not fail the test); a
    wall-clock guard at four times that catches a run that hangs without using the CPU.

    For commands that import torch (agent configs): torch maps ~700 MB of address space
    at import, so an RLIMIT_AS of 500 MB fails the import itself; the address space gets
    a generous cap here and the test bounds the resident set instead.
    """
    env = {**os.environ, "PYTHONHASHSEED": "0", "NO_COLOR": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cpu = max(1, int(timeout))
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        command = [sys.executable, "-c", _LAUNCHER, str(rss_file),
                   str(address_space_mb * 2**20), str(cpu), "-m", "shadowrl", *args]
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        code: int | None
        try:
            out, err = proc.communicate(timeout=4 * timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the measured child
            out, err = proc.communicate()
            code = None
        seconds = time.monotonic() - start
        rss_kb = int(rss_file.read_text()) if rss_file.exists() else 0
    return RssRun(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                  seconds, rss_kb / 1024)
