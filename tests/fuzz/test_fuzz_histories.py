"""Fuzz ``--history`` files: mutated CSV and Prometheus histories either load within the
bounds of ``shadowrl.traffic.history`` or are refused with a ``HistoryError`` naming the file
(and the line, or the JSON path, of the sample at fault); through the CLI they exit 0 or 2,
without a traceback, within 5 s and 500 MB.

Examples: 170 CSV + 100 Prometheus in-process, 7 CLI runs (binary bytes: in-process).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from shadowrl.rehearsal.deviation import load_history
from shadowrl.traffic.history import (
    MAX_ABS_VALUE,
    MAX_GRID_POINTS,
    MAX_SERIES,
    MAX_SPAN_S,
    MIN_STEP_S,
    HistoryError,
    load_series,
)
from tests.fuzz._mutate_files import (
    Mutant,
    base_history,
    load_generator,
    mutated_csv,
    mutated_prometheus,
)
from tests.fuzz.conftest import FUZZ, run_cli_bounded

PER_FILE_S = 3.0  # CPU seconds of the loading thread; a hang takes minutes


def _check(mutant: Mutant, folder: Path) -> tuple[Path, str | None]:
    """Load the mutant in-process: a bounded series (fitted as a rehearsal would) or a
    HistoryError naming the file first. Returns the path and the error message."""
    path = mutant.write(folder)
    start = time.thread_time()  # CPU, not wall: a busy host must not fail it
    try:
        series = load_series(path)
    except HistoryError as exc:
        message = str(exc)
        assert message.startswith(f"{path}:") or message.startswith(f"{path} "), message
        assert "\n" not in message and len(message) < 600, message
        return path, message
    finally:
        assert time.thread_time() - start < PER_FILE_S, mutant.what
    assert len(series) <= MAX_GRID_POINTS + 1
    assert series.step_s >= MIN_STEP_S
    assert series.t[-1] - series.t[0] <= MAX_SPAN_S
    assert np.all(np.isfinite(series.v)) and np.all(np.abs(series.v) <= MAX_SERIES * MAX_ABS_VALUE)
    model = load_history(path)  # what a rehearsal does with it next
    assert np.isfinite(model.span_s) and np.isfinite(model.peak_offset_s)
    assert time.thread_time() - start < PER_FILE_S, mutant.what
    return path, None


@settings(FUZZ, max_examples=170)
@given(mutated_csv())
def test_mutated_csv_histories_load_or_name_the_line(case: tuple[Mutant, list[int]]) -> None:
    mutant, lines = case
    with tempfile.TemporaryDirectory() as tmp:
        path, message = _check(mutant, Path(tmp))
    if message is not None and lines and (
            "timestamp" in message or "value" in message) and "header" not in message:
        # a refused sample is named by its own line
        assert any(f":{n}:" in message or f"line {n}" in message for n in lines), (
            mutant.what, message)


@settings(FUZZ, max_examples=100)
@given(mutated_prometheus())
def test_mutated_prometheus_histories_load_or_name_the_sample(case: tuple[Mutant, str]
                                                              ) -> None:
    mutant, touched = case
    with tempfile.TemporaryDirectory() as tmp:
        _, message = _check(mutant, Path(tmp))
    if message is not None and touched and "values[" in message:
        assert touched in message, (mutant.what, message)


def test_the_unmutated_bases_load(tmp_path: Path) -> None:
    """The fuzz bases are valid: the mutations, not the bases, make files fail."""
    gen = load_generator()
    t, v = base_history()
    path = tmp_path / "base.csv"
    path.write_text(gen.to_csv_text(np.asarray(t), np.asarray(v)))
    assert len(load_series(path)) == len(t)


# --------------------------------------------------------------------------- the CLI


def _csv(rows: list[str]) -> bytes:
    return ("timestamp,value\n" + "\n".join(rows) + "\n").encode()


def _cli_cases() -> dict[str, tuple[bytes, str, int]]:
    """name: (content, suffix, exit code)."""
    t, v = base_history()
    rows = [f"{a:.0f},{b!r}" for a, b in zip(t, v, strict=True)]
    big = rows.copy()
    big[40] = f"{t[40]:.0f},1e308"
    unit = rows[:300] + [f"{a * 1e6:.0f},{b!r}" for a, b in zip(t[300:], v[300:], strict=True)]
    prom = ('{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},'
            '"values":' + "[" * 100_000 + "]" * 100_000 + "}]}}")
    return {
        "valid": (_csv(rows), ".csv", 0),
        "1e308": (_csv(big), ".csv", 2),
        "latin1": (_csv(rows[:50]) + "2024-03-05T00:00:00Z,caf\xe9\n".encode("latin-1"),
                   ".csv", 2),
        "year-1": (_csv(["0001-01-01T00:00:00Z,5", *rows]), ".csv", 2),
        "ms-steps": (_csv([f"{t[0] + i * 0.001:.3f},{b!r}" for i, b in enumerate(v)]),
                     ".csv", 2),
        "unit-change": (_csv(unit), ".csv", 2),
        "deep-json": (prom.encode(), ".json", 2),
    }


CLI_CASES = _cli_cases()


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_rehearse_with_a_mutated_history_is_bounded(name: str, tmp_path: Path) -> None:
    content, suffix, code = CLI_CASES[name]
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(content)
    run = run_cli_bounded(["rehearse", "envs/checkout.yaml", "--runs", "1", "--history",
                           str(path)], timeout=5.0, mem_mb=500)
    assert not run.timed_out, name
    assert not run.traceback, run.stderr[-2000:]
    assert run.returncode == code, (name, run.stderr[-2000:])
    if code == 2:
        assert str(path) in run.stderr, run.stderr
